"""Procedurally generated MJCF for the tabletop: a 6-joint arm with a parallel-jaw gripper,
eight graspable objects (4 colours x 2 shapes), three goal zones and the cameras.

Nothing is downloaded: every body is built from primitives here. All eight objects and
three zones exist in every model (one compile, reused across episodes); an episode puts
three objects and two zones on the table and parks the rest out of sight (see
``TabletopEnv``). Geometry constants that the controller, tasks and experts need are
module-level names, so there is one source of truth for them.
"""

from __future__ import annotations

import numpy as np

from envs.vocabulary import OBJECT_COLOURS, OBJECT_SHAPES, ZONE_COLOURS

# --- geometry (metres) ---------------------------------------------------------------------
TABLE_HALF_EXTENT = (0.55, 0.45)  # x, y; the table top is the plane z = 0
ROBOT_BASE = (-0.40, 0.0, 0.0)
OBJECT_HALF_SIZE = 0.025  # cube half edge = cylinder radius = cylinder half height
ZONE_RADIUS = 0.065
# Where objects and zones may be placed (x range, y range): reachable and in camera view.
WORKSPACE_X = (-0.12, 0.20)
WORKSPACE_Y = (-0.20, 0.20)
PARK_POSITION = (3.0, 0.0, -1.0)  # unused objects and zones wait here, invisible
FINGER_TRAVEL = 0.045  # each finger slides 0..FINGER_TRAVEL from the centre line

PHYSICS_TIMESTEP = 0.005
ARM_JOINTS = ("shoulder_yaw", "shoulder_pitch", "elbow_pitch", "forearm_roll", "wrist_pitch", "wrist_yaw")
FINGER_JOINTS = ("finger_left", "finger_right")
GRIPPER_GEOMS = ("palm", "finger_left_pad", "finger_right_pad")


def _look_at_xyaxes(position: np.ndarray, target: np.ndarray) -> str:
    """MJCF ``xyaxes`` for a camera at ``position`` looking at ``target`` (cameras look along -z)."""
    forward = target - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return " ".join(f"{v:.5f}" for v in (*right, *up))


def _rgba(rgb: tuple[float, float, float], alpha: float = 1.0) -> str:
    return " ".join(f"{v:.3f}" for v in (*rgb, alpha))


def _object_body(colour: str, shape: str) -> str:
    h = OBJECT_HALF_SIZE
    rgba = _rgba(OBJECT_COLOURS[colour])
    if shape == "cube":
        geom = f'<geom name="{colour}_{shape}" type="box" size="{h} {h} {h}" rgba="{rgba}" class="object"/>'
    else:
        geom = f'<geom name="{colour}_{shape}" type="cylinder" size="{h} {h}" rgba="{rgba}" class="object"/>'
    x, y, z = PARK_POSITION
    return f"""
    <body name="{colour}_{shape}" pos="{x} {y} {z}">
      <freejoint name="{colour}_{shape}_joint"/>
      {geom}
    </body>"""


def _zone_body(colour: str) -> str:
    x, y, z = PARK_POSITION
    return f"""
    <body name="zone_{colour}" mocap="true" pos="{x} {y} {z}">
      <geom name="zone_{colour}" type="cylinder" size="{ZONE_RADIUS} 0.001" rgba="{_rgba(ZONE_COLOURS[colour])}"
            contype="0" conaffinity="0"/>
    </body>"""


