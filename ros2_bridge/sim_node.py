"""The simulator node: the MuJoCo tabletop env as a ROS 2 robot.

``python -m ros2_bridge.sim_node --ros-args -p mode:=realtime -p task:=reach``

Publishes camera frames, joint states, the end-effector pose and the instruction (``""`` when
a goal ends, so the policy holds still); applies the commands it receives through the safety
filter; serves the ``execute_instruction`` action (goal: instruction/task/seed; feedback:
step, last action, elapsed time; result: success, steps, per-step round trip). The robot
moves only while a goal executes.

A goal ends SUCCEEDED at success or the time limit, CANCELED on cancel, and ABORTED, with the
reason as the result's message, when the robot cannot be driven: the emergency stop latched,
the policy said it cannot act on the instruction, the policy node is gone from the ROS graph
(no publisher on the command topic), or no command came for ``abort_after`` seconds.

Two modes:
- ``realtime``: steps at ``rate_hz`` (20 Hz, the env's control rate) with the freshest
  command; the watchdog stops motion when no command arrived within ``watchdog_timeout``,
  and only a command answering a later observation moves the robot again.
- ``lockstep``: steps exactly once per command pair stamped with the latest observation, so
  an episode is the same sequence of observations and actions as an in-process rollout.

All env calls run on one robot thread: MuJoCo's EGL context belongs to the thread that
created it, and ROS callbacks (on executor threads) only store messages and wake it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ros2_bridge import exit_quietly_on_sigint, require_ros

if __name__ == "__main__":
    exit_quietly_on_sigint()  # before the imports: MuJoCo and the env take seconds to load

import numpy as np  # noqa: E402

require_ros()  # before any ROS import: one clear message without the ros2 extra

import gymnasium as gym  # noqa: E402
from action_msgs.msg import GoalStatus  # noqa: E402
from geometry_msgs.msg import PoseStamped, TwistStamped  # noqa: E402
from rclpy.action import ActionServer, CancelResponse, GoalResponse  # noqa: E402
from rclpy.callback_groups import ReentrantCallbackGroup  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from envs import TASK_NAMES  # noqa: E402
from envs.instructions import INSTRUCTION_SPLITS  # noqa: E402
from envs.scene import ARM_JOINTS, FINGER_JOINTS  # noqa: E402
from envs.tasks import resolve_tasks  # noqa: E402
from ros2_bridge import messages as m  # noqa: E402
from ros2_bridge import ros  # noqa: E402
from ros2_bridge.interfaces import load_action  # noqa: E402
from ros2_bridge.safety import CONTROL_DT, SafetyFilter, SafetyLimits, ThrottledLog  # noqa: E402

ExecuteInstruction = load_action()
_ENV_IDS = {name: env_id for env_id, name in TASK_NAMES.items()}


@dataclass
class Episode:
    """One executing goal; the robot thread fills it in, the action callback waits on it."""

    task_id: str
    split: str
    seed: int | None
    instruction: str
    max_steps: int
    goal_handle: object
    started: float = field(default_factory=time.monotonic)
    steps: int = 0
    success: bool = False
    round_trip: list[float] = field(default_factory=list)
    waiting_for_ack: bool = False
    cancel_requested: bool = False
    aborted: bool = False  # ends ABORTED (e-stop, policy out of scope, gone or stalled, sim error), message says why
    message: str = ""
    finished: threading.Event = field(default_factory=threading.Event)


class SimNode(Node):
    def __init__(self) -> None:
        super().__init__("vla_sim")
        self.task_id = _ENV_IDS[resolve_tasks([self.declare_parameter("task", "reach").value])[0]]
        self.split = self.declare_parameter("split", "train").value
        self.image_size = int(self.declare_parameter("image_size", 64).value)
        self.cameras = tuple(self.declare_parameter("cameras", "scene").value.split(","))  # "scene" or "scene,wrist"
        self.mode = self.declare_parameter("mode", "realtime").value
        self.rate_hz = float(self.declare_parameter("rate_hz", 1.0 / CONTROL_DT).value)
        timeout = float(self.declare_parameter("watchdog_timeout", 2 * CONTROL_DT).value)
        # Off only to compare with in-process rollouts, whose env has no workspace box.
        self.workspace_clamp = bool(self.declare_parameter("workspace_clamp", True).value)
        if self.mode not in ("realtime", "lockstep"):
            raise ValueError(f"mode must be 'realtime' or 'lockstep', got {self.mode!r}")
        # A goal aborts when no command came for this long. Realtime: 1 s is 20 control periods,
        # 10 watchdog timeouts; a live policy answers every 50 ms. Lock-step: the sim waits for
        # each answer and a slow inference is no fault (a 2.1-s one was measured on a loaded
        # machine), so only a policy silent for 30 s counts as stalled.
        default_abort = ros.ABORT_AFTER_REALTIME if self.mode == "realtime" else ros.ABORT_AFTER_LOCKSTEP
        self.abort_after = float(self.declare_parameter("abort_after", default_abort).value)
        if not self.abort_after > 0:
            raise ValueError(f"abort_after must be a positive number of seconds, got {self.abort_after}")
        self.safety = SafetyFilter(SafetyLimits(watchdog_timeout=timeout), log=self.get_logger().error)
        self.report = ThrottledLog(self.get_logger().error)
        self.events_pub = self.create_publisher(String, ros.SAFETY_EVENTS, ros.STREAM_QOS)

        self._cond = threading.Condition()
        self._episode: Episode | None = None
        self._new_episode: Episode | None = None
        self._early_cancels: set[bytes] = set()  # goal ids cancelled before their _execute ran
        self._commands: dict[int, dict[str, object]] = {}  # stamp -> {"twist", "gripper"}
        self._latest: dict[str, object] = {}  # realtime: the freshest twist and gripper command
        # Realtime: once the watchdog has stopped the robot, or a new goal has started, a command
        # answering an observation published before then cannot move it. A dead policy's last
        # commands can sit in the executor's queue on a loaded machine and arrive late (seen in CI).
        self._stale_up_to: int | None = None  # stamp key of the last observation before the stop or goal
        self._sent: dict[int, float] = {}  # stamp -> monotonic publish time of that observation
        self._obs_key: int | None = None
        self._acked: str | None = None  # the policy's last instruction acknowledgement
        # The policy on the ROS graph: once a publisher of the command topic was seen, its absence
        # means the policy node exited or DDS declared it dead (a crashed node after its 20-s lease).
        self._policy_seen = False
        self._policy_gone = False
        self._graph_checked = 0.0
        self._envs: dict[tuple[str, str], gym.Env] = {}
        self.env: gym.Env | None = None
        self.obs: dict | None = None
        self._running = True

        self.image_pub = self.create_publisher(Image, ros.IMAGE, ros.STREAM_QOS)
        self.wrist_pub = (
            self.create_publisher(Image, ros.WRIST_IMAGE, ros.STREAM_QOS) if "wrist" in self.cameras else None
        )
        self.joints_pub = self.create_publisher(JointState, ros.JOINT_STATES, ros.STREAM_QOS)
        self.pose_pub = self.create_publisher(PoseStamped, ros.EE_POSE, ros.STREAM_QOS)
        self.instruction_pub = self.create_publisher(String, ros.INSTRUCTION, ros.LATCHED_QOS)
        self.create_subscription(TwistStamped, ros.CMD_TWIST, lambda msg: self._on_command("twist", msg), 50)
        self.create_subscription(JointState, ros.CMD_GRIPPER, lambda msg: self._on_command("gripper", msg), 50)
        self.create_subscription(String, ros.INSTRUCTION_ACK, self._on_ack, ros.LATCHED_QOS)
        self.create_subscription(String, ros.POLICY_STATUS, self._on_policy_status, ros.STREAM_QOS)
        ros.serve_estop(self, self.safety, "sim", on_latch=self._wake)
        self.action_server = ActionServer(
            self,
            ExecuteInstruction,
            ros.EXECUTE_INSTRUCTION,
            execute_callback=self._execute,
            goal_callback=self._on_goal,
            cancel_callback=self._on_cancel,
            callback_group=ReentrantCallbackGroup(),
        )
        self.robot = threading.Thread(target=self._robot_loop, name="robot", daemon=True)
        self.robot.start()
        cameras = "+".join(self.cameras)
        self.get_logger().info(f"simulator ready: {self.task_id}, {self.mode}, {cameras} at {self.image_size} px")

    # --- ROS callbacks (executor threads): store and wake the robot thread ---------------------
    def _on_command(self, kind: str, msg) -> None:
        key, now = m.stamp_key(msg.header.stamp), time.monotonic()
        with self._cond:
            if self.mode == "realtime":
                if self._stale_up_to is not None and key <= self._stale_up_to:
                    return  # answers an observation from before the watchdog stop: stale
                self._latest[kind] = msg
            elif key == self._obs_key:  # lock-step: only commands answering the current observation
                self._commands.setdefault(key, {})[kind] = msg
            else:
                return
            episode = self._episode
            if kind == "twist" and key in self._sent and episode is not None:
                episode.round_trip.append(now - self._sent.pop(key))
            self.safety.feed(now)
            self._cond.notify_all()

    def _wake(self) -> None:
        """The robot thread re-checks its goal now (an e-stop latched)."""
        with self._cond:
            self._cond.notify_all()

    def _on_ack(self, msg: String) -> None:
        with self._cond:
            self._acked = msg.data
            self._cond.notify_all()

    def _on_policy_status(self, msg: String) -> None:
        """The policy stopped on an instruction it cannot act on: end the goal, ABORTED, with its words."""
        if not msg.data.startswith(ros.OUT_OF_SCOPE):
            return
        with self._cond:
            episode = self._episode
            if episode is not None and not episode.cancel_requested:
                episode.aborted = True
                episode.message = msg.data
                self._cond.notify_all()

    def _on_goal(self, goal) -> GoalResponse:
        try:
            self._episode_from_goal(goal, None)
        except ValueError as error:
            self.get_logger().error(f"goal rejected: {error}")
            return GoalResponse.REJECT
        with self._cond:
            if self._episode is not None or self._new_episode is not None:
                self.get_logger().error("goal rejected: another instruction is executing")
                return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _on_cancel(self, goal_handle) -> CancelResponse:
        with self._cond:
            matched = False
            for episode in (self._episode, self._new_episode):
                if episode is not None and episode.goal_handle is goal_handle:
                    episode.cancel_requested = matched = True
            if not matched and goal_handle.status == GoalStatus.STATUS_ACCEPTED:
                # accepted but not yet handed to _execute (which then ends it at once)
                self._early_cancels.add(bytes(goal_handle.goal_id.uuid))
            self._cond.notify_all()
        return CancelResponse.ACCEPT

    def _execute(self, goal_handle):
        """Hand the goal to the robot thread and wait until its episode ends."""
        episode = self._episode_from_goal(goal_handle.request, goal_handle)
        with self._cond:
            uuid = bytes(goal_handle.goal_id.uuid)
            episode.cancel_requested = uuid in self._early_cancels or goal_handle.is_cancel_requested
            self._early_cancels.discard(uuid)
            self._new_episode = episode
            self._cond.notify_all()
        episode.finished.wait()
        result = ExecuteInstruction.Result(
            success=episode.success,
            steps=episode.steps,
            instruction=episode.instruction,
            message=episode.message,
            round_trip=episode.round_trip,
        )
        if episode.aborted:
            goal_handle.abort()
        elif episode.cancel_requested:
            deadline = time.monotonic() + 1.0  # the server marks the goal CANCELING after our callback
            while not goal_handle.is_cancel_requested and time.monotonic() < deadline:
                time.sleep(0.001)
            goal_handle.canceled()
        else:
            goal_handle.succeed()
        return result

    def _episode_from_goal(self, goal, goal_handle) -> Episode:
        task = goal.task or self.task_id
        task_id = _ENV_IDS[resolve_tasks([task])[0]]  # ValueError lists the valid names
        split = goal.split or self.split
        if split not in INSTRUCTION_SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {list(INSTRUCTION_SPLITS)}")
        instruction = m.check_instruction(goal.instruction) if goal.instruction else ""
        seed = None if goal.seed < 0 else int(goal.seed)
        return Episode(task_id, split, seed, instruction, int(goal.max_steps), goal_handle)

    # --- the robot thread -----------------------------------------------------------------
    def _robot_loop(self) -> None:
        try:
            self._use_env(self.task_id, self.split)
            self.obs, _ = self.env.reset(seed=0)
            next_tick = time.monotonic()
            while self._running:
                if self.mode == "realtime":
                    next_tick += 1.0 / self.rate_hz
                    time.sleep(max(0.0, next_tick - time.monotonic()))
                    next_tick = max(next_tick, time.monotonic() - 1.0 / self.rate_hz)  # no catch-up bursts
                    self._start_pending_episode()
                    self._realtime_tick()
                else:
                    self._lockstep_tick()
        except Exception as error:  # a robot that cannot step must say why, and end its goal
            if not self._running:
                return  # shutting down: the node's publishers may be gone already
            self.get_logger().fatal(f"robot loop stopped: {type(error).__name__}: {error}")
            with self._cond:
                for episode in (self._episode, self._new_episode):
                    if episode is not None:
                        episode.message = f"{ros.ABORT_SIM_ERROR}{type(error).__name__}: {error}"
                        episode.aborted = True
                        episode.finished.set()
            raise

    def _use_env(self, task_id: str, split: str) -> None:
        key = (task_id, split)
        if key not in self._envs:
            self._envs[key] = gym.make(
                task_id, instruction_split=split, image_size=self.image_size, cameras=self.cameras
            )
        self.env = self._envs[key]

    def _start_pending_episode(self) -> None:
        with self._cond:
            episode, self._new_episode = self._new_episode, None
        if episode is None:
            return
        options = {"instruction": episode.instruction} if episode.instruction else None
        try:
            self._use_env(episode.task_id, episode.split)
            self.obs, info = self.env.reset(seed=episode.seed, options=options)
        except ValueError as error:  # the env refused the goal: abort it, keep the robot loop alive
            with self._cond:
                self._episode = episode
            self._finish(episode, f"{ros.ABORT_SIM_ERROR}the env refused the goal: {error}", aborted=True)
            return
        episode.instruction = info["instruction"]
        episode.max_steps = min(episode.max_steps or self.env.unwrapped.max_steps, self.env.unwrapped.max_steps)
        episode.started = time.monotonic()
        self.safety.last_gripper = -1.0  # the env resets with the gripper open
        with self._cond:
            self._episode = episode
            self._commands.clear()
            self._latest.clear()
            if self.mode == "realtime" and self._obs_key is not None:
                # Only answers to this goal's own observations drive it: a command queued for an
                # earlier one (a dead policy's, or one sent before a stop) cannot restart the robot.
                self._stale_up_to = self._obs_key
            # Lock-step: always wait for this goal's acknowledgement. The "" sent when the last goal
            # ended may reach the policy after this goal's first frame otherwise (topics are not
            # ordered with respect to each other), and it would answer that frame holding still.
            episode.waiting_for_ack = self.mode == "lockstep"
            self._acked = None
        self.instruction_pub.publish(String(data=episode.instruction))
        self.get_logger().info(f"executing {episode.task_id} seed {episode.seed}: {episode.instruction!r}")

    def _lockstep_tick(self) -> None:
        start = ack_arrived = complete = False
        with self._cond:
            self._cond.wait_for(self._lockstep_ready, timeout=0.1)
            episode = self._episode
            if episode is None:
                start = self._new_episode is not None
            else:
                ack_arrived = episode.waiting_for_ack and self._acked == episode.instruction
                episode.waiting_for_ack = episode.waiting_for_ack and not ack_arrived
                pair = self._commands.get(self._obs_key, {})
                complete = len(pair) == 2
                if complete:
                    del self._commands[self._obs_key]
        self._check_graph()
        if episode is None:
            if start:
                self._start_pending_episode()
        elif episode.cancel_requested:
            self._finish(episode, "canceled")
        elif (reason := self._abort_reason(episode)) is not None:
            self._finish(episode, reason, aborted=True)
        elif ack_arrived:  # the policy now holds this episode's instruction: show it the scene
            self._publish_observation()
        elif complete:
            self._apply(self._action_from(pair))

    def _lockstep_ready(self) -> bool:
        episode = self._episode
        if episode is None:
            return self._new_episode is not None
        if (
            episode.cancel_requested
            or episode.aborted
            or self.safety.estopped
            or (episode.waiting_for_ack and self._acked == episode.instruction)
        ):
            return True
        return len(self._commands.get(self._obs_key, {})) == 2

    def _realtime_tick(self) -> None:
        with self._cond:
            episode = self._episode
            pair = dict(self._latest)
        self._check_graph()
        if episode is not None and episode.cancel_requested:
            self._finish(episode, "canceled")
            episode = None
        elif episode is not None and (reason := self._abort_reason(episode)) is not None:
            self._finish(episode, reason, aborted=True)
            episode = None
        if episode is None:  # idle: hold still, keep the camera streaming
            self.obs, *_ = self.env.step(self.safety.stop())
            self._publish_observation()
            return
        self._apply(self._action_from(pair) if len(pair) == 2 else None)
        if self._episode is not None:
            self._publish_observation()

    def _action_from(self, pair: dict) -> np.ndarray | None:
        try:
            return m.action_from_msgs(pair["twist"], pair["gripper"])
        except m.MalformedMessage as error:
            self.report(error.kind, f"malformed command replaced by a stop: {error}")
            return None

    def _apply(self, command: np.ndarray | None) -> None:
        """One control step of the current episode with the safety-filtered command."""
        episode = self._episode
        if command is None:  # no usable command yet (or a malformed one, already reported)
            action = self.safety.stop()
        else:
            action = self._filter(command, self.obs["proprio"])
        self.obs, _, terminated, truncated, info = self.env.step(action)
        episode.steps += 1
        episode.success = bool(info["is_success"])
        feedback = ExecuteInstruction.Feedback(step=episode.steps, elapsed=time.monotonic() - episode.started)
        feedback.last_action = action.astype(np.float32)
        episode.goal_handle.publish_feedback(feedback)
        if terminated or truncated or episode.steps >= episode.max_steps:
            self._finish(episode, "success" if episode.success else "time limit")
        elif self.mode == "lockstep":
            self._publish_observation()

    def _abort_reason(self, episode: Episode) -> str | None:
        """Why the goal cannot go on (it then ends ABORTED with this message), or None."""
        if episode.aborted:  # the policy said it cannot act on the instruction
            return episode.message
        if self.safety.estopped:
            return (
                f"{ros.ABORT_ESTOP}latched by the {self.safety.estop_reason}; the robot stays stopped until "
                "/vla_sim/reset_estop and /vla_policy/reset_estop are called"
            )
        if self._policy_gone:
            return f"{ros.ABORT_POLICY_GONE}nothing publishes {ros.CMD_TWIST} any more (the node exited or crashed)"
        last = self.safety.watchdog.last_fed
        silent = time.monotonic() - max(episode.started, last if last is not None else 0.0)
        if silent > self.abort_after:
            return (
                f"{ros.ABORT_NO_COMMAND}the policy sent none for {silent:.1f} s (abort_after {self.abort_after:g} s): "
                "its node is dead or stalled"
            )
        return None

    def _check_graph(self) -> None:
        """Is the policy on the ROS graph? A clean exit shows at once, a crash after DDS's lease."""
        now = time.monotonic()
        if now - self._graph_checked < 0.1:  # at most 10 graph queries a second
            return
        self._graph_checked = now
        publishers = self.count_publishers(ros.CMD_TWIST)
        self._policy_seen = self._policy_seen or publishers > 0
        self._policy_gone = self._policy_seen and publishers == 0

    def _finish(self, episode: Episode, message: str, aborted: bool = False) -> None:
        with self._cond:
            self._episode = None
            self._obs_key = None
            self._commands.clear()
            self._sent.clear()
        episode.message = message
        episode.aborted = aborted
        # No goal executes: the policy must hold still (an idle realtime sim keeps streaming frames).
        self.instruction_pub.publish(String(data=""))
        if aborted:  # two calls: an rclpy call site may not change its severity
            self.get_logger().warning(f"goal ABORTED after {episode.steps} steps: {message}")
        else:
            self.get_logger().info(f"episode ended after {episode.steps} steps: {message}")
        episode.finished.set()

    def _publish_observation(self) -> None:
        stamp = self.get_clock().now().to_msg()
        key = m.stamp_key(stamp)
        env = self.env.unwrapped
        names = [*ARM_JOINTS, *FINGER_JOINTS, m.GRIPPER_JOINT]
        qpos_idx = [*env.ik.qpos_idx, *env.world.finger_qpos]
        dof_idx = [*env.ik.dof_idx, *env.world.finger_dof]
        positions = [*env.data.qpos[qpos_idx], float(self.obs["proprio"][7])]
        velocities = [*env.data.qvel[dof_idx], float(self.obs["proprio"][8])]
        with self._cond:
            self._obs_key = key
            self._sent[key] = time.monotonic()
            if len(self._sent) > 100:  # realtime: commands for old observations may never come
                self._sent.pop(next(iter(self._sent)))
        self.joints_pub.publish(m.joint_state_msg(names, positions, velocities, stamp))
        self.pose_pub.publish(m.pose_msg(self.obs["proprio"], stamp))
        if self.wrist_pub is not None:
            self.wrist_pub.publish(m.image_msg(self.obs["wrist_image"], stamp, ros.WRIST_CAMERA_FRAME))
        self.image_pub.publish(m.image_msg(self.obs["image"], stamp))

    def _filter(self, command: np.ndarray, proprio: np.ndarray) -> np.ndarray:
        """The safety filter, announcing every change it makes on the events topic."""
        # Lock-step: simulated time stands still between commands, so a command is fresh when it
        # arrives (judged then, not after the robot thread was scheduled on a busy machine).
        now = self.safety.watchdog.last_fed if self.mode == "lockstep" else None
        action, why = self.safety.filter(command, proprio[:3] if self.workspace_clamp else None, now)
        if why is not None:
            self.events_pub.publish(String(data=f"sim: {why}"))
        if why == "watchdog" and self.mode == "realtime":
            # The moment of the stop: what was answered before it is stale. Emptying the latest
            # pair keeps the robot still without the filter until two fresh commands arrive, so
            # this runs once per stop.
            with self._cond:
                self._stale_up_to = self._obs_key
                self._latest.clear()
        return action

    def shutdown(self) -> None:
        """End the executing goal (ABORTED) and the robot thread, before the node is destroyed."""
        self._running = False
        with self._cond:
            self._cond.notify_all()
            for episode in (self._episode, self._new_episode):
                if episode is not None:
                    episode.message = f"{ros.ABORT_SIM_ERROR}the simulator shut down"
                    episode.aborted = True
                    episode.finished.set()
        self.robot.join(timeout=5.0)  # its last tick may still publish: not on a destroyed node


def main() -> None:
    """Run the node until Ctrl-C (exit code 0); a bad parameter is one line, exit code 2."""
    ros.run_node("vla_sim", SimNode, threads=3, before_close=lambda node: node.shutdown())


if __name__ == "__main__":
    main()
