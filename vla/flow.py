"""The flow-matching action head (V18), as pi0 and its successors use instead of action tokens.

The decoder reads the same prefix [vision | text | proprio]; after it come ``chunk`` action
tokens, one per future action, each the embedding of a *noisy* action and of the flow time t.
The action tokens attend to the prefix and to each other (the chunk is denoised jointly), and
the head reads a velocity per action from their final states.

Training (rectified flow / conditional flow matching): for a demo chunk ``a`` and noise
``e ~ N(0, I)``, at a time ``t ~ U(0, 1)`` the input is ``x_t = (1 - t) e + t a`` and the
target velocity is ``a - e``; the loss is their mean squared error.
Inference: start from noise and take ``flow_steps`` Euler steps ``x += v(x, t) / steps`` from
t = 0 to 1. The prefix is encoded once (its keys and values cached); each step runs only the
``chunk`` action tokens through the decoder.

Actions live in the tokenizer's bin coordinates scaled to [-1, 1] (bin i of n is the value
(i + 0.5) / n * 2 - 1), so the flow learns from the very labels the token head learns from and
its output goes back to bins at the same 256-level resolution: every consumer of action bins
(evaluation, serving, the demo page, ROS 2) runs a flow policy unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def bins_to_unit(bins: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin indices -> their centres on [-1, 1] (float32)."""
    return (bins.float() + 0.5) / n_bins * 2 - 1


def unit_to_bins(values: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Values on [-1, 1] -> the bin each falls in (clipped into range), int64."""
    return ((values.float() + 1) / 2 * n_bins).floor().clamp(0, n_bins - 1).long()


def time_features(t: torch.Tensor, width: int) -> torch.Tensor:
    """Sinusoidal features (B, width) of flow times t in [0, 1] (B,), as diffusion models embed steps."""
    half = width // 2
    frequencies = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / half)
    angles = 1000.0 * t.float()[:, None] * frequencies[None]  # t spans [0, 1]: scale to a step-like range
    return torch.cat([angles.sin(), angles.cos()], -1)


class FlowMatchingHead(nn.Module):
    """Noisy actions and a flow time in, as decoder tokens; decoder states out, as velocities."""

    def __init__(self, action_dim: int, width: int):
        super().__init__()
        self.width = width
        self.action_in = nn.Linear(action_dim, width)  # one token per action of the chunk
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.velocity_out = nn.Linear(width, action_dim)

    def tokens(self, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, chunk, action_dim) noisy actions at times t (B,) -> (B, chunk, width)."""
        time = self.time_mlp(time_features(t, self.width).to(self.action_in.weight.dtype))
        return self.action_in(noisy.to(self.action_in.weight.dtype)) + time[:, None]

    def velocity(self, states: torch.Tensor) -> torch.Tensor:
        """Final decoder states (B, chunk, width) -> velocities (B, chunk, action_dim), float32."""
        return self.velocity_out(states).float()


def flow_training_pair(
    actions: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For clean actions (B, chunk, D): the noisy input x_t, its times t (B,) and the target velocity."""
    noise = torch.randn(actions.shape, device=actions.device, generator=generator)
    t = torch.rand(len(actions), device=actions.device, generator=generator)
    noisy = (1 - t[:, None, None]) * noise + t[:, None, None] * actions
    return noisy, t, actions - noise
