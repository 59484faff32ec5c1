"""Attention backends and the Triton soft-argmax on the policy's real shapes (L3, V11). GPU only.

    python eval/bench_kernels.py [--model large] [--batch-sizes 1,256,4096] [--out kernels.json]

Attention: ``scaled_dot_product_attention`` restricted to one backend at a time (math,
memory-efficient, flash, cuDNN) on the decoder's shapes (batch x heads x sequence x head
width of the named config), with three masks: the policy's own (a boolean prefix-LM mask: the
prefix sees itself, action tokens the prefix and earlier actions), none, and ``is_causal``.
A backend that refuses a mask says why. Then FlexAttention with the same prefix-LM mask as a
block mask, compiled into one fused kernel. Soft-argmax: the keypoint reader's PyTorch
softmax + expectation against the fused Triton kernel (vla/kernels.py), both checked equal.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.nn.attention import SDPBackend, sdpa_kernel

from vla.app.cli import compose_config
from vla.kernels import soft_argmax_reference, soft_argmax_triton
from vla.policy import PolicyConfig, VLAPolicy

BACKENDS = {
    "math": SDPBackend.MATH,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}


def timed_ms(fn, repeats: int = 100) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def policy_shapes(model: str) -> tuple[int, int, int, int]:
    """(heads, head width, prefix length, action tokens) of a config's decoder."""
    values = OmegaConf.to_container(compose_config("bc", [f"model={model}"]).model)
    values["text_encoder"] = "scratch"
    policy = VLAPolicy(PolicyConfig.from_dict(values))
    c = policy.config
    prefix = policy.vision.num_tokens * len(c.cameras) + c.keypoints + int(c.sentence_token) + int(c.use_proprio)
    return c.heads, c.width // c.heads, prefix, c.action_dim


def attention_rows(batch: int, heads: int, dim: int, prefix: int, actions: int) -> list[dict[str, Any]]:
    n = prefix + actions
    q, k, v = (torch.randn(batch, heads, n, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    i = torch.arange(n, device="cuda")
    policy_mask = (i[None, :] < prefix) | (i[None, :] <= i[:, None])  # (Q, K): VLAPolicy._mask with no padding
    masks = {
        "policy (bool prefix-LM)": {"attn_mask": policy_mask.expand(batch, 1, n, n)},
        "none": {},
        "is_causal": {"is_causal": True},
    }
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=policy_mask)
    rows = []
    for mask_name, kwargs in masks.items():
        for name, backend in BACKENDS.items():
            row = {"batch": batch, "mask": mask_name, "backend": name}
            try:
                with sdpa_kernel([backend]):
                    out = F.scaled_dot_product_attention(q, k, v, **kwargs)
                    row["ms"] = timed_ms(lambda kw=kwargs: F.scaled_dot_product_attention(q, k, v, **kw))
                if mask_name.startswith("policy"):
                    row["max_error"] = float((out.float() - reference).abs().max())
            except RuntimeError as error:
                row["refused"] = str(error).strip().splitlines()[0][:160]
            rows.append(row)
            print(row, flush=True)
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def prefix_lm(b, h, q_idx, kv_idx):
            return (kv_idx < prefix) | (kv_idx <= q_idx)

        block_mask = create_block_mask(prefix_lm, None, None, n, n, device="cuda")
        flex = torch.compile(flex_attention)
        out = flex(q, k, v, block_mask=block_mask)
        row = {"batch": batch, "mask": "policy (FlexAttention block mask)", "backend": "flex (compiled Triton)"}
        row["ms"] = timed_ms(lambda: flex(q, k, v, block_mask=block_mask))
        row["max_error"] = float((out.float() - reference).abs().max())
    except Exception as error:  # FlexAttention needs a recent torch and a working Triton
        row = {"batch": batch, "backend": "flex", "refused": f"{type(error).__name__}: {str(error)[:160]}"}
    rows.append(row)
    print(row, flush=True)
    return rows


def soft_argmax_rows(batch: int, keypoints: int = 2, side: int = 32) -> dict[str, Any]:
    logits = torch.randn(batch, keypoints, side * side, device="cuda", dtype=torch.bfloat16) * 4
    u, v = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="xy")
    cells = torch.stack([u.flatten(), v.flatten()], 1).cuda()
    error = float((soft_argmax_triton(logits, cells) - soft_argmax_reference(logits, cells)).abs().max())
    row = {
        "batch": batch,
        "pytorch_ms": timed_ms(lambda: soft_argmax_reference(logits, cells)),
        "triton_ms": timed_ms(lambda: soft_argmax_triton(logits, cells)),
        "max_error": error,
    }
    row["speedup"] = row["pytorch_ms"] / row["triton_ms"]
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="large", choices=["small", "large"])
    parser.add_argument("--batch-sizes", default="1,256,4096")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: eval/bench_kernels.py times GPU kernels: this machine has no CUDA GPU")
    heads, dim, prefix, actions = policy_shapes(args.model)
    print(f"{args.model}: {heads} heads x {dim} wide, sequence {prefix} + {actions}; {torch.cuda.get_device_name()}")
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "shape": {"heads": heads, "head_dim": dim, "prefix": prefix, "actions": actions},
        "attention": [r for b in sizes for r in attention_rows(b, heads, dim, prefix, actions)],
        "soft_argmax": [soft_argmax_rows(b) for b in sizes],
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
