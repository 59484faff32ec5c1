"""The VLA model core: action tokenizer, ViT, language encoders, the RT-2-style policy,
batching, checkpoints, and the narrow public API ``vla.load_policy(path).act(obs)``.

The core knows the observation/action contract (docs/architecture.md) but nothing of MuJoCo:
demo data comes in through any reader with ``sample(i)``. The subpackages ``vla.training``,
``vla.rl`` and ``vla.evaluation`` drive the simulator (``envs``); the core never imports them.
"""

from vla.inference import PolicyRunner, load_policy

__all__ = ["PolicyRunner", "load_policy"]
