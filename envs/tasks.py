"""The five tasks: what an episode's scene looks like, when it is solved, and a dense reward.

Each task samples a *task spec* (the fields an instruction is phrased from: target colour
and shape, destination zone or base object) and a *layout* (where every object and zone
starts). Success predicates read only physical state (positions and real contacts), so a
policy cannot succeed by anything but moving the objects. The dense reward is a staged
shaping in [0, 1] for RL (PPO); the sparse signal is ``info["is_success"]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.scene import OBJECT_HALF_SIZE, ROBOT_BASE, WORKSPACE_X, WORKSPACE_Y, ZONE_RADIUS
from envs.vocabulary import (
    ZONE_COLOURS,
    all_objects,
    check_colour,
    check_name,
    check_shape,
    check_zone_colour,
    object_name,
)
from envs.world import World

LIFT_HEIGHT = 0.08  # metres the object's bottom must clear for "lifted"
PUSH_CONTACT_OFFSET = OBJECT_HALF_SIZE + 0.035  # where the closed gripper stands to push
MIN_OBJECT_GAP = 0.085  # centre-to-centre; the gripper fits between objects
ZONE_CLEARANCE = ZONE_RADIUS + 0.045  # no object starts in or on the edge of a zone
NUM_ZONES = 2
# Horizontal distance from the robot base beyond which the arm cannot hold the gripper
# vertical at pushing height (measured: pushes from x > 0.2 at the far corners stalled).
MAX_PUSH_REACH = 0.58


def norm(vector: np.ndarray) -> float:
    """Euclidean length of a 1-D vector, computed as ``np.linalg.norm`` computes it (the same
    bits: the square root of ``vector.dot(vector)``) without its checks, ~1 us per call."""
    return math.sqrt(vector.dot(vector))


def closeness(distance: float, scale: float = 0.1) -> float:
    """1 at distance 0, falling smoothly towards 0 (shaped reward building block)."""
    return float(1.0 - np.tanh(distance / scale))


@dataclass
class Layout:
    """Initial placement: object name -> (x, y, yaw); zone colour -> (x, y)."""

    objects: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    zones: dict[str, tuple[float, float]] = field(default_factory=dict)


class Task:
    """Base class; subclasses set the class attributes and the two predicates."""

    name: str
    env_id: str
    max_steps: int
    uses_zone = False
    uses_base = False
    num_distractors = 2

    # --- spec and layout ---------------------------------------------------------------------
    def sample_spec(self, rng: np.random.Generator) -> dict[str, Any]:
        objects = all_objects()
        picked = rng.choice(len(objects), size=2, replace=False)
        colour, shape = objects[picked[0]]
        spec: dict[str, Any] = {"task": self.name, "target_colour": colour, "target_shape": shape}
        if self.uses_zone:
            spec["zone_colour"] = str(rng.choice(list(ZONE_COLOURS)))
        if self.uses_base:
            spec["base_colour"], spec["base_shape"] = objects[picked[1]]
        return spec

    def validate_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Check a user-given spec; errors name the bad value and list the valid ones."""
        if not isinstance(spec, dict):
            raise ValueError(
                f"task spec must be a dict such as {self.sample_spec(np.random.default_rng(0))}, got {spec!r:.60}"
            )
        unknown = sorted(str(k) for k in spec if k not in ("task", *SPEC_KEYS))
        if unknown:
            raise ValueError(f"task spec has unknown keys {unknown}; allowed are {['task', *SPEC_KEYS]}")
        if spec.get("task", self.name) != self.name:
            raise ValueError(f"task spec is for task {spec['task']!r} but this env runs {self.name!r}")
        required = ["target_colour", "target_shape"]
        required += ["zone_colour"] if self.uses_zone else []
        required += ["base_colour", "base_shape"] if self.uses_base else []
        missing = [k for k in required if k not in spec]
        if missing:
            raise ValueError(f"task spec for {self.name!r} lacks {missing}; it needs {required}")
        clean = {"task": self.name, "target_colour": check_colour(spec["target_colour"])}
        clean["target_shape"] = check_shape(spec["target_shape"])
        if self.uses_zone:
            clean["zone_colour"] = check_zone_colour(spec["zone_colour"])
        if self.uses_base:
            clean["base_colour"] = check_colour(spec["base_colour"])
            clean["base_shape"] = check_shape(spec["base_shape"])
            if object_name(clean["base_colour"], clean["base_shape"]) == self.target(clean):
                raise ValueError("stack needs two different objects; target and base are the same")
        return clean

    def sample_layout(self, spec: dict[str, Any], rng: np.random.Generator) -> Layout:
        """Target, base (stack) and distractors at random, non-overlapping, off the zones."""
        named = [self.target(spec)] + ([self.base(spec)] if self.uses_base else [])
        others = [object_name(c, s) for c, s in all_objects() if object_name(c, s) not in named]
        distractors = [others[i] for i in rng.choice(len(others), size=self.num_distractors, replace=False)]
        zone_colours = [spec["zone_colour"]] if self.uses_zone else []
        spare = [c for c in ZONE_COLOURS if c not in zone_colours]
        zone_colours += [spare[i] for i in rng.choice(len(spare), size=NUM_ZONES - len(zone_colours), replace=False)]
        for _ in range(10_000):
            layout = Layout()
            zone_xy = [_uniform_xy(rng, margin=ZONE_RADIUS * 0.5) for _ in zone_colours]
            if _far_apart(zone_xy, 2 * ZONE_RADIUS + 0.02):
                layout.zones = dict(zip(zone_colours, zone_xy, strict=True))
                object_xy = [_uniform_xy(rng) for _ in named + distractors]
                if _far_apart(object_xy, MIN_OBJECT_GAP) and all(
                    np.linalg.norm(np.subtract(o, z)) > ZONE_CLEARANCE for o in object_xy for z in zone_xy
                ):
                    for name, (x, y) in zip(named + distractors, object_xy, strict=True):
                        yaw = rng.uniform(-0.4, 0.4) if name.endswith("cube") else 0.0
                        layout.objects[name] = (x, y, yaw)
                    if self.layout_ok(spec, layout):
                        return layout
        raise RuntimeError(f"could not sample a layout for {self.name} in 10,000 tries")

    def layout_ok(self, spec: dict[str, Any], layout: Layout) -> bool:
        """Task-specific constraints on a sampled layout (e.g. push distance)."""
        return True

    # --- names ---------------------------------------------------------------------------
    @staticmethod
    def target(spec: dict[str, Any]) -> str:
        return object_name(spec["target_colour"], spec["target_shape"])

    @staticmethod
    def base(spec: dict[str, Any]) -> str:
        return object_name(spec["base_colour"], spec["base_shape"])

    # --- privileged state for training aids ----------------------------------------------
    def key_positions(self, world: World, spec: dict[str, Any]) -> np.ndarray:
        """float32 (6,): the named target's centre, then where it must go (the zone centre,
        the base object's centre; the target itself for reach and lift). Not an observation:
        demos record it so a model can be taught *where* the instruction points (an
        auxiliary loss), the policy never reads it."""
        target = world.object_pos(self.target(spec))
        if self.uses_zone:
            destination = world.zone_pos(spec["zone_colour"])
        elif self.uses_base:
            destination = world.object_pos(self.base(spec))
        else:
            destination = target
        return np.concatenate([target, destination]).astype(np.float32)

    # --- predicates ----------------------------------------------------------------------
    def success(self, world: World, spec: dict[str, Any]) -> bool:
        raise NotImplementedError

    def dense_reward(self, world: World, spec: dict[str, Any]) -> float:
        raise NotImplementedError


