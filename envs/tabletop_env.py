"""The gymnasium environment: one task of the tabletop suite behind the observation/action
contract (docs/architecture.md).

Action (float32, 7-D, each element in [-1, 1]; out-of-range values are clipped, NaN/inf
raise ValueError naming the element):
    [dx, dy, dz]           end-effector translation in the world frame, x MAX_TRANSLATION m
    [droll, dpitch, dyaw]  end-effector rotation (axis-angle, world frame), x MAX_ROTATION rad
    gripper                absolute command: -1 = fully open, +1 = fully closed
                           (linear in between: the finger target opening is (1 - g) / 2 x max)
The world frame: x away from the robot base (towards the scene camera), y to the robot's
left, z up; the table top is z = 0.

Observation (gymnasium Dict):
    image        uint8 (H, W, 3) from the fixed ``scene`` camera, shadows/multisampling off
    wrist_image  uint8 (H, W, 3) from the wrist camera (only if ``cameras`` includes it)
    proprio      float32 (9,): grip-site position x, y, z (m); grip-site orientation as a
                 unit quaternion w, x, y, z (w >= 0); gripper opening between pads (m); its
                 rate of change (m/s, the finger joints' velocity: what a real gripper's
                 joint state reports; about 0 once the pads press on an object)
    instruction  str (gymnasium Text)

Control runs at 1 / (PHYSICS_TIMESTEP x CONTROL_SUBSTEPS) = 20 Hz.
"""

from __future__ import annotations

import string
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from envs.controller import DifferentialIK
from envs.instructions import INSTRUCTION_SPLITS, make_instruction
from envs.rendering import FrameRenderer
from envs.scene import (
    ARM_JOINTS,
    FINGER_TRAVEL,
    OBJECT_HALF_SIZE,
    PARK_POSITION,
    PHYSICS_TIMESTEP,
    build_mjcf,
)
from envs.tasks import make_task
from envs.vocabulary import check_name
from envs.world import World

MAX_TRANSLATION = 0.025  # m per control step at |action| = 1
MAX_ROTATION = 0.15  # rad per control step at |action| = 1
CONTROL_SUBSTEPS = int(round(0.05 / PHYSICS_TIMESTEP))
CONTROL_DT = PHYSICS_TIMESTEP * CONTROL_SUBSTEPS
_RAMP = np.arange(1, CONTROL_SUBSTEPS + 1) / CONTROL_SUBSTEPS
CAMERAS = ("scene", "wrist")
# dense: shaped closeness in [0, 1] + bonus per solved step | sparse: 1 per solved step |
# progress: the per-step change of that closeness + bonus per solved step
REWARD_TYPES = ("dense", "sparse", "progress")
ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
PROPRIO_NAMES = (
    *("ee_x", "ee_y", "ee_z", "ee_qw", "ee_qx", "ee_qy", "ee_qz"),
    *("gripper_opening", "gripper_opening_velocity"),
)
INSTRUCTION_CHARSET = string.ascii_letters + string.digits + " ,.:;'-!?"
MAX_INSTRUCTION_LENGTH = 256
IMAGE_SIZE_RANGE = (16, 512)
HIDDEN_GROUP = 5
# Home pose: arm leaning over the table, gripper pointing straight down.
HOME_QPOS = np.array([0.0, 0.3, 0.3, 0.0, -0.6, 0.0])
# Start poses: home plus uniform joint noise of this half-width (rad). Demonstrations may be
# collected with a wider spread so they cover states a slightly-off policy reaches.
DEFAULT_START_SPREAD = 0.05
MAX_START_SPREAD = 1.0
WRIST_YAW_SIGN = -1.0  # shoulder yaw turns the gripper; the wrist yaw turns it back
START_HEIGHT = (0.08, 0.30)  # m: not among the objects, not up against the scene camera
START_BOX_X, START_BOX_Y = (-0.20, 0.28), 0.28  # m: where a start may put the gripper


