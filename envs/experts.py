"""Scripted experts, one per task, closed loop: every call re-plans from the current
simulator state (no hidden phase counter), so a slipped grasp or a nudged object is simply
handled again on the next step.

All experts share a few motion primitives: move the grip site towards a point (with a
proportional gain, saturating at the per-step limit), keep the gripper pointing down with
a chosen yaw, and the pick routine (hover, descend, close, re-try on a miss).

Noise injection (DART-style): with ``noise_std > 0`` the expert *executes* its action plus
Gaussian noise on the six motion elements, while ``expert.clean_action`` keeps the noiseless
label for the state it saw. Demonstrations record the clean label, so the data covers more
states without teaching the noise.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from envs.scene import OBJECT_HALF_SIZE
from envs.tabletop_env import MAX_ROTATION, MAX_TRANSLATION, TabletopEnv
from envs.tasks import LIFT_HEIGHT, PUSH_CONTACT_OFFSET, ZONE_RADIUS, Task
from envs.world import World

OPEN, CLOSED = -1.0, 1.0
HOVER_HEIGHT = 0.085  # grip-site height above an object's centre while travelling
CARRY_HEIGHT = 0.13  # object-centre height while carrying
PUSH_HEIGHT = 0.022  # grip-site height while pushing: the pads hit the object mid-side
GRASP_XY_TOLERANCE = 0.015  # the open fingers straddle the object with this much offset


class Expert:
    """``expert(obs) -> action`` for the env it was made for (reads state via ``env.unwrapped``)."""

    def __init__(self, env: Any, noise_std: float = 0.0, seed: int | None = None):
        self.env: TabletopEnv = env.unwrapped
        if not isinstance(self.env, TabletopEnv):
            raise TypeError(f"experts drive TabletopEnv tasks, got {type(self.env).__name__}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.noise_std = noise_std
        self.rng = np.random.default_rng(seed)
        self.clean_action = np.zeros(7, dtype=np.float32)
        self._plan = _PLANNERS[self.env.task.name]

    def __call__(self, obs: dict[str, Any] | None = None) -> np.ndarray:
        world, task, spec = self.env.world, self.env.task, self.env.task_spec
        self.clean_action = np.asarray(self._plan(world, task, spec), dtype=np.float32)
        if self.noise_std == 0:
            return self.clean_action.copy()
        noisy = self.clean_action.copy()
        noisy[:6] += self.rng.normal(0.0, self.noise_std, size=6)
        return np.clip(noisy, -1.0, 1.0).astype(np.float32)


def make_expert(env: Any, noise_std: float = 0.0, seed: int | None = None) -> Expert:
    """The scripted expert for ``env``'s task; see ``Expert``."""
    return Expert(env, noise_std=noise_std, seed=seed)


# --- motion primitives -----------------------------------------------------------------------
def _action(world: World, goal: np.ndarray, gripper: float, yaw: float = 0.0, gain: float = 1.0) -> np.ndarray:
    """Move the grip site towards ``goal`` while holding the gripper vertical at ``yaw``."""
    translation = np.clip(gain * (goal - world.grip_pos()) / MAX_TRANSLATION, -1.0, 1.0)
    # Rotation error as axis-angle: desired = Rz(yaw) (pointing down), current = site frame.
    desired = np.array([[np.cos(yaw), -np.sin(yaw), 0.0], [np.sin(yaw), np.cos(yaw), 0.0], [0.0, 0.0, 1.0]])
    error_quat = np.empty(4)
    mujoco.mju_mat2Quat(error_quat, (desired @ world.grip_xmat().T).ravel())
    rotvec = np.empty(3)
    mujoco.mju_quat2Vel(rotvec, error_quat, 1.0)
    rotation = np.clip(rotvec / MAX_ROTATION, -1.0, 1.0)
    return np.concatenate([translation, rotation, [gripper]])