SPEC_KEYS = ("target_colour", "target_shape", "zone_colour", "base_colour", "base_shape")


def _uniform_xy(rng: np.random.Generator, margin: float = 0.0) -> tuple[float, float]:
    return (
        float(rng.uniform(WORKSPACE_X[0] + margin, WORKSPACE_X[1] - margin)),
        float(rng.uniform(WORKSPACE_Y[0] + margin, WORKSPACE_Y[1] - margin)),
    )


def _far_apart(points: list[tuple[float, float]], min_distance: float) -> bool:
    return all(np.linalg.norm(np.subtract(a, b)) >= min_distance for i, a in enumerate(points) for b in points[i + 1 :])


def xy_distance(a: np.ndarray, b: np.ndarray) -> float:
    return norm(a[:2] - b[:2])


def _on_table(pos: np.ndarray) -> bool:
    return bool(pos[2] < OBJECT_HALF_SIZE + 0.006)


class Reach(Task):
    name, env_id, max_steps = "reach", "VLASandbox/Reach-v0", 60

    def success(self, world: World, spec: dict[str, Any]) -> bool:
        return world.gripper_touches(self.target(spec))

    def dense_reward(self, world: World, spec: dict[str, Any]) -> float:
        return closeness(norm(world.grip_pos() - world.object_pos(self.target(spec))))


class Push(Task):
    name, env_id, max_steps = "push", "VLASandbox/Push-v0", 120
    uses_zone = True

    def layout_ok(self, spec: dict[str, Any], layout: Layout) -> bool:
        # Keep pushes short and the stand-off point (behind the object) on the reachable table.
        x, y, _ = layout.objects[self.target(spec)]
        zx, zy = layout.zones[spec["zone_colour"]]
        distance = np.hypot(zx - x, zy - y)
        standoff_x = x - (zx - x) / distance * PUSH_CONTACT_OFFSET
        standoff_y = y - (zy - y) / distance * PUSH_CONTACT_OFFSET
        reachable = (
            WORKSPACE_X[0] - 0.06 < standoff_x
            and abs(standoff_y) < 0.24
            and np.hypot(standoff_x - ROBOT_BASE[0], standoff_y - ROBOT_BASE[1]) < MAX_PUSH_REACH
        )
        return distance < 0.26 and reachable

    def success(self, world: World, spec: dict[str, Any]) -> bool:
        pos = world.object_pos(self.target(spec))
        return xy_distance(pos, world.zone_pos(spec["zone_colour"])) < ZONE_RADIUS and _on_table(pos)

    def dense_reward(self, world: World, spec: dict[str, Any]) -> float:
        obj = world.object_pos(self.target(spec))
        zone = world.zone_pos(spec["zone_colour"])
        direction = (zone - obj)[:2] / max(xy_distance(zone, obj), 1e-6)
        standoff = obj.copy()
        standoff[:2] -= direction * PUSH_CONTACT_OFFSET
        return 0.3 * closeness(norm(world.grip_pos() - standoff)) + 0.7 * closeness(xy_distance(obj, zone))