class TabletopEnv(gym.Env):
    """A MuJoCo tabletop task with a language instruction. See the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(round(1 / CONTROL_DT))}

    def __init__(
        self,
        task: str = "pick_place",
        instruction_split: str = "train",
        image_size: int = 64,
        cameras: tuple[str, ...] | list[str] = ("scene",),
        render_mode: str | None = None,
        render_size: int = 256,
        max_steps: int | None = None,
        reward_type: str = "dense",
        success_bonus: float = 1.0,
        terminate_on_success: bool = True,
        start_spread: float = DEFAULT_START_SPREAD,
    ):
        self.task = make_task(task)
        self.instruction_split = check_name("instruction split", instruction_split, INSTRUCTION_SPLITS)
        self.image_size = _check_image_size("image_size", image_size)
        self.render_size = _check_image_size("render_size", render_size)
        self.cameras = tuple(check_name("camera", c, CAMERAS) for c in cameras)
        if "scene" not in self.cameras:
            raise ValueError(f"cameras must include 'scene' (the policy camera); got {list(cameras)}")
        self.render_mode = check_name("render mode", render_mode, [None, *self.metadata["render_modes"]])
        self.reward_type = check_name("reward type", reward_type, REWARD_TYPES)
        self.success_bonus = float(success_bonus)
        self.terminate_on_success = terminate_on_success
        if not 0.0 <= start_spread <= MAX_START_SPREAD:
            raise ValueError(f"start_spread must be in [0, {MAX_START_SPREAD}] rad, got {start_spread}")
        self.start_spread = float(start_spread)
        self.max_steps = int(max_steps or self.task.max_steps)
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {max_steps}")

        self.model = mujoco.MjModel.from_xml_string(build_mjcf())
        self.data = mujoco.MjData(self.model)
        self.world = World(self.model, self.data)
        self.ik = DifferentialIK(self.model, "grip_site", ARM_JOINTS)
        self._arm_qpos = self.ik.qpos_idx
        self._arm_actuators = np.array([self.model.actuator(j).id for j in ARM_JOINTS])
        assert list(self._arm_actuators) == list(range(len(ARM_JOINTS))), "arm actuators must come first"
        finger_actuators = [self.model.actuator(f).id for f in ("finger_left", "finger_right")]
        assert finger_actuators == [len(ARM_JOINTS), len(ARM_JOINTS) + 1], "finger actuators must follow the arm's"
        self._finger_actuators = slice(len(ARM_JOINTS), len(ARM_JOINTS) + 2)  # a slice writes without an index array
        # Parked objects sleep (see _configure_objects); the arm and objects in use never do.
        self.model.opt.enableflags |= mujoco.mjtEnableBit.mjENBL_SLEEP
        # Remember every object's collision bits: parked objects get theirs switched off.
        self._collision_bits = {
            name: (self.model.geom_contype[g], self.model.geom_conaffinity[g])
            for name, g in self.world.object_geom.items()
        }
        self._policy_renderer: FrameRenderer | None = None
        # Parked objects and zones move to a geom group no camera draws (saves draw calls).
        self._scene_option = mujoco.MjvOption()
        self._scene_option.geomgroup[HIDDEN_GROUP] = False
        self._video_renderer: FrameRenderer | None = None

        image_space = gym.spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        spaces: dict[str, gym.Space] = {"image": image_space}
        if "wrist" in self.cameras:
            spaces["wrist_image"] = image_space
        spaces["proprio"] = gym.spaces.Box(-np.inf, np.inf, (len(PROPRIO_NAMES),), np.float32)
        spaces["instruction"] = gym.spaces.Text(MAX_INSTRUCTION_LENGTH, min_length=1, charset=INSTRUCTION_CHARSET)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (len(ACTION_NAMES),), np.float32)

        self.task_spec: dict[str, Any] = {}
        self.scene_objects: list[str] = []
        self.instruction = ""
        self._steps = 0
        self._potential = 0.0  # the last step's shaped closeness (reward_type="progress")
        self._proprio_buffer = np.zeros(len(PROPRIO_NAMES))

    # --- episode ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Options: ``task_spec`` (dict) fixes the target/destination instead of sampling
        them; ``instruction`` (str) replaces the generated instruction text. Any other key, a
        seed outside [0, 2**63 - 1] or an invalid instruction (empty included) raises ValueError."""
        _check_seed(seed)
        super().reset(seed=seed)
        options = _check_options(options)
        rng = self.np_random
        sampled = self.task.sample_spec(rng)  # drawn even when overridden: the same seed and
        # spec then give the same scene, so an instruction can be swapped on identical layouts
        self.task_spec = self.task.validate_spec(options["task_spec"]) if "task_spec" in options else sampled
        layout = self.task.sample_layout(self.task_spec, rng)
        self.scene_objects = sorted(layout.objects)

        self._configure_objects(layout.objects)  # before the reset, which puts parked ones to sleep
        mujoco.mj_resetData(self.model, self.data)
        arm_start = self._sample_arm_start(rng)
        self.data.qpos[self._arm_qpos] = arm_start
        self.data.ctrl[self._arm_actuators] = arm_start
        self.data.qpos[self.world.finger_qpos] = FINGER_TRAVEL
        self.data.ctrl[self._finger_actuators] = FINGER_TRAVEL
        self._place_objects(layout.objects)
        for colour, mocap in self.world.zone_mocap.items():
            used = colour in layout.zones
            self.data.mocap_pos[mocap] = (*layout.zones[colour], 0.001) if used else PARK_POSITION
            self.model.geom_group[self.world.zone_geom[colour]] = 0 if used else HIDDEN_GROUP
        mujoco.mj_forward(self.model, self.data)

        generated = make_instruction(self.task_spec, self.instruction_split, rng)  # drawn either way (same scene)
        self.instruction = self._check_instruction(options.get("instruction", generated))
        self._steps = 0
        self._potential = self.task.dense_reward(self.world, self.task_spec)
        return self._observation(), self._info(self.task.success(self.world, self.task_spec))

    def step(self, action):
        self.actuate(self._check_action(action))
        self._steps += 1

        success = self.task.success(self.world, self.task_spec)
        if self.reward_type == "sparse":
            reward = float(success)
        else:
            shaping = self.task.dense_reward(self.world, self.task_spec)
            if self.reward_type == "progress":
                # Potential-based shaping (Ng et al., 1999): pay the change in closeness, so
                # an episode's return is (final - initial closeness) + the bonus. Hovering
                # earns nothing; only getting closer and solving the task do.
                shaping, self._potential = shaping - self._potential, shaping
            reward = shaping + self.success_bonus * success
        terminated = bool(success and self.terminate_on_success)
        truncated = self._steps >= self.max_steps
        return self._observation(), reward, terminated, truncated, self._info(success)

    def actuate(self, action: np.ndarray) -> None:
        """Apply one (already validated and clipped) action and advance the physics one
        control period. ``step`` = ``actuate`` + success/reward + rendering."""
        model, data = self.model, self.data
        arm_ctrl = data.ctrl[: len(ARM_JOINTS)]  # a view: the arm actuators come first
        start = arm_ctrl.copy()
        goal = self.ik.joint_targets(data, start, action[:3] * MAX_TRANSLATION, action[3:6] * MAX_ROTATION)
        data.ctrl[self._finger_actuators] = (1.0 - action[6]) / 2.0 * FINGER_TRAVEL
        # Ramp the arm targets across the substeps: a step change every 50 ms accelerated
        # the gripper at >10 g and shook grasped objects loose (measured ~14 mm of slip).
        for target in start + _RAMP[:, None] * (goal - start):
            arm_ctrl[:] = target
            mujoco.mj_step(model, data)

    def _sample_arm_start(self, rng: np.random.Generator) -> np.ndarray:
        """Home pose plus uniform joint noise of half-width ``start_spread``, redrawn while the
        gripper would start low over the table or outside the reachable box (at the default
        spread the first draw always passes, so seeds give the same scenes as before)."""
        for _ in range(100):
            arm_start = HOME_QPOS + rng.uniform(-self.start_spread, self.start_spread, size=HOME_QPOS.shape)
            if self.start_spread > DEFAULT_START_SPREAD:
                # Spread the position (shoulder and elbow) but keep the gripper near vertical:
                # the wrist takes back most of the pitch and yaw the larger moves add.
                extra = arm_start - HOME_QPOS
                wrist_noise = np.clip(extra[3:], -DEFAULT_START_SPREAD, DEFAULT_START_SPREAD)
                arm_start[3] = HOME_QPOS[3] + wrist_noise[0]
                arm_start[4] = HOME_QPOS[4] - extra[1] - extra[2] + wrist_noise[1]
                arm_start[5] = HOME_QPOS[5] + WRIST_YAW_SIGN * extra[0] + wrist_noise[2]
            self.data.qpos[self._arm_qpos] = arm_start
            mujoco.mj_kinematics(self.model, self.data)
            x, y, z = self.data.site_xpos[self.world.grip_site]
            inside = START_BOX_X[0] <= x <= START_BOX_X[1] and abs(y) <= START_BOX_Y
            if inside and START_HEIGHT[0] <= z <= START_HEIGHT[1]:
                return arm_start
        return HOME_QPOS.copy()

    # --- rendering -------------------------------------------------------------------------
    def render(self) -> np.ndarray | None:
        """A larger frame with shadows and anti-aliasing from the ``video`` camera (for videos)."""
        if self.render_mode != "rgb_array":
            return None
        if self._video_renderer is None:
            self._video_renderer = self._make_renderer(self.render_size, pretty=True)
        self.model.light_castshadow[:] = True  # read by the scene update, not the draw
        try:
            return self._video_renderer.render(self.data, "video", self._scene_option)
        finally:
            self.model.light_castshadow[:] = False

    def close(self) -> None:
        for renderer in (self._policy_renderer, self._video_renderer):
            if renderer is not None:
                renderer.close()
        self._policy_renderer = self._video_renderer = None

    # --- helpers ---------------------------------------------------------------------------
    def _make_renderer(self, size: int, pretty: bool) -> FrameRenderer:
        """A renderer whose GL context fits its use.

        The context takes its offscreen buffer size, shadow map, multisampling and
        tessellation from the model when it is created. The policy camera gets a buffer of
        exactly its size (clearing a 640 x 640 buffer for a 64 x 64 frame cost ~25%), no
        shadows, no multisampling, coarse tessellation and no skybox; the video camera
        gets the pretty settings. The model is restored afterwards.
        """
        vis = self.model.vis
        saved = (vis.global_.offwidth, vis.global_.offheight, vis.quality.shadowsize, vis.quality.offsamples)
        saved_tessellation = (vis.quality.numslices, vis.quality.numstacks)
        vis.global_.offwidth = vis.global_.offheight = size
        if pretty:
            vis.quality.shadowsize, vis.quality.offsamples = 2048, 4
            vis.quality.numslices, vis.quality.numstacks = 28, 16
        renderer = FrameRenderer(self.model, size)
        vis.global_.offwidth, vis.global_.offheight, vis.quality.shadowsize, vis.quality.offsamples = saved
        vis.quality.numslices, vis.quality.numstacks = saved_tessellation
        if not pretty:
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
        return renderer

    def _configure_objects(self, objects: dict[str, tuple[float, float, float]]) -> None:
        """This episode's model settings for every object. On the table: collides, feels
        gravity, drawn, never sleeps. Parked: floats (gravity compensated) out of sight,
        collides with nothing and sleeps from the next ``mj_resetData``, so MuJoCo skips its
        dynamics (the five parked objects' 30 dofs were a quarter of a substep). Objects on
        the table must stay awake: one that fell asleep at rest would wait for a touch to
        move, and the physics would differ from today's."""
        for name, geom in self.world.object_geom.items():
            body = self.world.object_body[name]
            used = name in objects
            contype, conaffinity = self._collision_bits[name] if used else (0, 0)
            self.model.geom_contype[geom], self.model.geom_conaffinity[geom] = contype, conaffinity
            self.model.body_gravcomp[body] = 0.0 if used else 1.0
            self.model.geom_group[geom] = 0 if used else HIDDEN_GROUP
            policy = mujoco.mjtSleepPolicy.mjSLEEP_NEVER if used else mujoco.mjtSleepPolicy.mjSLEEP_INIT
            self.model.tree_sleep_policy[self.model.body_treeid[body]] = policy

    def _place_objects(self, objects: dict[str, tuple[float, float, float]]) -> None:
        for name in self.world.object_geom:
            adr = self.world.object_qpos[name]
            if name in objects:
                x, y, yaw = objects[name]
                self.data.qpos[adr : adr + 7] = (x, y, OBJECT_HALF_SIZE, np.cos(yaw / 2), 0, 0, np.sin(yaw / 2))
            else:
                self.data.qpos[adr : adr + 7] = (*PARK_POSITION, 1, 0, 0, 0)

    def _observation(self) -> dict[str, Any]:
        if self._policy_renderer is None:
            self._policy_renderer = self._make_renderer(self.image_size, pretty=False)
        obs: dict[str, Any] = {}
        for camera in self.cameras:
            image = self._policy_renderer.render(self.data, camera, self._scene_option)
            obs["image" if camera == "scene" else f"{camera}_image"] = image
        obs["proprio"] = self._proprio()
        obs["instruction"] = self.instruction
        return obs

    def _proprio(self) -> np.ndarray:
        """The proprio vector (PROPRIO_NAMES), assembled in float64 in place, returned as a new
        float32 array."""
        proprio, grip = self._proprio_buffer, self.world.grip_site
        proprio[:3] = self.data.site_xpos[grip]
        quat = proprio[3:7]
        mujoco.mju_mat2Quat(quat, self.data.site_xmat[grip])
        if quat[0] < 0:  # q and -q are the same rotation: report the one with w >= 0
            quat *= -1.0
        proprio[7] = self.world.gripper_opening()
        proprio[8] = self.world.gripper_opening_velocity()
        return proprio.astype(np.float32)

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "is_success": bool(success),
            "task": self.task.name,
            "instruction": self.instruction,
            "split": self.instruction_split,
            "task_spec": dict(self.task_spec),
            "scene_objects": list(self.scene_objects),  # "colour_shape" names on the table
            # privileged (not an observation): target and destination centres, metres
            "key_positions": self.task.key_positions(self.world, self.task_spec),
        }

    @staticmethod
    def _check_action(action) -> np.ndarray:
        try:
            action = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"action must be 7 numbers {list(ACTION_NAMES)}, got {_short(action)}") from None
        if action.shape != (len(ACTION_NAMES),):
            raise ValueError(f"action must have shape (7,) {list(ACTION_NAMES)}, got shape {action.shape}")
        if not np.isfinite(action).all():
            names = [f"{ACTION_NAMES[i]} (index {i}) = {action[i]}" for i in np.flatnonzero(~np.isfinite(action))]
            raise ValueError(f"action has non-finite elements: {', '.join(names)}")
        return np.minimum(np.maximum(action, -1.0), 1.0)  # np.clip's values at a third of its overhead

    @staticmethod
    def _check_instruction(text: Any) -> str:
        if not isinstance(text, str):
            raise ValueError(f"instruction must be a string, got {type(text).__name__} {_short(text)}")
        if not 1 <= len(text) <= MAX_INSTRUCTION_LENGTH:
            raise ValueError(f"instruction must have 1..{MAX_INSTRUCTION_LENGTH} characters, got {len(text)}")
        bad = sorted(set(text) - set(INSTRUCTION_CHARSET))
        if bad:
            shown = ", ".join(repr(c) for c in bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
            raise ValueError(f"instruction has characters outside the allowed set {INSTRUCTION_CHARSET!r}: {shown}")
        return text


RESET_OPTIONS = ("task_spec", "instruction")
MAX_SEED = 2**63 - 1


def _short(value: Any, limit: int = 60) -> str:
    """A value's repr cut to ``limit`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_seed(seed: Any) -> None:
    if seed is not None and (
        not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED
    ):
        raise ValueError(f"seed must be None or an integer in [0, 2**63 - 1], got {_short(seed)}")


def _check_options(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError(f"reset options must be a dict with keys {list(RESET_OPTIONS)}, got {_short(options)}")
    unknown = [k for k in options if k not in RESET_OPTIONS]
    if unknown:
        raise ValueError(f"unknown reset options {_short(unknown)}: allowed are {list(RESET_OPTIONS)}")
    return options


def _check_image_size(name: str, size: int) -> int:
    lo, hi = IMAGE_SIZE_RANGE
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not lo <= size <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {size!r}")
    return int(size)
