"""MuJoCo tabletop manipulation suite with language instructions.

``gym.make("VLASandbox/PickPlace-v0", instruction_split="heldout")`` builds a task;
``envs.TASKS`` lists the registered ids; ``envs.make_expert(env)`` returns the scripted
expert for it. This package knows nothing of the model (``vla``).
"""

from __future__ import annotations

import os

# EGL renders headless on CPU (Mesa) and GPU machines alike; it must be chosen before
# mujoco is first imported, which the imports below do.
os.environ.setdefault("MUJOCO_GL", "egl")
# Mesa's llvmpipe rasterizes in the calling thread instead of handing each frame to worker
# threads: a 64 x 64 frame is one 64 x 64 tile, so the workers only add thread switches
# (~10% of a step's CPU on this 2-core CPU; the pixels are the same). Read when Mesa loads;
# set LP_NUM_THREADS before importing envs to choose otherwise (docs/performance.md).
os.environ.setdefault("LP_NUM_THREADS", "0")

import gymnasium as gym  # noqa: E402

from envs.experts import make_expert  # noqa: E402
from envs.tabletop_env import ACTION_NAMES, PROPRIO_NAMES, TabletopEnv  # noqa: E402
from envs.tasks import TASK_NAMES, TASKS, resolve_tasks, task_ids  # noqa: E402

for _env_id, _task in TASK_NAMES.items():
    if _env_id not in gym.registry:
        # No TimeLimit wrapper: the env truncates at its task's time limit itself.
        gym.register(id=_env_id, entry_point="envs.tabletop_env:TabletopEnv", kwargs={"task": _task})

__all__ = [
    "ACTION_NAMES",
    "PROPRIO_NAMES",
    "TASKS",
    "TASK_NAMES",
    "TabletopEnv",
    "make_expert",
    "resolve_tasks",
    "task_ids",
]