class Lift(Task):
    name, env_id, max_steps = "lift", "VLASandbox/Lift-v0", 80

    def success(self, world: World, spec: dict[str, Any]) -> bool:
        target = self.target(spec)
        return bool(world.object_pos(target)[2] > OBJECT_HALF_SIZE + LIFT_HEIGHT) and world.is_grasped(target)

    def dense_reward(self, world: World, spec: dict[str, Any]) -> float:
        target = self.target(spec)
        obj = world.object_pos(target)
        grasped = float(world.is_grasped(target))
        height = np.clip((obj[2] - OBJECT_HALF_SIZE) / LIFT_HEIGHT, 0.0, 1.0)
        return 0.25 * closeness(norm(world.grip_pos() - obj)) + 0.25 * grasped + 0.5 * grasped * height


class PickPlace(Task):
    name, env_id, max_steps = "pick_place", "VLASandbox/PickPlace-v0", 130
    uses_zone = True

    def success(self, world: World, spec: dict[str, Any]) -> bool:
        target = self.target(spec)
        pos = world.object_pos(target)
        in_zone = xy_distance(pos, world.zone_pos(spec["zone_colour"])) < ZONE_RADIUS
        return in_zone and _on_table(pos) and not world.gripper_touches(target)

    def dense_reward(self, world: World, spec: dict[str, Any]) -> float:
        target = self.target(spec)
        obj = world.object_pos(target)
        return (
            0.2 * closeness(norm(world.grip_pos() - obj))
            + 0.2 * float(world.is_grasped(target))
            + 0.6 * closeness(xy_distance(obj, world.zone_pos(spec["zone_colour"])))
        )


class Stack(Task):
    name, env_id, max_steps = "stack", "VLASandbox/Stack-v0", 130
    uses_base = True

    def success(self, world: World, spec: dict[str, Any]) -> bool:
        target, base = self.target(spec), self.base(spec)
        top, bottom = world.object_pos(target), world.object_pos(base)
        aligned = xy_distance(top, bottom) < 0.8 * OBJECT_HALF_SIZE
        on_top = abs(top[2] - bottom[2] - 2 * OBJECT_HALF_SIZE) < 0.01
        return aligned and on_top and _on_table(bottom) and not world.gripper_touches(target)

    def dense_reward(self, world: World, spec: dict[str, Any]) -> float:
        target = self.target(spec)
        obj = world.object_pos(target)
        goal = world.object_pos(self.base(spec)) + np.array([0.0, 0.0, 2 * OBJECT_HALF_SIZE])
        return (
            0.2 * closeness(norm(world.grip_pos() - obj))
            + 0.2 * float(world.is_grasped(target))
            + 0.6 * closeness(norm(obj - goal))
        )


# --- the one registry of task names ------------------------------------------------------
TASK_CLASSES: dict[str, type[Task]] = {t.name: t for t in (Reach, Push, Lift, PickPlace, Stack)}
# Gymnasium ids, in a stable order: reach, push, lift, pick_place, stack.
TASKS: tuple[str, ...] = tuple(cls.env_id for cls in TASK_CLASSES.values())
TASK_NAMES: dict[str, str] = {cls.env_id: name for name, cls in TASK_CLASSES.items()}  # env id -> name


def make_task(name: str) -> Task:
    return TASK_CLASSES[check_name("task", name, TASK_CLASSES)]()


def resolve_tasks(tasks: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Task names from names (``pick_place``) or env ids (``VLASandbox/PickPlace-v0``), in the
    order given, without repeats; an unknown one is a ValueError listing the valid values."""
    if isinstance(tasks, str):
        tasks = [tasks]
    resolved = []
    for task in tasks:
        name = TASK_NAMES.get(task, task)
        if name not in TASK_CLASSES:
            valid = ", ".join(list(TASK_CLASSES) + list(TASK_NAMES))
            raise ValueError(f"unknown task {task!r}; valid values are: {valid}")
        resolved.append(name)
    if not resolved:
        raise ValueError(f"no tasks given; valid values are: {', '.join(TASK_CLASSES)}")
    return tuple(dict.fromkeys(resolved))


def task_ids(tasks: str | list[str] | tuple[str, ...]) -> list[str]:
    """Gymnasium env ids of task names or ids (``resolve_tasks`` checks them)."""
    return [TASK_CLASSES[name].env_id for name in resolve_tasks(tasks)]