def _grasp_yaw(world: World, name: str) -> float:
    """Wrist yaw that puts the pads on two parallel faces (cubes repeat every 90 degrees)."""
    if not name.endswith("cube"):
        return 0.0
    yaw = world.object_yaw(name)
    return float((yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4)


def _pick(world: World, name: str) -> np.ndarray:
    """One step towards holding ``name``: hover above, descend open, close; retry on a miss."""
    obj, grip = world.object_pos(name), world.grip_pos()
    yaw = _grasp_yaw(world, name)
    xy_error = np.linalg.norm(grip[:2] - obj[:2])
    if world.gripper_opening() < 0.02:  # closed on nothing: open and back off
        return _action(world, np.array([*grip[:2], obj[2] + HOVER_HEIGHT]), OPEN, yaw)
    if xy_error > GRASP_XY_TOLERANCE:
        if grip[2] < obj[2] + 0.05 and xy_error > 0.03:  # too low to travel: go up first
            return _action(world, np.array([*grip[:2], obj[2] + HOVER_HEIGHT]), OPEN, yaw)
        height = max(obj[2] + 0.04, min(grip[2], obj[2] + HOVER_HEIGHT))
        return _action(world, np.array([*obj[:2], height]), OPEN, yaw, gain=1.5)
    if grip[2] > obj[2] + 0.006:
        return _action(world, obj, OPEN, yaw)
    # Low enough: close, still centring (the fingers tolerate this much offset).
    return _action(world, obj, CLOSED, yaw)


def _carry_and_release(world: World, name: str, goal_xy: np.ndarray, rest_z: float) -> np.ndarray:
    """Holding ``name``: rise, travel to above ``goal_xy``, lower it to ``rest_z``, release."""
    obj, grip = world.object_pos(name), world.grip_pos()
    offset = grip - obj  # keep the grasp offset: we steer the object through the gripper
    yaw = _grasp_yaw(world, name)
    xy_error = np.linalg.norm(obj[:2] - goal_xy)
    if xy_error > 0.012:
        if obj[2] < rest_z + 0.05 and xy_error > 0.03:
            return _action(world, grip + np.array([0, 0, 0.05]), CLOSED, yaw)
        return _action(world, np.array([*goal_xy, max(obj[2], CARRY_HEIGHT)]) + offset, CLOSED, yaw, gain=1.5)
    if obj[2] > rest_z + 0.004:
        return _action(world, np.array([*goal_xy, rest_z - 0.01]) + offset, CLOSED, yaw)
    return _action(world, np.array([*goal_xy, rest_z]) + offset, OPEN, yaw)


def _retreat(world: World) -> np.ndarray:
    grip = world.grip_pos()
    return _action(world, grip + np.array([0, 0, 0.05]), OPEN)


# --- per-task planners -----------------------------------------------------------------------
def _plan_reach(world: World, task: Task, spec: dict[str, Any]) -> np.ndarray:
    obj, grip = world.object_pos(task.target(spec)), world.grip_pos()
    top = obj + np.array([0.0, 0.0, OBJECT_HALF_SIZE - 0.008])
    if np.linalg.norm(grip[:2] - obj[:2]) > 0.015:
        return _action(world, np.array([*obj[:2], max(top[2] + 0.03, grip[2])]), CLOSED, gain=1.5)
    return _action(world, top, CLOSED)


def _plan_lift(world: World, task: Task, spec: dict[str, Any]) -> np.ndarray:
    name = task.target(spec)
    if not world.is_grasped(name):
        return _pick(world, name)
    goal = world.grip_pos().copy()
    goal[2] = OBJECT_HALF_SIZE + LIFT_HEIGHT + 0.06
    return _action(world, goal, CLOSED, _grasp_yaw(world, name))


def _plan_pick_place(world: World, task: Task, spec: dict[str, Any]) -> np.ndarray:
    name = task.target(spec)
    obj, zone = world.object_pos(name), world.zone_pos(spec["zone_colour"])
    placed = np.linalg.norm(obj[:2] - zone[:2]) < ZONE_RADIUS - 0.015 and obj[2] < OBJECT_HALF_SIZE + 0.006
    if placed:
        return _retreat(world)
    if not world.is_grasped(name):
        return _pick(world, name)
    return _carry_and_release(world, name, zone[:2], OBJECT_HALF_SIZE)


def _plan_stack(world: World, task: Task, spec: dict[str, Any]) -> np.ndarray:
    name, base = task.target(spec), task.base(spec)
    obj, base_pos = world.object_pos(name), world.object_pos(base)
    rest_z = base_pos[2] + 2 * OBJECT_HALF_SIZE
    stacked = np.linalg.norm(obj[:2] - base_pos[:2]) < 0.6 * OBJECT_HALF_SIZE and abs(obj[2] - rest_z) < 0.006
    if stacked:
        return _retreat(world)
    if not world.is_grasped(name):
        return _pick(world, name)
    return _carry_and_release(world, name, base_pos[:2], rest_z)


def push_geometry(world: World, task: Task, spec: dict[str, Any]) -> dict[str, Any]:
    """Where push stands: the object-to-zone ``direction`` and its ``normal``, the gripper's
    offset from the object ``along`` and ``lateral`` to that line, the ``standoff`` point
    behind the object, and the ``phase`` the expert is in: ``done`` (in the zone), ``around``
    (not yet behind the object), ``descend`` (behind it, too high) or ``push``. Shared with
    ``envs.milestones``, so "got behind the object" means what the expert means by it."""
    obj, zone, grip = world.object_pos(task.target(spec)), world.zone_pos(spec["zone_colour"]), world.grip_pos()
    to_zone = zone[:2] - obj[:2]
    distance = np.linalg.norm(to_zone)
    direction = to_zone / max(distance, 1e-9)
    normal = np.array([-direction[1], direction[0]])
    rel = grip[:2] - obj[:2]
    along, lateral = rel @ direction, rel @ normal
    if distance < ZONE_RADIUS - 0.025:
        phase = "done"
    elif not (along < -0.5 * PUSH_CONTACT_OFFSET and abs(lateral) < 0.02):
        phase = "around"
    elif grip[2] > PUSH_HEIGHT + 0.012:
        phase = "descend"
    else:
        phase = "push"
    standoff = obj[:2] - direction * PUSH_CONTACT_OFFSET
    return {
        "phase": phase,
        "direction": direction,
        "normal": normal,
        "rel": rel,
        "lateral": lateral,
        "standoff": standoff,
    }


def _plan_push(world: World, task: Task, spec: dict[str, Any]) -> np.ndarray:
    g = push_geometry(world, task, spec)
    grip, standoff = world.grip_pos(), g["standoff"]
    if g["phase"] == "done":
        return _retreat(world)
    if g["phase"] == "around":
        if grip[2] < HOVER_HEIGHT * 0.7 and np.linalg.norm(g["rel"]) < 0.09:  # would bump it: go up
            return _action(world, np.array([*grip[:2], HOVER_HEIGHT]), CLOSED)
        height = PUSH_HEIGHT if np.linalg.norm(grip[:2] - standoff) < 0.02 else max(grip[2], HOVER_HEIGHT * 0.8)
        return _action(world, np.array([*standoff, height]), CLOSED, gain=1.5)
    if g["phase"] == "descend":
        return _action(world, np.array([*standoff, PUSH_HEIGHT]), CLOSED)
    # Push through: aim the gripper where it stands when the object sits at the zone centre,
    # and steer out lateral drift so the object stays on the line.
    zone = world.zone_pos(spec["zone_colour"])
    goal_xy = zone[:2] - g["direction"] * (PUSH_CONTACT_OFFSET - 0.01) - g["lateral"] * g["normal"]
    return _action(world, np.array([*goal_xy, PUSH_HEIGHT]), CLOSED, gain=0.8)


_PLANNERS = {
    "reach": _plan_reach,
    "push": _plan_push,
    "lift": _plan_lift,
    "pick_place": _plan_pick_place,
    "stack": _plan_stack,
}
