"""One behaviour-cloning optimiser step, as train/bc.py and eval/profile_training.py run it.

``TrainStep(batch)``: the loss under autocast, backward, gradient clipping, the optimiser.
It reads no value back itself, so the host can queue the next step while this one runs (the
one wait left is the keypoint error metric's boolean index, in vla/vision.py).

``trainer.compile`` puts the forward (and through it the backward) through ``torch.compile``:
the large model's eager step is a few thousand small kernels, each launched from Python, and
compiling fuses the elementwise work around the matrix products into far fewer;
``reduce-overhead`` also replays them as CUDA graphs, which is what removes the launch cost
(docs/performance.md). The compiled forward takes fixed shapes: the instruction arrives as
encoder states padded to ``model.text_max_length`` (``read_instructions``), since Python
strings cannot enter a graph.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


def compile_mode(value: Any) -> str | None:
    """``trainer.compile`` as a torch.compile mode, or None for eager (``off``; None or False
    from code)."""
    if value is None or value is False or value == "off":
        return None
    if value not in COMPILE_MODES:
        raise ValueError(
            f"trainer.compile must be off or one of {', '.join(COMPILE_MODES)} (torch.compile modes), got {value!r}"
        )
    return value


def read_instructions(policy: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` with its instruction strings replaced by the text encoder's states and mask,
    padded to ``model.text_max_length`` tokens: the same values the policy reads from the
    strings (the padding is masked out), in a shape that is the same for every batch."""
    if "instruction" not in batch:
        return batch
    device = batch["proprio"].device
    states, mask = policy.text(batch["instruction"], device)
    pad = policy.config.text_max_length - states.shape[1]
    batch = {k: v for k, v in batch.items() if k != "instruction"}
    batch["text_states"] = F.pad(states, (0, 0, 0, pad))
    batch["text_mask"] = F.pad(mask, (0, pad))
    return batch


class TrainStep:
    """``step(batch) -> (out, grad_norm)``: one optimiser step on a batch already on the device.

    ``model`` is the policy or its DistributedDataParallel wrapper (whose forward is the loss);
    ``policy`` the bare module whose parameters are clipped. ``mark(stage)``, if given, is called
    after the forward, the backward and the optimiser (the profiler's stopwatch)."""

    def __init__(
        self,
        model: torch.nn.Module,
        policy: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        autocast: AbstractContextManager,
        grad_clip: float,
        augment: bool,
        compile: Any = None,
    ):
        self.policy, self.optimizer, self.scaler = policy, optimizer, scaler
        self.autocast, self.grad_clip, self.augment = autocast, grad_clip, augment
        self.mode = compile_mode(compile)
        self.forward: Callable = model
        self.graphs = self.mode == "reduce-overhead"
        self._capture: Callable[[], AbstractContextManager] = nullcontext
        if self.mode is not None:
            self.forward = torch.compile(model, mode=None if self.mode == "default" else self.mode)
            if not self.graphs:
                # The keypoint error metric indexes with a boolean mask (a data-dependent
                # shape): captured, the loss stays one graph instead of breaking in two around
                # it. CUDA graphs cannot hold such an op, so under them the break stays.
                self._capture = lambda: torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True)

    def __call__(
        self, batch: dict[str, Any], mark: Callable[[str], None] | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        mark = mark or (lambda stage: None)
        if self.mode is not None:
            batch = read_instructions(self.policy, batch)
        if self.graphs:  # the previous step's graph outputs are read by now (log rows, backward)
            torch.compiler.cudagraph_mark_step_begin()
        with self.autocast, self._capture():
            out = self.forward(batch, augment=self.augment)
        mark("forward")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out["loss"]).backward()
        mark("backward")
        self.scaler.unscale_(self.optimizer)  # clip the true gradients
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)  # skipped where fp16 gradients overflowed
        self.scaler.update()
        mark("optimizer")
        return out, grad_norm
