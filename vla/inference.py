"""The narrow public API: ``vla.load_policy(path).act(obs) -> 7-D action``.

Out-of-scope instructions: a policy trained with ``model.scope_check`` (the default) checks
whether what an instruction names is in view, once per instruction: at the first
observation that carries it after ``reset()`` (call it between episodes). Where it is not
(an object that is not on the table, one this world has no colour or shape for, nonsense)
or the instruction is empty, it stops for as long as that instruction stands: the arm holds
still (zero translation and rotation, the gripper as decoded) instead of moving confidently
toward a random object. Once per instruction, because mid-episode the gripper hides what it
holds: checked at every step, 1 in 6 valid five-task episodes stopped (this CPU, 2026-12-06).
It also stops on an instruction that is like no command it was trained on (nonsense: "sing
me a song"), by the similarity of its sentence embedding to the nearest of the training
instructions kept with the weights. ``act_with_info(obs)`` returns the action and
``{"stopped": bool, "message": str | None, "nothing_named": probability,
"command_similarity": cosine, "read_as": str}`` (what the policy read: the instruction
normalised, its colour words read as the world's colours, vla/colour_words.py, and, once the
typed wording passed the checks, a colour's unknown noun as the thing of that colour in view,
vla/noun_reading.py); ``act`` returns the action alone.

Threads: a batch of one is a few small matrix products, and torch's default of one thread
per core makes each wait for the slowest core; beside another busy process that cost a
median of 640 ms per call against 9 ms on one thread (2-core CPU, 2026-12-06). So
``threads="auto"`` (the default) decodes a batch of one on one thread and a larger batch on
every core this process may use; an integer fixes the count. ``backend="onnx"`` decodes a
batch of one through ONNX Runtime (exported at the first call; the ``onnx`` extra): the same
tokens, one C++ call instead of a few hundred PyTorch operator calls.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.checkpoint import build_policy, read_checkpoint
from vla.data import check_observations, observations_to_batch
from vla.language import normalise_instruction, sentence_embedding
from vla.noun_reading import NounReading
from vla.policy import CAMERA_KEYS, VLAPolicy
from vla.tokenizer import ActionTokenizer

CALIBRATED = "calibrated"  # scope_threshold: the one training set from validation scenes (calibrate_scope)
ARM_DIMS = 6  # the action's translation and rotation elements: zero when stopped
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # precision -> autocast dtype
NOTHING_ODDS = 0.5  # noun reading: a keypoint answering "nothing named" above this finds nothing in view
BACKENDS = ("torch", "onnx")  # onnx: batch-1 greedy decoding through ONNX Runtime (CPU; the onnx extra)


class PolicyRunner:
    """A trained policy behind the env's observation/action contract."""

    def __init__(
        self,
        policy: VLAPolicy,
        tokenizer: ActionTokenizer,
        device: str | torch.device = "cpu",
        temperature: float = 0.0,
        use_cache: bool = True,
        seed: int = 0,
        threads: int | str = "auto",
        scope_threshold: float | str | None = CALIBRATED,
        backend: str = "torch",
        precision: str = "fp32",
    ):
        if threads != "auto" and not (isinstance(threads, int) and threads >= 1):
            raise ValueError(f"threads must be 'auto' or a whole number >= 1, got {threads!r}")
        if backend not in BACKENDS or (backend == "onnx" and torch.device(device).type != "cpu"):
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)} (onnx on the CPU only), got {backend!r}")
        if precision not in AUTOCAST:
            raise ValueError(f"precision must be one of {', '.join(AUTOCAST)}, got {precision!r}")
        self.autocast = AUTOCAST[precision]  # decode under autocast to this dtype (None: fp32)
        if backend == "onnx":
            policy.require_plain_blocks("backend=onnx (the exported token decoder)")
        self.backend = backend
        self._onnx = None  # the batch-1 ONNX Runtime decoder, made at the first call
        self.threads = threads
        self.device = torch.device(device)
        self.policy = policy.to(self.device).eval()  # eval mode: no dropout, no augmentation
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.use_cache = use_cache
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        # None: never stop (also where the checkpoint was trained without model.scope_check)
        checks = policy.keypoint_reader is not None and policy.keypoint_reader.absent is not None
        if scope_threshold == CALIBRATED:
            scope_threshold = float(policy.keypoint_reader.scope_threshold) if checks else None
        elif scope_threshold is not None and not (isinstance(scope_threshold, float) and 0.0 < scope_threshold < 1.0):
            raise ValueError(
                f"scope_threshold must be 'calibrated', a number in (0, 1) or None, got {scope_threshold!r}"
            )
        self.scope_threshold = scope_threshold if checks else None
        # below this similarity to every known command an instruction stops (-1: no known commands)
        self.command_threshold = float(policy.known_commands.threshold) if checks else -1.0
        # the world's nouns per colour: unknown nouns are read as the things in view they can name
        c = policy.config
        self.nouns = NounReading(c.scene_nouns) if c.noun_reading and c.scene_nouns else None
        # (session, instruction) -> ("nothing named" probability, similarity to the nearest known
        # command, what the policy reads) at the instruction's first sighting
        self._verdicts: dict[tuple[str, str], tuple[float, float, str]] = {}

    def reset(self, session: str | None = None) -> None:
        """Between episodes: forget which instructions were checked for scope (of one
        ``session``: a robot served beside others; None: of all). The policy is otherwise
        memoryless (one observation in, one action out)."""
        if session is None:
            self._verdicts.clear()
        else:
            for key in [k for k in self._verdicts if k[0] == session]:
                del self._verdicts[key]

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        return self.act_batch([obs])[0]

    def act_with_info(self, obs: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """The action and whether the policy stopped, with why (module docstring)."""
        actions, infos = self.act_batch_with_info([obs])
        return actions[0], infos[0]

    def act_batch(self, observations: list[dict[str, Any]]) -> np.ndarray:
        return self.act_batch_with_info(observations)[0]

    def act_batch_with_info(
        self, observations: list[dict[str, Any]], sessions: list[str] | None = None
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Actions (B, 7) and infos; ``sessions`` names whose episode each observation belongs
        to, so robots served together keep their own out-of-scope verdicts."""
        c = self.policy.config
        keys = tuple(CAMERA_KEYS[camera] for camera in c.cameras)
        check_observations(observations, image_size=c.image_size, image_keys=keys, proprio_dim=c.proprio_dim)
        sessions = sessions or [""] * len(observations)
        if len(sessions) != len(observations):
            raise ValueError(f"{len(sessions)} sessions for {len(observations)} observations")
        batch = observations_to_batch(observations, self.device)
        threads = inference_threads(len(observations)) if self.threads == "auto" else self.threads
        with torch_threads(threads if self.device.type == "cpu" else None):
            typed = batch["instruction"]
            verdicts, batch["instruction"] = self.check_instructions(batch, sessions)
            if self.backend == "onnx" and len(observations) == 1 and self.temperature <= 0:
                bins = self._onnx_decoder().decode(batch)
            else:
                cast = torch.autocast(self.device.type, dtype=self.autocast) if self.autocast else nullcontext()
                with cast:
                    bins = self.policy.decode(
                        batch, use_cache=self.use_cache, temperature=self.temperature, generator=self.generator
                    )
        return self.finish(bins.cpu().numpy(), typed, verdicts, batch["instruction"])

    def finish(
        self, bins: np.ndarray, texts: list[str], verdicts: np.ndarray, readings: list[str]
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Actions and infos from decoded ``bins`` (B, 7): the arm held still where an instruction
        (``texts``, as typed) is empty, names nothing in view, or is like no command trained on
        (``verdicts``: ``check_instructions`` per row); ``readings``: what the policy read of each."""
        actions = self.tokenizer.decode(bins)
        infos = []
        for i, text in enumerate(texts):
            nothing, similarity = verdicts[i]
            message = self._stop_message(text, nothing, similarity)
            if message is not None:
                actions[i, :ARM_DIMS] = 0.0
            infos.append(
                {
                    "stopped": message is not None,
                    "message": message,
                    "nothing_named": float(nothing),
                    "command_similarity": float(similarity),
                    "read_as": readings[i],
                }
            )
        return actions, infos

    def _stop_message(self, text: str, nothing: float, similarity: float) -> str | None:
        """Why ``text`` (as typed) stops the arm, given its verdicts, or None where it does not."""
        if not normalise_instruction(text):
            return f"the instruction {text!r} is empty: nothing to do"
        if self.scope_threshold is not None and similarity < self.command_threshold:
            return (
                f"{_shown(text)!r} reads as no task this policy was trained for (similarity {similarity:.2f} "
                f"to the nearest known command, below {self.command_threshold:.2f}): holding still"
            )
        if self.scope_threshold is not None and nothing > self.scope_threshold:
            return f"nothing in view matches {_shown(text)!r} (confidence {nothing:.2f}): holding still"
        return None

    def _onnx_decoder(self):
        if self._onnx is None:
            from vla.fast_inference import StaticDecoder

            self._onnx = StaticDecoder(self.policy, 1, self.device, mode="onnx", use_cache=self.use_cache)
        return self._onnx

    @torch.no_grad()
    def check_instructions(self, batch: dict[str, Any], sessions: list[str]) -> tuple[np.ndarray, list[str]]:
        """Verdicts (B, 2): the reader's probability that each instruction's target is nowhere in
        view, and the instruction's similarity to its nearest known command; and what the policy
        reads of each (normalised, colour words read as the world's colours, unknown nouns as the
        things in view they can name: vla/noun_reading.py). Both are settled at the instruction's
        first sighting in its session since ``reset()``."""
        texts = batch["instruction"]
        keys = list(zip(sessions, texts, strict=True))
        new = [i for i, key in enumerate(keys) if key not in self._verdicts]
        if new:
            if len(self._verdicts) > 10_000:  # a long-running caller that never resets
                self._verdicts.clear()
            asked = [texts[i] for i in new]
            if self.scope_threshold is None:
                nothing, similarity = [0.0] * len(new), [1.0] * len(new)
            else:
                text_states, text_mask = self.policy.text(asked, self.device)
                images = batch["image"][new]
                nothing = self.policy.keypoint_reader.nothing_named(images, text_states, text_mask)[:, 0].tolist()
                similarity = self.policy.known_commands.similarity(sentence_embedding(text_states, text_mask)).tolist()
            for i, p, s in zip(new, nothing, similarity, strict=True):
                reading = self.policy.reader(texts[i])
                if self.nouns is not None and self._stop_message(texts[i], p, s) is None:
                    reading = self._read_nouns(reading, batch["image"][i])
                self._verdicts.setdefault(keys[i], (p, s, reading))
        judged = [self._verdicts[key] for key in keys]
        return np.array([(p, s) for p, s, _ in judged]), [reading for _, _, reading in judged]

    def _read_nouns(self, text: str, image: torch.Tensor) -> str:
        """``text`` with its unknown nouns read as the world's: the reading whose named things the
        keypoint reader finds in view (fewest keypoints answering "nothing named" above even
        odds), then the one whose nouns the encoder finds nearest the typed words."""
        readings = self.nouns.readings(text)
        if len(readings) == 1:
            return readings[0]
        missing = torch.zeros(len(readings))
        reader = self.policy.keypoint_reader
        if reader is not None and reader.absent is not None:
            states, mask = self.policy.text(readings, self.device)
            nothing = reader.nothing_named(image[None].expand(len(readings), *image.shape), states, mask)
            missing = (nothing > NOTHING_ODDS).sum(-1).float().cpu()
        phrases = self.nouns.phrases(text)
        read = [[reading.split(" ")[p.index] for p in phrases] for reading in readings]
        words = sorted({p.word for p in phrases} | {noun for nouns in read for noun in nouns})
        embedded = dict(zip(words, self.policy.sentences(words, self.device).cpu(), strict=True))
        likeness = [
            sum(float(embedded[p.word] @ embedded[n]) for p, n in zip(phrases, nouns, strict=True)) for nouns in read
        ]
        best = min(range(len(readings)), key=lambda j: (float(missing[j]), -likeness[j]))
        return readings[best]


def _shown(text: str) -> str:
    """An instruction as a message quotes it: at most 80 characters."""
    return text if len(text) <= 80 else text[:77] + "..."


def parse_scope_threshold(value: object) -> float | str | None:
    """A config's scope_threshold as PolicyRunner takes it: ``calibrated``, ``off`` (or null:
    never stop) or a number in (0, 1), which the command line hands over as text."""
    if value is None or value == "off":
        return None
    if value == CALIBRATED:
        return CALIBRATED
    try:
        number = float(str(value))
    except ValueError:
        number = -1.0
    if not 0.0 < number < 1.0:
        raise ValueError(f"scope_threshold={value}: allowed are calibrated, off, or a number in (0, 1)")
    return number


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; containers and taskset narrow it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def inference_threads(batch_size: int) -> int:
    """``threads="auto"``: one thread for a batch of one, every usable core otherwise."""
    return 1 if batch_size <= 1 else usable_cores()


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch CPU threads (None: as they are), then restore the count."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def policy_driver(path: str | Path, device: str = "cpu", threads: int = 1) -> Callable[[dict[str, Any]], np.ndarray]:
    """``act(obs)`` of a checkpoint, for worker processes that step envs with it (DAgger
    collection): one torch thread each, so N workers do not fight over N cores."""
    torch.set_num_threads(threads)
    return load_policy(path, device=device).act


def load_policy(path: str | Path, device: str = "cpu", **kwargs: Any) -> PolicyRunner:
    """Load a checkpoint file (or a run directory: its best, else latest checkpoint)."""
    policy, tokenizer = build_policy(read_checkpoint(path))
    return PolicyRunner(policy, tokenizer, device, **kwargs)
