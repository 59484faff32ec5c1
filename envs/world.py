"""Read-only questions about the simulator state: where things are and what touches what.

Tasks (success, reward), experts and the env all ask the same questions; this class
answers them once, with ids looked up at construction so the per-step path does no
string lookups.
"""

from __future__ import annotations

import mujoco
import numpy as np

from envs.scene import FINGER_JOINTS, GRIPPER_GEOMS
from envs.vocabulary import ZONE_COLOURS, all_objects

# The pads' inner faces sit this far apart when both finger joints are at zero.
_CLOSED_PAD_GAP = 0.006


class World:
    """Named views into one ``MjModel``/``MjData`` pair."""

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData):
        self.model = model
        self.data = data
        self.grip_site = model.site("grip_site").id
        self.finger_qpos = np.array([model.jnt_qposadr[model.joint(j).id] for j in FINGER_JOINTS])
        self.finger_dof = np.array([model.jnt_dofadr[model.joint(j).id] for j in FINGER_JOINTS])
        # Python ints for the per-step reads: indexing with an int array allocates a new array.
        self._finger_qpos = tuple(int(i) for i in self.finger_qpos)
        self._finger_dof = tuple(int(i) for i in self.finger_dof)
        self.gripper_geoms = frozenset(model.geom(g).id for g in GRIPPER_GEOMS)
        self.left_pad = model.geom("finger_left_pad").id
        self.right_pad = model.geom("finger_right_pad").id
        self.table_geom = model.geom("table").id
        self.object_body = {f"{c}_{s}": model.body(f"{c}_{s}").id for c, s in all_objects()}
        self.object_geom = {name: model.geom(name).id for name in self.object_body}
        self.object_qpos = {name: model.jnt_qposadr[model.joint(f"{name}_joint").id] for name in self.object_body}
        self.zone_mocap = {c: model.body(f"zone_{c}").mocapid[0] for c in ZONE_COLOURS}
        self.zone_geom = {c: model.geom(f"zone_{c}").id for c in ZONE_COLOURS}

    # --- poses ---------------------------------------------------------------------------
    def grip_pos(self) -> np.ndarray:
        return self.data.site_xpos[self.grip_site].copy()

    def grip_xmat(self) -> np.ndarray:
        return self.data.site_xmat[self.grip_site].reshape(3, 3).copy()

    def gripper_opening(self) -> float:
        """Distance between the inner faces of the two pads, in metres."""
        left, right = self._finger_qpos
        qpos = self.data.qpos
        return float(qpos[left] + qpos[right] + _CLOSED_PAD_GAP)  # the same sum as .sum() of the two

    def gripper_opening_velocity(self) -> float:
        """Rate of change of ``gripper_opening`` in m/s: negative while closing, about zero
        once the pads have stopped (open, shut, or pressed on an object)."""
        left, right = self._finger_dof
        qvel = self.data.qvel
        return float(qvel[left] + qvel[right])

    def object_pos(self, name: str) -> np.ndarray:
        return self.data.xpos[self.object_body[name]].copy()

    def object_yaw(self, name: str) -> float:
        w, x, y, z = self.data.xquat[self.object_body[name]]
        return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))

    def zone_pos(self, colour: str) -> np.ndarray:
        return self.data.mocap_pos[self.zone_mocap[colour]].copy()

    # --- contacts --------------------------------------------------------------------------
    def touching(self, geom: int) -> set[int]:
        """The geoms in contact with ``geom`` now."""
        if self.data.ncon == 0:
            return set()
        pairs = self.data.contact.geom  # (ncon, 2): one array read instead of a list of pairs
        first, second = pairs[:, 0], pairs[:, 1]
        return set(second[first == geom].tolist()) | set(first[second == geom].tolist())

    def gripper_touches(self, name: str) -> bool:
        """Any part of the gripper is in contact with the object."""
        return not self.gripper_geoms.isdisjoint(self.touching(self.object_geom[name]))

    def is_grasped(self, name: str) -> bool:
        """Both finger pads touch the object: it is held by friction between them."""
        touching = self.touching(self.object_geom[name])
        return self.left_pad in touching and self.right_pad in touching
