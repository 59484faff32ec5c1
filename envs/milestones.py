"""How far an episode got: each task's stages, in order, read from the simulator state.

A success rate says *that* a policy fails; the stages say *where*. Push, for instance, is
four behaviours in a row (go round behind the object, drop to pushing height, push it along
the line, stop in the zone), and a policy at 0% may never get behind the object or may push
it off the line. ``MilestoneTracker`` records, per episode, which stages were ever reached;
the first stage an episode never reached is where it stalled.

Each stage is tested on its own, not only after the one before it, so a later share can
exceed an earlier one, and that is information: a policy that grasps the object off its
centre (never within ``NEAR`` of it) is "grasped" without "at target", and one that shoves the
object towards the zone from beside it is "pushed towards zone" without the expert's standoff.

Some behaviours the expert never shows in a task are recorded beside its stages (``DETOURS``):
a push whose object was held and lifted well off the table was solved as a pick-and-place, which the push's
success test (object in the zone, resting on the table) accepts.

It also records which object the gripper went to first (``first_object``: the named
``target``, the stack's ``base``, an ``other object`` on the table, or ``none``): the object
nearest the gripper the first time it comes down low beside one, as for a grasp or a push.
An episode stalled before "at target" that went to another object misread the instruction
or the scene; one that went to no object at all is a control failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from envs.experts import push_geometry
from envs.scene import OBJECT_HALF_SIZE, ZONE_RADIUS
from envs.tasks import PUSH_CONTACT_OFFSET, TASK_CLASSES, Task, xy_distance
from envs.world import World

NEAR = 0.03  # m: the grip site this close to the object's centre counts as "at" it
MOVED = 0.02  # m: how much closer to the zone an object must get to count as "pushed"
# "Lifted": held between the pads with its centre this far above its resting height. Pushes
# tip or ride objects up: the push expert's own episodes raise them by up to 1.7 cm (4.9 cm
# once in 100 with collection noise, pinched between the closed pads), so an earlier 1 cm
# without the grasp test counted pushes as lifts. A carry holds the object some 10 cm up; a
# pinch that goes higher still counts (3% of a state-based imitator's pushes).
LIFTED = 0.06
# "Gone to" an object: the grip site this low (travel is at hover height, ~0.11 m; the arm
# starts at 0.08 m or higher) and within this horizontal distance (pushing stands 0.06 m
# off the object's centre).
GONE_TO_HEIGHT = 0.06
GONE_TO_XY = PUSH_CONTACT_OFFSET + 0.01


def _push_standoff_reached(world: World, task: Task, spec: dict[str, Any]) -> bool:
    # The expert's own test: behind the object, on the line to the zone, low enough to push.
    return push_geometry(world, task, spec)["phase"] == "push"


def _at_target(world: World, task: Task, spec: dict[str, Any]) -> bool:
    return bool(np.linalg.norm(world.grip_pos() - world.object_pos(task.target(spec))) < NEAR)


def _above_target(world: World, task: Task, spec: dict[str, Any]) -> bool:
    return xy_distance(world.grip_pos(), world.object_pos(task.target(spec))) < OBJECT_HALF_SIZE


def _grasped(world: World, task: Task, spec: dict[str, Any]) -> bool:
    return world.is_grasped(task.target(spec))


def _target_to_zone(world: World, task: Task, spec: dict[str, Any]) -> float:
    return xy_distance(world.object_pos(task.target(spec)), world.zone_pos(spec["zone_colour"]))


def _carried_over_zone(world: World, task: Task, spec: dict[str, Any]) -> bool:
    return world.is_grasped(task.target(spec)) and _target_to_zone(world, task, spec) < ZONE_RADIUS


def _carried_over_base(world: World, task: Task, spec: dict[str, Any]) -> bool:
    target = task.target(spec)
    over = xy_distance(world.object_pos(target), world.object_pos(task.base(spec))) < OBJECT_HALF_SIZE
    return world.is_grasped(target) and over


def _target_lifted(world: World, task: Task, spec: dict[str, Any]) -> bool:
    target = task.target(spec)
    return bool(world.object_pos(target)[2] > OBJECT_HALF_SIZE + LIFTED) and world.is_grasped(target)


FIRST_OBJECT_ROLES = ("target", "base", "other object", "none")


def object_role(task: Task, spec: dict[str, Any], name: str) -> str:
    """What ``name`` is to this episode: the ``target``, the stack's ``base``, or an ``other object``."""
    if name == task.target(spec):
        return "target"
    if "base_colour" in spec and name == task.base(spec):
        return "base"
    return "other object"


