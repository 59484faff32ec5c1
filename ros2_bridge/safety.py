"""The safety layer between a policy and the robot, in plain Python (no ROS needed).

Every command passes through ``SafetyFilter.filter`` before it leaves the policy node, and
again before the simulator applies it (the robot trusts no publisher). The filter:

- replaces a command with non-finite elements (NaN, inf) by a stop and logs it;
- latches a stop while the emergency stop is engaged, until ``reset_estop``;
- stops motion when the watchdog has not been fed (a fresh observation on the policy side,
  a fresh command on the robot side) within ``watchdog_timeout`` (default: two control periods);
- clamps translation and rotation to the velocity limits, and translation so that the
  end effector does not leave the workspace box (moving back into the box stays allowed).

Commands are the env's 7-D actions (see envs/tabletop_env.py): ``[dx, dy, dz]`` x
``max_translation`` metres, ``[droll, dpitch, dyaw]`` x ``max_rotation`` radians per control
period, and an absolute gripper command (-1 open, +1 closed). A stop is zero motion with
the gripper held at its last safe command, so a grasped object is not dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# The env's scaling (envs/tabletop_env.py), repeated here so this module imports without MuJoCo;
# tests/test_ros2_safety.py asserts they agree.
CONTROL_DT = 0.05  # s per control step (20 Hz)
MAX_TRANSLATION = 0.025  # m per control step at |action| = 1
MAX_ROTATION = 0.15  # rad per control step at |action| = 1
GRIPPER_OPEN = -1.0


@dataclass(frozen=True)
class SafetyLimits:
    """Limits in SI units. The velocity defaults equal the env's full scale, so a command the
    env would accept passes unchanged; lower them for a real robot."""

    workspace_low: tuple[float, float, float] = (-0.35, -0.40, 0.0)  # m, world frame, grip site
    workspace_high: tuple[float, float, float] = (0.45, 0.40, 0.45)
    max_linear_speed: float = MAX_TRANSLATION / CONTROL_DT  # m/s (0.5)
    max_angular_speed: float = MAX_ROTATION / CONTROL_DT  # rad/s (3.0)
    watchdog_timeout: float = 2 * CONTROL_DT  # s

    def __post_init__(self) -> None:
        low, high = np.asarray(self.workspace_low), np.asarray(self.workspace_high)
        if low.shape != (3,) or high.shape != (3,) or not np.all(low < high):
            raise ValueError(f"workspace_low must be below workspace_high per axis, got {low} and {high}")
        for name in ("max_linear_speed", "max_angular_speed", "watchdog_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class Watchdog:
    """Expires when ``feed`` was not called within ``timeout`` seconds (or never was)."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic):
        self.timeout = timeout
        self.clock = clock
        self.last_fed: float | None = None

    def feed(self, now: float | None = None) -> None:
        self.last_fed = self.clock() if now is None else now

    def expired(self, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        return self.last_fed is None or now - self.last_fed > self.timeout

    def clear(self) -> None:
        self.last_fed = None


class ThrottledLog:
    """Logs the first event of each kind at once, then at most one line per ``period`` with a
    count, so a flood of bad messages gives one clear error instead of thousands of lines."""

    def __init__(self, log: Callable[[str], None], period: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.log = log
        self.period = period
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, kind: str, message: str) -> None:
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.period:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        more = self._suppressed.pop(kind, 0)
        self._last[kind] = now
        self.log(message + (f" ({more} more since the last report)" if more else ""))


@dataclass
class SafetyStats:
    """How often each rule changed a command (reported by the evaluation)."""

    clamped: int = 0
    non_finite: int = 0
    watchdog: int = 0
    estop: int = 0

    def total(self) -> int:
        return self.clamped + self.non_finite + self.watchdog + self.estop


@dataclass
class SafetyFilter:
    """Turns any 7-D command into a safe one. See the module docstring for the rules."""

    limits: SafetyLimits = field(default_factory=SafetyLimits)
    log: Callable[[str], None] = logging.getLogger("ros2_bridge.safety").error
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.watchdog = Watchdog(self.limits.watchdog_timeout, self.clock)
        self.report = ThrottledLog(self.log, clock=self.clock)
        self.stats = SafetyStats()
        self.estop_reason: str | None = None
        self.last_gripper = GRIPPER_OPEN  # the env resets with the gripper open
        self._watchdog_tripped = False

    # --- inputs ----------------------------------------------------------------------------
    def feed(self, now: float | None = None) -> None:
        """A fresh observation (policy side) or command (robot side) arrived."""
        self.watchdog.feed(now)
        self._watchdog_tripped = False

    def engage_estop(self, reason: str = "emergency stop") -> None:
        if self.estop_reason is None:
            self.log(f"emergency stop engaged ({reason}): motion stopped until reset")
        self.estop_reason = reason

    def reset_estop(self) -> bool:
        """Release a latched emergency stop; returns whether one was engaged."""
        was = self.estop_reason is not None
        self.estop_reason = None
        return was

    @property
    def estopped(self) -> bool:
        return self.estop_reason is not None

    # --- the filter ------------------------------------------------------------------------
    def stop(self) -> np.ndarray:
        """Zero motion, gripper held at its last safe command."""
        action = np.zeros(7, dtype=np.float32)
        action[6] = self.last_gripper
        return action

    def filter(self, command, ee_position=None, now: float | None = None) -> tuple[np.ndarray, str | None]:
        """(safe float32 action, why it was changed or None). ``ee_position`` (m, world frame)
        enables the workspace clamp."""
        command = np.asarray(command, dtype=np.float64).reshape(-1)
        if command.shape != (7,):
            self.stats.non_finite += 1
            self.report("shape", f"command must have 7 elements, got {command.size}: replaced by a stop")
            return self.stop(), "malformed"
        if self.estopped:
            self.stats.estop += 1
            return self.stop(), "estop"
        if self.watchdog.expired(now):
            self.stats.watchdog += 1
            if not self._watchdog_tripped:  # one event per stop, however many commands it replaces
                self._watchdog_tripped = True
                # Throttled like every other kind: on a loaded machine short stops come many times a
                # second, and one line per stop buried the errors that matter (10-18 lines in 7 s).
                timeout = self.limits.watchdog_timeout
                self.report("watchdog", f"watchdog: nothing fresh within {timeout:.3f} s: stopping motion")
            return self.stop(), "watchdog"
        bad = ~np.isfinite(command)
        if bad.any():
            self.stats.non_finite += 1
            self.report("non_finite", f"non-finite command {command.tolist()} replaced by a stop")
            return self.stop(), "non_finite"
        safe = self._clamp(command, ee_position)
        self.last_gripper = float(safe[6])
        if not np.array_equal(safe, command.astype(np.float32)):
            self.stats.clamped += 1
            return safe, "clamped"
        return safe, None

    def _clamp(self, command: np.ndarray, ee_position) -> np.ndarray:
        # Work on the float32 values the env will see, so an unchanged command stays bit-identical.
        out = command.astype(np.float32)
        out[6] = np.clip(out[6], -1.0, 1.0)
        linear = min(1.0, self.limits.max_linear_speed * CONTROL_DT / MAX_TRANSLATION)
        angular = min(1.0, self.limits.max_angular_speed * CONTROL_DT / MAX_ROTATION)
        out[:3] = np.clip(out[:3], -linear, linear)
        out[3:6] = np.clip(out[3:6], -angular, angular)
        if ee_position is not None:
            # Per axis: the step may not carry the end effector past a face of the box; from
            # outside the box, only motion back towards it is allowed.
            p = np.asarray(ee_position, dtype=np.float64)
            low = np.minimum(np.asarray(self.limits.workspace_low) - p, 0.0) / MAX_TRANSLATION
            high = np.maximum(np.asarray(self.limits.workspace_high) - p, 0.0) / MAX_TRANSLATION
            clipped = np.clip(out[:3].astype(np.float64), low, high)
            changed = clipped != out[:3]
            out[:3] = np.where(changed, clipped.astype(np.float32), out[:3])
        return out
