"""The fused Triton soft-argmax equals PyTorch's softmax-then-expectation (GPU only), and the
keypoint reader falls back to PyTorch where Triton cannot run."""

from __future__ import annotations

import pytest
import torch

from vla.kernels import soft_argmax, soft_argmax_reference, triton


def grid(n: int) -> torch.Tensor:
    u, v = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="xy")
    return torch.stack([u.flatten(), v.flatten()], 1)


def test_without_a_gpu_soft_argmax_is_the_pytorch_reference():
    logits, cells = torch.randn(3, 2, 64), grid(8)
    torch.testing.assert_close(soft_argmax(logits, cells), soft_argmax_reference(logits, cells))
    peaked = torch.full((1, 1, 64), -30.0)
    peaked[0, 0, 9] = 30.0  # all mass on one cell: its centre
    torch.testing.assert_close(soft_argmax(peaked, cells)[0, 0], cells[9])


@pytest.mark.skipif(triton is None or not torch.cuda.is_available(), reason="Triton kernels need a CUDA GPU")
@pytest.mark.parametrize("side", [8, 32, 33])  # 33 x 33 cells: a row longer than a power of two, masked
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_triton_soft_argmax_equals_pytorch(side, dtype):
    torch.manual_seed(0)
    logits = (torch.randn(64, 2, side * side, device="cuda") * 4).to(dtype)
    cells = grid(side).cuda()
    with torch.no_grad():
        fused = soft_argmax(logits, cells)
    torch.testing.assert_close(fused, soft_argmax_reference(logits, cells), atol=1e-5, rtol=1e-4)
