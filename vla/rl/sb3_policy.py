"""The VLA as a stable-baselines3 actor-critic: PPO fine-tunes it in its own action-token space.

Observations are the env's Dict with the instruction as character codes (vla/token_env.py);
actions are the 7 action tokens, ``MultiDiscrete([bins] * 7)``. The policy samples them
autoregressively, so the log-probability PPO needs is the *sum of the per-token conditional
log-probs* along the sampled sequence, log p(a) = sum_i log p(a_i | obs, a_<i), read off one
teacher-forced pass (``VLAPolicy.action_states``). SB3's ``MultiCategoricalDistribution``
treats the 7 tokens as independent, which is a different distribution, so ``forward`` and
``evaluate_actions`` are overridden and SB3's distribution object is never used.

Entropy: the sum of the per-token conditional entropies along the given sequence, an
unbiased one-sample estimate of the joint entropy of the 7 tokens when the sequence is
drawn from the policy (exact for parallel decoding, where the tokens are independent).

Value: a linear head on the trunk's state at the start-of-action position, which sees the
whole [vision | text | proprio] prefix and no action token (``value_head="shared"``); or the
same head on a separate copy of the trunk (``"separate"``), so value gradients cannot move
the actor.

Gotchas handled here: SB3 transposes channel-last images to channel-first and stores them
as float32 in its rollout buffer, while the ViT normalises uint8 HWC images itself (once), so
images go back to uint8 HWC and SB3's own normalisation stays off; SB3 collects rollouts in
eval mode and trains in train mode, so the policy must behave the same in both: no dropout
(checked) and no image augmentation (``augment=False`` everywhere).
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import is_image_space_channels_first
from torch import nn

from vla.policy import CAMERA_KEYS, VLAPolicy
from vla.rl.token_env import INSTRUCTION_KEY, decode_instructions

VALUE_HEADS = ("shared", "separate")


class TokenEvaluation(NamedTuple):
    values: torch.Tensor  # (B, 1)
    log_prob: torch.Tensor  # (B,) joint log-prob of the 7 tokens
    entropy: torch.Tensor  # (B,) sum of per-token conditional entropies
    logits: torch.Tensor  # (B, 7, bins), for the KL to the initial policy


class VLAActorCriticPolicy(ActorCriticPolicy):
    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.MultiDiscrete,
        lr_schedule,
        vla: VLAPolicy,
        value_head: str = "shared",
        freeze_vision: bool = False,
        freeze_language: bool = False,
        temperature: float = 1.0,
        value_scale: float = 1.0,
        critic_lr_scale: float = 1.0,
        **kwargs: Any,
    ):
        vla.require_token_head("PPO fine-tuning (token log-probabilities)")
        if kwargs.pop("ortho_init", False) or kwargs.pop("normalize_images", False):
            raise ValueError("the VLA policy keeps its own initialisation and image normalisation")
        if value_head not in VALUE_HEADS:
            raise ValueError(f"unknown value_head {value_head!r}; valid values are: {', '.join(VALUE_HEADS)}")
        # SB3 builds an MLP extractor and a MultiCategorical head in _build(); this policy
        # needs neither, so _build() only keeps the schedule and the modules are made below.
        super().__init__(
            observation_space, action_space, lr_schedule, ortho_init=False, normalize_images=False, **kwargs
        )
        c = vla.config
        expected = [c.bins] * c.action_dim
        if not isinstance(action_space, spaces.MultiDiscrete) or list(action_space.nvec) != expected:
            raise ValueError(f"the policy's action tokens are MultiDiscrete({expected}), the env offers {action_space}")
        if c.dropout != 0:
            raise ValueError("PPO needs dropout off: rollouts run in eval mode, updates in train mode")
        if not temperature > 0:
            raise ValueError(f"rollout temperature must be > 0, got {temperature}")
        # PPO's policy is the VLA's token distribution at this temperature: rollouts sample
        # from logits / T and evaluate_actions scores with the same logits / T, so the ratio
        # stays exact. T < 1 acts closer to the greedy decoding the evaluation uses.
        self.temperature = float(temperature)
        if not value_scale > 0:
            raise ValueError(f"value_scale must be > 0, got {value_scale}")
        # The head predicts returns in units of value_scale: returns here reach tens (dense
        # reward + a bonus per solved step), and a zero-initialised head under a fine-tune's
        # small learning rate would need thousands of updates to grow to that size.
        self.value_scale = float(value_scale)
        self.vla = vla
        self.channels_first = is_image_space_channels_first(observation_space["image"])
        self.critic: VLAPolicy | None = None
        if value_head == "separate":
            self.critic = _copy_sharing_text_encoder(vla)
        self.value_head = nn.Linear(c.width, 1)
        nn.init.zeros_(self.value_head.bias)
        for model in (vla, self.critic):
            if model is None:
                continue
            if freeze_vision and model.vision is not None:
                model.vision.requires_grad_(False)
                model.camera_embed.requires_grad_(False)
            if freeze_language:
                model.text.requires_grad_(False)
                if model.text_proj is not None:  # None when the decoder reads no word tokens
                    model.text_proj.requires_grad_(False)
        if not critic_lr_scale > 0:
            raise ValueError(f"critic_lr_scale must be > 0, got {critic_lr_scale}")
        self.optimizer = self.optimizer_class(
            self._param_groups(critic_lr_scale, lr_schedule(1)), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _build(self, lr_schedule) -> None:
        self.lr_schedule = lr_schedule

    def _param_groups(self, critic_lr_scale: float, lr: float) -> list[dict[str, Any]]:
        """One optimiser group, or two when the value function gets its own learning rate:
        the value head (and a separate critic's trunk) at ``critic_lr_scale`` x the policy's.
        A fine-tune's small policy step leaves a fresh critic barely moving, and advantages
        from a critic that explains nothing are noise. ``lr_scale`` rides in the group so
        ``RegularisedPPO._update_learning_rate`` keeps the ratio under any schedule."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        if critic_lr_scale == 1.0:
            return [{"params": trainable, "lr_scale": 1.0}]
        # The critic is everything that is not the actor (the VLA): the value head and a separate
        # critic's trunk, less the text encoder that trunk shares with the actor.
        actor_ids = {id(p) for p in self.vla.parameters()}
        actor = [p for p in trainable if id(p) in actor_ids]
        critic = [p for p in trainable if id(p) not in actor_ids]
        return [
            {"params": actor, "lr_scale": 1.0},
            {"params": critic, "lr": lr * critic_lr_scale, "lr_scale": critic_lr_scale},
        ]

    # --- observations -> the VLA's batch -------------------------------------------------------
    def to_batch(self, obs: dict[str, torch.Tensor]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for camera in self.vla.config.cameras:
            images = obs[CAMERA_KEYS[camera]]
            if self.channels_first:  # SB3's VecTransposeImage made them (B, 3, H, W)
                images = images.permute(0, 2, 3, 1)
            if images.dtype != torch.uint8:  # the rollout buffer keeps float32 copies of 0..255
                images = images.round().clamp(0, 255).to(torch.uint8)
            batch[CAMERA_KEYS[camera]] = images.contiguous()
        batch["proprio"] = obs["proprio"].float()
        batch["instruction"] = decode_instructions(obs[INSTRUCTION_KEY])
        return batch

    # --- the pieces PPO calls --------------------------------------------------------------------
    def evaluate_tokens(self, batch: dict[str, Any], bins: torch.Tensor) -> TokenEvaluation:
        """Values, joint log-probs, entropies and logits of the token sequences ``bins``."""
        bins = bins.long()
        states = self.vla.action_states({**batch, "action_bins": bins}, augment=False)
        logits = self.vla.head(states).float() / self.temperature
        log_probs = logits.log_softmax(-1)
        log_prob = log_probs.gather(-1, bins.unsqueeze(-1)).squeeze(-1).sum(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1).sum(-1)
        return TokenEvaluation(self._values(batch, states[:, 0]), log_prob, entropy, logits)

    def _values(self, batch: dict[str, Any], start_state: torch.Tensor) -> torch.Tensor:
        """(B, 1) values from the actor's start-of-action state, or a separate critic's own."""
        features = start_state if self.critic is None else self.critic.start_state(batch)
        return self.value_head(features).float() * self.value_scale

    def value(self, batch: dict[str, Any], trunk_grad: bool = True) -> torch.Tensor:
        """(B, 1) values; ``trunk_grad=False`` trains only the head (critic warm-up on a shared trunk)."""
        model = self.vla if self.critic is None else self.critic
        with torch.set_grad_enabled(trunk_grad and torch.is_grad_enabled()):
            features = model.start_state(batch)
        return self.value_head(features).float() * self.value_scale

    def forward(self, obs: dict[str, torch.Tensor], deterministic: bool = False):
        """A rollout step: tokens, values and joint log-probs from one decoding pass (the
        logits each token was sampled from; equal to ``evaluate_tokens``' teacher-forced ones)."""
        batch = self.to_batch(obs)
        temperature = 0.0 if deterministic else self.temperature
        bins, logits, start = self.vla.decode(batch, temperature=temperature, scores=True)
        log_probs = (logits.float() / self.temperature).log_softmax(-1)
        log_prob = log_probs.gather(-1, bins.unsqueeze(-1)).squeeze(-1).sum(-1)
        return bins, self._values(batch, start), log_prob

    def evaluate_actions(self, obs: dict[str, torch.Tensor], actions: torch.Tensor):
        out = self.evaluate_tokens(self.to_batch(obs), actions)
        return out.values, out.log_prob, out.entropy

    def predict_values(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.value(self.to_batch(obs))

    def _predict(self, observation: dict[str, torch.Tensor], deterministic: bool = False) -> torch.Tensor:
        return self.vla.decode(self.to_batch(observation), temperature=0.0 if deterministic else self.temperature)

    def get_distribution(self, obs):
        raise NotImplementedError(
            "the autoregressive token distribution is not SB3's independent MultiCategorical; "
            "use forward() to sample and evaluate_actions() to score"
        )


def _copy_sharing_text_encoder(vla: VLAPolicy) -> VLAPolicy:
    """A copy of the VLA for the critic; the (large, usually frozen) text encoder is shared."""
    text = vla.text
    vla.text = None
    try:
        critic = copy.deepcopy(vla)
    finally:
        vla.text = text
    critic.text = text
    return critic