# Stages per task, in the order the expert passes them; "success" is the task's own test.
STAGES = {
    "reach": ("above target",),
    "push": ("behind object, low", "pushed towards zone"),
    "lift": ("at target", "grasped"),
    "pick_place": ("at target", "grasped", "carried over zone"),
    "stack": ("at target", "grasped", "carried over base"),
}
# Behaviours off the expert's way, recorded after the stages ("detours" in the reports).
DETOURS = {"push": ("target lifted",)}
_STAGE_TESTS = {
    "target lifted": _target_lifted,
    "above target": _above_target,
    "at target": _at_target,
    "behind object, low": _push_standoff_reached,
    "grasped": _grasped,
    "carried over zone": _carried_over_zone,
    "carried over base": _carried_over_base,
}


class MilestoneTracker:
    """Call ``start`` after each reset and ``update`` after each step; ``reached`` is the
    dict of stage -> ever reached in this episode (plus ``success`` and the task's
    ``DETOURS``), ``first_object`` the role (``FIRST_OBJECT_ROLES``) of the first of
    ``objects`` the gripper went to."""

    def __init__(self, task_name: str):
        if task_name not in STAGES:
            raise ValueError(f"unknown task {task_name!r}; valid values are: {', '.join(STAGES)}")
        self.task: Task = TASK_CLASSES[task_name]()
        self.stages = (*STAGES[task_name], "success", *DETOURS.get(task_name, ()))
        self.reached: dict[str, bool] = {}
        self.first_object = "none"
        self._objects: tuple[str, ...] = ()
        self._start_distance = 0.0

    def start(self, world: World, spec: dict[str, Any], objects: Sequence[str] = ()) -> None:
        """``objects``: the names on the table (the env's ``scene_objects``) for ``first_object``."""
        self.reached = dict.fromkeys(self.stages, False)
        self.first_object = "none"
        self._objects = tuple(objects)
        if self.task.uses_zone:
            self._start_distance = _target_to_zone(world, self.task, spec)

    def update(self, world: World, spec: dict[str, Any]) -> None:
        grip = world.grip_pos()
        if self.first_object == "none" and self._objects and grip[2] < GONE_TO_HEIGHT:
            distance, name = min((xy_distance(grip, world.object_pos(n)), n) for n in self._objects)
            if distance < GONE_TO_XY:
                self.first_object = object_role(self.task, spec, name)
        for stage in self.stages:
            if self.reached[stage]:
                continue
            if stage == "success":
                self.reached[stage] = self.task.success(world, spec)
            elif stage == "pushed towards zone":
                self.reached[stage] = self._start_distance - _target_to_zone(world, self.task, spec) > MOVED
            else:
                self.reached[stage] = _STAGE_TESTS[stage](world, self.task, spec)


def stage_shares(episodes: list[dict[str, bool]]) -> dict[str, float]:
    """Share of ``episodes`` (trackers' ``reached`` dicts) that ever reached each stage, in the
    expert's order (each stage tested on its own: a later share can be the larger)."""
    return {stage: float(np.mean([e[stage] for e in episodes])) for stage in episodes[0]} if episodes else {}


def first_object_shares(first_objects: list[str]) -> dict[str, float]:
    """Share of episodes whose gripper went first to each role of ``FIRST_OBJECT_ROLES``."""
    n = len(first_objects)
    return {role: first_objects.count(role) / n for role in FIRST_OBJECT_ROLES} if n else {}


def describe(stages_reached: dict[str, float], first_object: dict[str, float]) -> tuple[str, str]:
    """The two shares above as text: "at target 60% -> grasped 55% -> ...", "target 70%, none 30%";
    a detour follows the funnel: "... -> success 26% (off the expert's way: target lifted 40%)"."""
    detours = {name for names in DETOURS.values() for name in names}
    shares = {stage: f"{stage} {100 * share:.0f}%" for stage, share in stages_reached.items()}
    funnel = " -> ".join(text for stage, text in shares.items() if stage not in detours)
    off_way = ", ".join(text for stage, text in shares.items() if stage in detours)
    if off_way:
        funnel += f" (off the expert's way: {off_way})"
    first = ", ".join(f"{role} {100 * share:.0f}%" for role, share in first_object.items() if share)
    return funnel, first
