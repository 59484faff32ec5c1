"""Gymnasium wrappers that put the env's contract into the numbers stable-baselines3 needs.

SB3 stores observations in numpy buffers, so the instruction string cannot pass as a
``Text`` space. It travels as its character codes (byte-level token ids) padded with 0 in
an integer ``Box``: lossless (the env's charset is ASCII), the same in every worker process
(no per-run instruction table to share between ``SubprocVecEnv`` workers), and the policy
turns the codes back into the exact string its cached language encoder was trained on.

- ``TokenActionEnv``: actions are the policy's action tokens, ``MultiDiscrete([bins] * 7)``,
  decoded to continuous actions by the checkpoint's ``ActionTokenizer`` (the only place that
  knows bins); images stay uint8 H x W x 3.
- ``ContinuousActionEnv``: the stock SB3 baseline's view: the same observations, the
  instruction codes scaled to [0, 1] floats (an MLP input), continuous 7-D actions.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from vla.tokenizer import ActionTokenizer

INSTRUCTION_KEY = "instruction"


def encode_instruction(text: str, length: int) -> np.ndarray:
    """An instruction string -> its character codes, 0-padded to ``length`` (int64)."""
    data = text.encode("ascii")
    if len(data) > length:
        raise ValueError(f"instruction has {len(data)} characters, more than the {length} the space holds")
    codes = np.zeros(length, dtype=np.int64)
    codes[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return codes


def decode_instructions(codes: torch.Tensor | np.ndarray) -> list[str]:
    """(B, L) character codes (any numeric dtype: SB3's buffers hold float32) -> strings."""
    if torch.is_tensor(codes):
        codes = codes.detach().cpu().numpy()
    rows = np.rint(np.asarray(codes)).astype(np.uint8)
    return [row.tobytes().rstrip(b"\0").decode("ascii") for row in rows]


def _numeric_observation_space(env: gym.Env) -> tuple[gym.spaces.Dict, int]:
    space = env.observation_space
    if not isinstance(space, gym.spaces.Dict) or INSTRUCTION_KEY not in space.spaces:
        raise ValueError(f"expected the env's Dict observation with an {INSTRUCTION_KEY!r} key, got {space}")
    length = int(space[INSTRUCTION_KEY].max_length)
    spaces = {k: v for k, v in space.spaces.items() if k != INSTRUCTION_KEY}
    spaces[INSTRUCTION_KEY] = gym.spaces.Box(0, 127, (length,), np.int64)
    return gym.spaces.Dict(spaces), length


class TokenActionEnv(gym.Wrapper):
    """Action tokens in, continuous actions to the env; instruction as character codes."""

    def __init__(self, env: gym.Env, tokenizer: ActionTokenizer):
        super().__init__(env)
        self.tokenizer = tokenizer
        self.observation_space, self.instruction_length = _numeric_observation_space(env)
        self.action_space = gym.spaces.MultiDiscrete([tokenizer.bins] * tokenizer.action_dim)
        if tokenizer.action_dim != env.action_space.shape[0]:
            raise ValueError(
                f"the tokenizer has {tokenizer.action_dim} action elements but the env takes "
                f"{env.action_space.shape[0]}"
            )

    def _observation(self, obs: dict[str, Any]) -> dict[str, Any]:
        return {**obs, INSTRUCTION_KEY: encode_instruction(obs[INSTRUCTION_KEY], self.instruction_length)}

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self._observation(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(self.tokenizer.decode(np.asarray(action)))
        return self._observation(obs), reward, terminated, truncated, info


class ContinuousActionEnv(gym.ObservationWrapper):
    """The stock SB3 baseline: continuous actions, instruction codes as floats in [0, 1]."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space, self.instruction_length = _numeric_observation_space(env)
        space.spaces[INSTRUCTION_KEY] = gym.spaces.Box(0.0, 1.0, (self.instruction_length,), np.float32)
        self.observation_space = space

    def observation(self, obs: dict[str, Any]) -> dict[str, Any]:
        return self.convert(obs, self.instruction_length)

    @staticmethod
    def convert(obs: dict[str, Any], length: int) -> dict[str, Any]:
        """An env observation -> this wrapper's (also for evaluation on unwrapped envs)."""
        codes = encode_instruction(obs[INSTRUCTION_KEY], length)
        return {**obs, INSTRUCTION_KEY: (codes / 127.0).astype(np.float32)}
