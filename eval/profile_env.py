"""Where an env step's time goes: ``python eval/profile_env.py [--steps 3000] [--baseline DIR]``.

One process steps one task with random actions (resets are not timed) three ways:
  plain     ``env.step`` as users call it: the step's true length and rendered steps/s, and
            the CPU time the process spent on it (all threads; less swayed by other load)
  probed    the same loop, in stretches of 100 steps taking turns with plain ones, with
            timers around the library calls a step makes, so each part is measured where the
            real step spends it:
              IK            ``DifferentialIK.joint_targets`` (damped least squares)
              physics       ``mujoco.mj_step`` x the control substeps
              task          the task's ``success`` and ``dense_reward`` (contacts, positions)
              scene update  ``mujoco.mjv_updateScene`` (geoms and lights into the scene)
              draw          ``mujoco.mjr_render`` (OpenGL calls; llvmpipe transforms vertices)
              rasterize     ``glFinish`` before the read (llvmpipe rasterizes lazily)
              read-back     ``mujoco.mjr_readPixels`` (copy the frame out of the GL buffer)
            and Python = plain step - those parts (action checks, ramp loop, observation and
            info dicts, wrappers, the renderer's own Python)
  stages    ``mj_step`` with MuJoCo's stage timers on (``mjcb_time``): the physics split into
            collision, kinematics + inertia, making and solving constraints, velocity and
            actuation, integration. Their shares are applied to the probed physics time, since
            the Python timer callback itself slows the stages.
``--baseline DIR`` also profiles another checkout's ``envs`` (e.g. ``git worktree add
/tmp/base <commit>``) in alternating subprocesses, ``--rounds`` times each, and prints both
with their ratio: the machine's load then weighs on both alike. Each cell is the median over
rounds. A profile, not a test: compare numbers within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 100  # steps per plain or probed stretch
PARTS = ("IK", "physics", "task", "scene update", "draw", "rasterize", "read-back")
# MuJoCo stage timers summed into the physics rows (mjtTimer names without the prefix).
STAGES = {
    "collision": ("POS_COLLISION",),
    "kinematics + inertia": ("POS_KINEMATICS", "POS_INERTIA"),
    "constraints (make + solve)": ("POS_MAKE", "POS_PROJECT", "CONSTRAINT"),
    "velocity + actuation": ("VELOCITY", "ACTUATION"),
    "integration": ("ADVANCE",),
}


class _Clock:
    """Seconds spent inside wrapped callables, per part."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.calls = dict.fromkeys(PARTS, 0)

    def wrap(self, part: str, fn: Callable, before: Callable[[], Any] | None = None) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if before is not None:  # e.g. glFinish: its time is counted as its own part
                start = time.perf_counter()
                before()
                self.seconds["rasterize"] += time.perf_counter() - start
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start
                self.calls[part] += 1

        return timed


def _probes(clock: _Clock, base: Any, mujoco: Any, gl_finish: Callable[[], None]) -> Callable:
    """A context manager that puts ``clock``'s timers around the calls a step makes."""
    wrappers = {
        "mj_step": clock.wrap("physics", mujoco.mj_step),
        "mjv_updateScene": clock.wrap("scene update", mujoco.mjv_updateScene),
        "mjr_render": clock.wrap("draw", mujoco.mjr_render),
        "mjr_readPixels": clock.wrap("read-back", mujoco.mjr_readPixels, before=gl_finish),
    }
    methods = {
        (base.ik, "joint_targets"): "IK",
        (base.task, "success"): "task",
        (base.task, "dense_reward"): "task",
    }

    @contextlib.contextmanager
    def patched() -> Iterator[None]:
        originals = {name: getattr(mujoco, name) for name in wrappers}
        for name, fn in wrappers.items():
            setattr(mujoco, name, fn)
        for (owner, method), part in methods.items():  # instance attributes shadow the methods
            setattr(owner, method, clock.wrap(part, getattr(owner, method)))
        try:
            yield
        finally:
            for name, fn in originals.items():
                setattr(mujoco, name, fn)
            for owner, method in methods:
                delattr(owner, method)

    return patched


