"""PPO for the VLA token policy: SB3's PPO update, extended with

- critic warm-up: for the first ``critic_warmup_steps`` environment steps only the value
  function learns (on a shared trunk only its head), so the first policy updates use
  advantages from a critic that already fits the BC policy's returns, not from noise that
  would push a good initial policy around;
- a KL-to-init regulariser: ``kl_coef`` x KL(pi || pi_init), the sum over the 7 tokens of
  the per-token KL between the current and the frozen initial policy, along the rollout's
  token sequences (keeps fine-tuning near what behaviour cloning learnt). It is logged as
  ``train/kl_to_init`` even when ``kl_coef`` is 0.

Everything else (clipped ratio, value loss, entropy bonus, target-KL early stop, advantage
normalisation, gradient clipping) is SB3's ``PPO.train`` as of stable-baselines3 2.x.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3 import PPO
from stable_baselines3.common.utils import explained_variance

from vla.policy import VLAPolicy
from vla.rl.sb3_policy import VLAActorCriticPolicy


def token_kl(logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """(B,) sum over action tokens of KL(p || q) between two (B, 7, bins) logit tensors."""
    log_p, log_q = logits.float().log_softmax(-1), reference_logits.float().log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).sum(-1)


class RegularisedPPO(PPO):
    policy: VLAActorCriticPolicy

    def __init__(
        self,
        *args: Any,
        reference: VLAPolicy | None = None,
        kl_coef: float = 0.0,
        critic_warmup_steps: int = 0,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if kl_coef > 0 and reference is None:
            raise ValueError("kl_coef > 0 needs the initial policy (init=<checkpoint>)")
        self.reference = reference
        if reference is not None:
            self.reference = reference.to(self.device).eval().requires_grad_(False)
        self.kl_coef = kl_coef
        self.critic_warmup_steps = critic_warmup_steps

    def _update_learning_rate(self, optimizers) -> None:
        """SB3 sets one rate for every group; the critic's group keeps its multiple of it."""
        lr = self.lr_schedule(self._current_progress_remaining)
        self.logger.record("train/learning_rate", lr)
        for group in self.policy.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def train(self) -> None:
        policy = self.policy
        policy.set_training_mode(True)
        self._update_learning_rate(policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)
        warmup = self.num_timesteps <= self.critic_warmup_steps
        logs: dict[str, list[float]] = {
            k: [] for k in ("pg_loss", "value_loss", "entropy", "clip_fraction", "approx_kl", "kl_to_init")
        }
        continue_training, epochs_run = True, 0
        for _epoch in range(self.n_epochs):
            epochs_run += 1
            for i, data in enumerate(self.rollout_buffer.get(self.batch_size)):
                batch = policy.to_batch(data.observations)
                if warmup:  # only the value function learns
                    values = policy.value(batch, trunk_grad=policy.critic is not None).flatten()
                    value_loss = F.mse_loss(data.returns, values)
                    loss = self.vf_coef * value_loss
                    logs["value_loss"].append(value_loss.item())
                else:
                    out = policy.evaluate_tokens(batch, data.actions)
                    values = out.values.flatten()
                    advantages = data.advantages
                    if self.normalize_advantage and len(advantages) > 1:
                        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                    log_ratio = out.log_prob - data.old_log_prob
                    ratio = torch.exp(log_ratio)
                    policy_loss = -torch.min(
                        advantages * ratio, advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
                    ).mean()
                    if self.clip_range_vf is not None:
                        clip_vf = self.clip_range_vf(self._current_progress_remaining)
                        values = data.old_values + torch.clamp(values - data.old_values, -clip_vf, clip_vf)
                    value_loss = F.mse_loss(data.returns, values)
                    entropy = out.entropy.mean()
                    loss = policy_loss - self.ent_coef * entropy + self.vf_coef * value_loss
                    if self.reference is not None and (self.kl_coef > 0 or i == 0):
                        with torch.no_grad():
                            reference_logits = self.reference.action_logits(
                                {**batch, "action_bins": data.actions.long()}, augment=False
                            )
                        # both at the rollout temperature: the KL between the two policies PPO acts with
                        kl_to_init = token_kl(out.logits, reference_logits / self.policy.temperature).mean()
                        logs["kl_to_init"].append(kl_to_init.item())
                        if self.kl_coef > 0:
                            loss = loss + self.kl_coef * kl_to_init
                    with torch.no_grad():  # Schulman's k3 estimator, as SB3
                        approx_kl = torch.mean(torch.exp(log_ratio) - 1 - log_ratio).item()
                    for key, value in (
                        ("pg_loss", policy_loss.item()),
                        ("value_loss", value_loss.item()),
                        ("entropy", entropy.item()),
                        ("clip_fraction", torch.mean((torch.abs(ratio - 1) > clip_range).float()).item()),
                        ("approx_kl", approx_kl),
                    ):
                        logs[key].append(value)
                    if self.target_kl is not None and approx_kl > 1.5 * self.target_kl:
                        continue_training = False  # early stop: this minibatch is not applied
                        break
                policy.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), self.max_grad_norm)
                policy.optimizer.step()
            self._n_updates += 1
            if not continue_training:
                break

        explained = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        for key, values in logs.items():
            if values:
                self.logger.record(f"train/{key}", float(np.mean(values)))
        if logs["entropy"]:
            self.logger.record("train/entropy_loss", -float(np.mean(logs["entropy"])))
        self.logger.record("train/explained_variance", explained)
        self.logger.record("train/critic_warmup", float(warmup))
        self.logger.record("train/epochs_run", epochs_run)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
