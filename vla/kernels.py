"""A fused soft-argmax for the keypoint reader, in Triton (V11).

The reader turns each keypoint's heatmap logits (B, K, cells) into image coordinates: the
softmax over cells, then its expectation of the cells' (u, v). In PyTorch that is a softmax
kernel writing a (B, K, cells) probability tensor and a matrix product reading it back; the
fused kernel reads each row of logits once, keeps the running max, sum and weighted sums in
registers, and writes two numbers. ``soft_argmax`` uses it for inference on a GPU where
Triton is installed (no gradient needed) and PyTorch everywhere else; tests/test_kernels.py
checks the two agree.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU wheels of torch come without Triton
    triton = None


def soft_argmax_reference(logits: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """(B, K, 2) expected cell centre under softmax(logits) (B, K, cells); cells (cells, 2)."""
    return logits.float().softmax(-1) @ cells


def soft_argmax(logits: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """``soft_argmax_reference``, fused into one Triton kernel when it can be (module docstring)."""
    if triton is None or not logits.is_cuda or (torch.is_grad_enabled() and logits.requires_grad):
        return soft_argmax_reference(logits, cells)
    return soft_argmax_triton(logits, cells)


def soft_argmax_triton(logits: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    if triton is None:
        raise RuntimeError("Triton is not installed (it comes with torch's CUDA wheels)")
    b, k, n = logits.shape
    rows = logits.reshape(b * k, n).contiguous()
    grid_u, grid_v = cells[:, 0].contiguous().float(), cells[:, 1].contiguous().float()
    out = torch.empty(b * k, 2, device=logits.device, dtype=torch.float32)
    _soft_argmax_kernel[(b * k,)](rows, grid_u, grid_v, out, n, rows.stride(0), BLOCK=triton.next_power_of_2(n))
    return out.view(b, k, 2)


if triton is not None:

    @triton.jit
    def _soft_argmax_kernel(logits, grid_u, grid_v, out, n, stride, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offsets = tl.arange(0, BLOCK)
        inside = offsets < n
        x = tl.load(logits + row * stride + offsets, mask=inside, other=-float("inf")).to(tl.float32)
        u = tl.load(grid_u + offsets, mask=inside, other=0.0)
        v = tl.load(grid_v + offsets, mask=inside, other=0.0)
        weights = tl.exp(x - tl.max(x, axis=0))
        total = tl.sum(weights, axis=0)
        tl.store(out + row * 2, tl.sum(weights * u, axis=0) / total)
        tl.store(out + row * 2 + 1, tl.sum(weights * v, axis=0) / total)