def _run(env: Any, actions: Any) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process, all threads) spent in ``env.step`` over
    ``actions``; resets excluded."""
    wall = cpu = 0.0
    for action in actions:
        start, start_cpu = time.perf_counter(), time.process_time()
        _, _, terminated, truncated, _ = env.step(action)
        wall += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        if terminated or truncated:
            env.reset()
    return wall, cpu


def profile(task_id: str, image_size: int, steps: int, seed: int) -> dict[str, Any]:
    """One process's profile: microseconds per step, per part."""
    import gymnasium as gym
    import numpy as np

    import envs  # noqa: F401  (registers the tasks; chooses the GL backend before mujoco loads)

    # isort: split
    import mujoco
    from OpenGL import GL

    env = gym.make(task_id, image_size=image_size)
    base = env.unwrapped
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    _run(env, rng.uniform(-1, 1, (200, 7)).astype(np.float32))  # warm up (GL context, shaders)

    clock = _Clock()
    patches = _probes(clock, base, mujoco, GL.glFinish)
    plain = plain_cpu = probed = 0.0
    chunks = max(steps // CHUNK, 1)
    steps = chunks * CHUNK
    # Plain and probed stretches alternate, so a change in the machine's load weighs on both.
    for _ in range(chunks):
        wall, cpu = _run(env, rng.uniform(-1, 1, (CHUNK, 7)).astype(np.float32))
        plain, plain_cpu = plain + wall / steps, plain_cpu + cpu / steps
        with patches():
            probed += _run(env, rng.uniform(-1, 1, (CHUNK, 7)).astype(np.float32))[0] / steps
    parts = {part: seconds / steps * 1e6 for part, seconds in clock.seconds.items()}

    data = base.data
    for timer in data.timer:
        timer.duration, timer.number = 0.0, 0
    mujoco.set_mjcb_time(time.perf_counter)
    try:
        _run(env, rng.uniform(-1, 1, (steps, 7)).astype(np.float32))
    finally:
        mujoco.set_mjcb_time(None)
    step_total = data.timer[mujoco.mjtTimer.mjTIMER_STEP].duration
    stages = {
        name: sum(data.timer[getattr(mujoco.mjtTimer, f"mjTIMER_{t}")].duration for t in timers)
        / step_total
        * parts["physics"]
        for name, timers in STAGES.items()
    }
    env.close()
    return {
        "step_us": plain * 1e6,
        "step_cpu_us": plain_cpu * 1e6,
        "steps_per_s": 1.0 / plain,
        "probed_step_us": probed * 1e6,
        "parts_us": parts,
        "python_us": plain * 1e6 - sum(parts.values()),
        "physics_stages_us": stages,
        "substeps": round(clock.calls["physics"] / steps),
    }


def _subprocess_profile(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``profile`` in a fresh process that imports ``envs`` from checkout ``root``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--task", args.task]
    cmd += ["--image-size", str(args.image_size), "--steps", str(args.steps), "--seed", str(args.seed)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _rows(result: dict[str, Any]) -> dict[str, float]:
    """Flat ``row name -> microseconds per step`` in display order."""
    parts = result["parts_us"]
    rows = {"IK": parts["IK"], f"physics ({result['substeps']} substeps)": parts["physics"]}
    rows.update({f"  {name}": us for name, us in result["physics_stages_us"].items()})
    rows.update({part: parts[part] for part in PARTS[2:]})
    rows["Python (the rest)"] = result["python_us"]
    rows["whole step"] = result["step_us"]
    rows["whole step, CPU time (all threads)"] = result["step_cpu_us"]
    return rows


def _median_rows(results: list[dict[str, Any]]) -> dict[str, float]:
    rows = [_rows(r) for r in results]
    return {name: statistics.median(r[name] for r in rows) for name in rows[0]}


def _print_table(columns: dict[str, list[dict[str, Any]]]) -> None:
    medians = {label: _median_rows(results) for label, results in columns.items()}
    labels = list(medians)
    head = " | ".join(f"{label} us | {label} share" for label in labels)
    ratio = len(labels) == 2
    print(f"| part | {head} |" + (f" {labels[0]} / {labels[1]} |" if ratio else ""))
    print("|---|" + "---|---|" * len(labels) + ("---|" if ratio else ""))
    for name in medians[labels[0]]:
        cells = []
        for label in labels:
            us, whole = medians[label][name], medians[label]["whole step"]
            cells.append(f"{us:,.1f} | {100 * us / whole:.1f}%")
        row = f"| {name} | {' | '.join(cells)} |"
        if ratio:
            a, b = (medians[label][name] for label in labels)
            row += f" {a / b:.2f}x |" if b > 0.05 else " - |"
        print(row)
    for label, results in columns.items():
        rates = sorted(r["steps_per_s"] for r in results)
        print(f"\n{label}: rendered steps/s per round {', '.join(f'{x:,.0f}' for x in rates)}", end="")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="VLASandbox/PickPlace-v0")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3000, help="timed steps per pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="profiles per checkout (median shown)")
    parser.add_argument("--baseline", type=Path, help="another checkout to profile alongside this one")
    parser.add_argument("--out", type=Path, default=Path("outputs/profile_env.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # one profile as JSON on the last line, for the parent process
        print(json.dumps(profile(args.task, args.image_size, args.steps, args.seed)))
        return
    checkouts = {"now": ROOT}
    if args.baseline is not None:
        checkouts = {"baseline": args.baseline.resolve(), "now": ROOT}
    columns: dict[str, list[dict[str, Any]]] = {label: [] for label in checkouts}
    for _ in range(args.rounds):
        for label, root in checkouts.items():
            columns[label].append(_subprocess_profile(root, args))
    print(f"{args.task}, {args.image_size}x{args.image_size}, {args.steps} steps per pass, {args.rounds} rounds")
    _print_table(columns)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(columns, indent=1))


if __name__ == "__main__":
    main()
