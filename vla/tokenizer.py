"""The action tokenizer: the only place that knows bins.

Each of the 7 action elements is discretised independently into ``bins`` bins (256 by
default, as RT-2 and OpenVLA). Two binnings:
- ``uniform``: equal-width bins over [-1, 1], the action contract's range.
- ``quantile``: equal-width bins over [1st, 99th] percentile of the demo labels per element
  (OpenVLA's choice): bins go where the data is; values outside are clipped.
A bin decodes to its centre, so the round-trip error is at most half a bin width inside
the binned range. Token ids live in a reserved block of the model's vocabulary:
``token_id = token_offset + bin``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

BINNINGS = ("uniform", "quantile")


class ActionTokenizer:
    def __init__(
        self,
        bins: int = 256,
        low: np.ndarray | None = None,
        high: np.ndarray | None = None,
        mode: str = "uniform",
        token_offset: int = 0,
        action_dim: int = 7,
    ):
        if mode not in BINNINGS:
            raise ValueError(f"unknown binning {mode!r}; valid values are: {', '.join(BINNINGS)}")
        if not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
        self.bins, self.mode, self.token_offset, self.action_dim = bins, mode, int(token_offset), action_dim
        self.low = np.full(action_dim, -1.0) if low is None else np.asarray(low, dtype=np.float64).copy()
        self.high = np.full(action_dim, 1.0) if high is None else np.asarray(high, dtype=np.float64).copy()
        # A degenerate element (constant in the data) still needs a non-empty range.
        self.high = np.maximum(self.high, self.low + 1e-3)
        self.width = (self.high - self.low) / bins

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Continuous actions (..., 7) -> bin indices (..., 7), int64 in [0, bins)."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape[-1] != self.action_dim:
            raise ValueError(f"actions must end in {self.action_dim} elements, got shape {actions.shape}")
        index = np.floor((actions - self.low) / self.width)
        return np.clip(index, 0, self.bins - 1).astype(np.int64)

    def decode(self, bins: np.ndarray) -> np.ndarray:
        """Bin indices (..., 7) -> bin centres (..., 7), float32."""
        bins = np.asarray(bins)
        if bins.min(initial=0) < 0 or bins.max(initial=0) >= self.bins:
            raise ValueError(f"bin indices must be in [0, {self.bins}), got [{bins.min()}, {bins.max()}]")
        return (self.low + (bins + 0.5) * self.width).astype(np.float32)

    def to_token_ids(self, bins: np.ndarray) -> np.ndarray:
        return np.asarray(bins) + self.token_offset

    def from_token_ids(self, token_ids: np.ndarray) -> np.ndarray:
        return np.asarray(token_ids) - self.token_offset

    def state_dict(self) -> dict[str, Any]:
        return {
            "bins": self.bins,
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "mode": self.mode,
            "token_offset": self.token_offset,
            "action_dim": self.action_dim,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ActionTokenizer:
        return cls(
            state["bins"],
            np.array(state["low"]),
            np.array(state["high"]),
            state["mode"],
            state["token_offset"],
            state["action_dim"],
        )


def soft_bin_targets(bins: torch.Tensor, num_bins: int, sigma: float) -> torch.Tensor:
    """Gaussian label distributions over the bins (HL-Gauss, Farebrother et al. 2024).

    Cross-entropy against a one-hot bin treats bin 120 as no closer to bin 121 than to bin 0;
    the model has to learn the bins' order from data. Spreading each label as a Gaussian of
    std ``sigma`` bins around its bin centre (mass of each bin = the Gaussian's integral over
    it, renormalised to the range) tells it the order for free. ``bins`` (...) of indices ->
    (..., num_bins) probabilities; ``sigma`` 0 gives the one-hot labels.
    """
    if sigma < 0:
        raise ValueError(f"label sigma must be >= 0 bins, got {sigma}")
    if sigma == 0:
        return torch.nn.functional.one_hot(bins, num_bins).float()
    # float64: the far bins' masses are differences of CDF values near 1
    edges = torch.arange(num_bins + 1, device=bins.device, dtype=torch.float64)
    centre = bins.double().unsqueeze(-1) + 0.5
    cdf = torch.special.ndtr((edges - centre) / sigma)
    mass = cdf[..., 1:] - cdf[..., :-1]
    return (mass / mass.sum(-1, keepdim=True)).float()
