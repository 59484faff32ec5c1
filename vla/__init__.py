"""The VLA model side of the sandbox: action tokenizer, ViT, language encoder, RT-2-style
policy, checkpoints, and ``load_policy``.

It knows the observation/action contract of DESIGN.md but nothing of MuJoCo: demo data
comes in through any reader with ``sample(i)`` (``envs.dataset.DemoDataset``).
"""

from vla.inference import PolicyRunner, load_policy

__all__ = ["PolicyRunner", "load_policy"]
