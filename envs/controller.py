"""Differential inverse kinematics: 6-D end-effector deltas -> arm joint position targets.

Damped least squares on the grip site's Jacobian:
    dq = J^T (J J^T + lambda^2 I)^-1 e,   e = [dp; dr]
which stays bounded near singularities (where the plain pseudo-inverse explodes), then
clips the step per joint and the target to the joint range, so limits are respected
before the servos ever see the command.

The step is added to the *previous target*, not to the measured angles: a position servo
lags a moving target, and restarting from the measured angles each step made the arm
overshoot the commanded speed by ~30% (momentum carried it past every fresh target). The
target may lead the measured angles by at most ``max_lead``, so pressing against the table
or an object cannot wind up into a large force.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np


@dataclass(frozen=True)
class IKConfig:
    damping: float = 0.05  # lambda of damped least squares (metres / radians)
    max_joint_step: float = 0.25  # rad per control step, caps a single solve
    max_lead: float = 0.15  # rad the target may run ahead of the measured joint angle
    orientation_weight: float = 0.5  # radians count less than metres in the error


class DifferentialIK:
    """Maps a desired world-frame twist of one site to position targets of the arm joints."""

    def __init__(self, model: mujoco.MjModel, site: str, joints: tuple[str, ...], config: IKConfig = IKConfig()):
        self.model = model
        self.config = config
        self.site_id = model.site(site).id
        joint_ids = [model.joint(j).id for j in joints]
        self.qpos_idx = np.array([model.jnt_qposadr[j] for j in joint_ids])
        self.dof_idx = np.array([model.jnt_dofadr[j] for j in joint_ids])
        self.lower = model.jnt_range[joint_ids, 0].copy()
        self.upper = model.jnt_range[joint_ids, 1].copy()
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))
        self._jac = np.zeros((6, len(joints)))
        self._damping = config.damping**2 * np.eye(6)

    def joint_targets(
        self, data: mujoco.MjData, previous_target: np.ndarray, delta_pos: np.ndarray, delta_rot: np.ndarray
    ) -> np.ndarray:
        """Joint targets that move the site by ``delta_pos`` (m) and rotate it by ``delta_rot``
        (axis-angle, rad), both in the world frame, from the current state in ``data``."""
        mujoco.mj_jacSite(self.model, data, self._jacp, self._jacr, self.site_id)
        w = self.config.orientation_weight
        jac = self._jac
        jac[:3] = self._jacp[:, self.dof_idx]
        jac[3:] = w * self._jacr[:, self.dof_idx]
        error = np.concatenate([delta_pos, w * delta_rot])
        dq = jac.T @ np.linalg.solve(jac @ jac.T + self._damping, error)
        dq = np.clip(dq, -self.config.max_joint_step, self.config.max_joint_step)
        measured = data.qpos[self.qpos_idx]
        lead = self.config.max_lead
        target = np.clip(previous_target + dq, measured - lead, measured + lead)
        return np.clip(target, self.lower, self.upper)