def build_mjcf() -> str:
    """The whole scene as an MJCF string."""
    scene_cam_pos = np.array([0.62, 0.0, 0.62])
    scene_cam_target = np.array([-0.02, 0.0, 0.0])
    bx, by, bz = ROBOT_BASE
    tx, ty = TABLE_HALF_EXTENT
    objects = "".join(_object_body(c, s) for c in OBJECT_COLOURS for s in OBJECT_SHAPES)
    zones = "".join(_zone_body(c) for c in ZONE_COLOURS)
    return f"""
<mujoco model="vla_tabletop">
  <compiler angle="radian" autolimits="true"/>
  <!-- implicitfast keeps the stiff position servos stable at a 5 ms step; elliptic cones with
       a raised impratio make friction grasps hold without slip. -->
  <option timestep="{PHYSICS_TIMESTEP}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <!-- Policy cameras must be cheap: no shadow maps, no multisampling, coarse tessellation of
       capsules and cylinders (2.5x faster at 64 x 64 on this CPU). The pretty video renderer
       raises these at run time. -->
  <visual>
    <quality shadowsize="0" offsamples="0" numslices="10" numstacks="4"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.45 0.45 0.45" specular="0 0 0"/>
  </visual>
  <default>
    <!-- Stiff, well-damped servos: kp=2000, kv=60 track a moving target at ~90% of the
         commanded speed without overshoot (kp=400 without kv oscillated). The armature keeps
         the light wrist joints' servo frequency (sqrt(kp / inertia)) well below what the
         5 ms step integrates stably; with 0.05 grasped objects were flung out at 5 ms. -->
    <default class="arm">
      <joint damping="4" armature="0.3"/>
      <!-- Collision bits: arm links (contype 2, conaffinity 0) never collide with each other
           but do hit the table and objects, whose conaffinity includes bit 2. -->
      <geom type="capsule" rgba="0.75 0.75 0.78 1" contype="2" conaffinity="0" density="600"/>
      <position kp="2000" kv="60" forcerange="-300 300"/>
    </default>
    <!-- Fingers carry a large armature on purpose: MuJoCo's soft contacts penetrate in
         proportion to the acceleration pressing them together, and a 10 g finger squeezed
         by its servo sank centimetres into the object and squirted it out. With armature 1
         the same 6 N squeeze penetrates under a millimetre and the grasp holds. -->
    <default class="finger">
      <joint type="slide" damping="30" armature="1.0" range="0 {FINGER_TRAVEL}"/>
      <geom type="box" rgba="0.25 0.25 0.28 1" friction="1.5 0.02 0.001" condim="4" density="800" solref="0.01 1"/>
      <position kp="300" forcerange="-6 6" ctrlrange="0 {FINGER_TRAVEL}"/>
    </default>
    <default class="object">
      <geom friction="1.0 0.02 0.001" condim="4" density="1000" conaffinity="3"/>
    </default>
  </default>
  <asset>
    <texture name="sky" type="skybox" builtin="flat" rgb1="0.2 0.22 0.25" rgb2="0.2 0.22 0.25" width="32" height="32"/>
    <texture name="wood" type="2d" builtin="flat" rgb1="0.55 0.45 0.35" width="32" height="32"/>
    <material name="table" texture="wood" rgba="1 1 1 1"/>
  </asset>
  <worldbody>
    <light name="key" pos="0.3 -0.3 1.5" dir="-0.2 0.2 -1" diffuse="0.6 0.6 0.6" castshadow="false"/>
    <camera name="scene" pos="{scene_cam_pos[0]} {scene_cam_pos[1]} {scene_cam_pos[2]}"
            xyaxes="{_look_at_xyaxes(scene_cam_pos, scene_cam_target)}" fovy="42"/>
    <camera name="video" pos="0.75 -0.55 0.65"
            xyaxes="{_look_at_xyaxes(np.array([0.75, -0.55, 0.65]), np.array([-0.05, 0.0, 0.05]))}" fovy="45"/>
    <!-- The table top is a plane: plane-box and plane-cylinder collisions are analytic,
         several times cheaper than the general convex collider a box table needs. The
         third size is the render grid spacing: a fine grid costs thousands of quads. -->
    <geom name="table" type="plane" size="{tx} {ty} 0.25" material="table" friction="0.6 0.01 0.001"
          conaffinity="3"/>
    <body name="robot_base" pos="{bx} {by} {bz}" childclass="arm">
      <geom name="pedestal" type="cylinder" size="0.07 0.05" pos="0 0 0.05" rgba="0.3 0.3 0.32 1"/>
      <body name="link1" pos="0 0 0.1" gravcomp="1">
        <joint name="shoulder_yaw" axis="0 0 1" range="-2.9 2.9"/>
        <geom fromto="0 0 0 0 0 0.1" size="0.045"/>
        <body name="link2" pos="0 0 0.1" gravcomp="1">
          <joint name="shoulder_pitch" axis="0 1 0" range="-1.8 1.8"/>
          <geom fromto="0 0 0 0 0 0.34" size="0.04"/>
          <body name="link3" pos="0 0 0.34" gravcomp="1">
            <joint name="elbow_pitch" axis="0 1 0" range="-2.6 2.6"/>
            <geom fromto="0 0 0 0.32 0 0" size="0.035"/>
            <body name="link4" pos="0.32 0 0" gravcomp="1">
              <joint name="forearm_roll" axis="1 0 0" range="-2.9 2.9"/>
              <geom fromto="0 0 0 0.02 0 0" size="0.035" rgba="0.3 0.3 0.32 1"/>
              <body name="link5" pos="0 0 0" gravcomp="1">
                <joint name="wrist_pitch" axis="0 1 0" range="-2.2 2.2"/>
                <geom fromto="0 0 0 0 0 -0.05" size="0.03"/>
                <body name="link6" pos="0 0 -0.06" gravcomp="1">
                  <joint name="wrist_yaw" axis="0 0 1" range="-2.9 2.9"/>
                  <geom name="palm" type="box" size="0.025 0.065 0.012" pos="0 0 -0.012" rgba="0.25 0.25 0.28 1"/>
                  <camera name="wrist" pos="0.05 0 -0.02" xyaxes="0 -1 0 0.6 0 0.8" fovy="70"/>
                  <site name="grip_site" pos="0 0 -0.085" size="0.008" rgba="1 0 0 0" group="4"/>
                  <body name="finger_left" pos="0 0 -0.024" childclass="finger" gravcomp="1">
                    <joint name="finger_left" axis="0 1 0"/>
                    <geom name="finger_left_pad" size="0.014 0.006 0.035" pos="0 0.009 -0.035"/>
                  </body>
                  <body name="finger_right" pos="0 0 -0.024" childclass="finger" gravcomp="1">
                    <joint name="finger_right" axis="0 -1 0"/>
                    <geom name="finger_right_pad" size="0.014 0.006 0.035" pos="0 -0.009 -0.035"/>
                  </body>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>
    {objects}
    {zones}
  </worldbody>
  <contact>
    <exclude body1="link6" body2="finger_left"/>
    <exclude body1="link6" body2="finger_right"/>
    <exclude body1="finger_left" body2="finger_right"/>
  </contact>
  <actuator>
    {"".join(f'<position name="{j}" joint="{j}" class="arm"/>' for j in ARM_JOINTS)}
    <position name="finger_left" joint="finger_left" class="finger"/>
    <position name="finger_right" joint="finger_right" class="finger"/>
  </actuator>
</mujoco>
"""
