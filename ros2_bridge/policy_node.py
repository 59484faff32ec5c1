"""The policy node: ``vla.load_policy`` behind ROS 2 topics.

``python -m ros2_bridge.policy_node --ros-args -p checkpoint:=<run dir or .pt> -p rate_hz:=20.0``

Subscribes to the camera image, joint states, end-effector pose (paired by header stamp
into one observation) and the instruction; publishes the safety-filtered end-effector
command (TwistStamped + gripper) stamped with the observation it answers.

- ``rate_hz > 0``: commands at a fixed rate from the freshest observation; the watchdog
  replaces them by a stop when no fresh observation arrived within ``watchdog_timeout``.
- ``rate_hz = 0``: one command per new observation (the lock-step evaluation).

An empty instruction is the simulator's "no goal executes" (it publishes one when a goal ends):
the node then publishes stops only. An emergency stop latches on the node's own subscription
to ``/vla/estop``, handled on a second executor thread, so it takes effect while an inference
is running; no moving command is published after it latched.

Malformed input (wrong image size or encoding, bad instructions, inconsistent state) is
dropped with one clear error line per kind; the node keeps serving. Ctrl-C (SIGINT) stops it
with exit code 0 at any time, also while it is loading.
"""

from __future__ import annotations

import sys
import threading
import time

from ros2_bridge import exit_quietly_on_sigint, require_ros

if __name__ == "__main__":
    exit_quietly_on_sigint()  # before the imports: torch alone takes seconds to load

import numpy as np  # noqa: E402

require_ros()  # before any ROS import: one clear message without the ros2 extra

from geometry_msgs.msg import PoseStamped, TwistStamped  # noqa: E402
from rcl_interfaces.msg import ParameterDescriptor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Float64, String  # noqa: E402

from ros2_bridge import messages as m  # noqa: E402
from ros2_bridge import ros  # noqa: E402
from ros2_bridge.safety import CONTROL_DT, SafetyFilter, SafetyLimits, ThrottledLog  # noqa: E402
from vla import load_policy  # noqa: E402


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("vla_policy")
        checkpoint = self.declare_parameter("checkpoint", "").value
        device = self.declare_parameter("device", "cpu").value
        self.rate_hz = float(self.declare_parameter("rate_hz", 1.0 / CONTROL_DT).value)
        timeout = float(self.declare_parameter("watchdog_timeout", 2 * CONTROL_DT).value)
        # Off only to compare with in-process rollouts, whose env has no workspace box.
        self.workspace_clamp = bool(self.declare_parameter("workspace_clamp", True).value)
        if not checkpoint:
            # `-p checkpoint:=...` without --ros-args is not a ROS argument at all (rclpy ignores it)
            hint = " (-p counts only after --ros-args)" if "-p" in sys.argv and "--ros-args" not in sys.argv else ""
            raise ValueError(f"set the checkpoint parameter: --ros-args -p checkpoint:=<run dir or .pt>{hint}")
        # "calibrated" or a number: typed dynamically, so -p scope_threshold:=0.7 is accepted too
        either = ParameterDescriptor(dynamic_typing=True)
        threshold = str(self.declare_parameter("scope_threshold", "calibrated", either).value)
        try:
            threshold = threshold if threshold == "calibrated" else float(threshold)
        except ValueError:
            raise ValueError(f"scope_threshold must be 'calibrated' or a number in (0, 1), got {threshold!r}") from None
        self.runner = load_policy(checkpoint, device=device, scope_threshold=threshold)
        self.image_size = self.runner.policy.config.image_size
        self.cameras = list(getattr(self.runner.policy.config, "cameras", ["scene"]))
        self.parts = ("image", "pose", "joints", *(["wrist"] if "wrist" in self.cameras else []))
        self.safety = SafetyFilter(SafetyLimits(watchdog_timeout=timeout), log=self.get_logger().error)
        self.report = ThrottledLog(self.get_logger().error)
        self.events_pub = self.create_publisher(String, ros.SAFETY_EVENTS, ros.STREAM_QOS)
        # Held while a command is filtered and published, and while the e-stop latches (on another
        # thread): once the latch is set, no command filtered before it can still go out.
        self._command_lock = threading.Lock()

        self.instruction: str | None = None
        self._partial: dict[int, dict] = {}  # stamp -> the parts of one observation seen so far
        self._latest: tuple | None = None  # (stamp msg, key, observation dict) of the newest full one
        self._acted_key: int | None = None
        self._last_command: np.ndarray | None = None

        self.twist_pub = self.create_publisher(TwistStamped, ros.CMD_TWIST, ros.STREAM_QOS)
        self.gripper_pub = self.create_publisher(JointState, ros.CMD_GRIPPER, ros.STREAM_QOS)
        self.ack_pub = self.create_publisher(String, ros.INSTRUCTION_ACK, ros.LATCHED_QOS)
        self.time_pub = self.create_publisher(Float64, ros.INFERENCE_TIME, ros.STREAM_QOS)
        self.status_pub = self.create_publisher(String, ros.POLICY_STATUS, ros.STREAM_QOS)
        self._out_of_scope_said: str | None = None  # the instruction whose stop was announced
        self.create_subscription(String, ros.INSTRUCTION, self._on_instruction, ros.LATCHED_QOS)
        self.create_subscription(Image, ros.IMAGE, lambda msg: self._on_part("image", msg), ros.STREAM_QOS)
        self.create_subscription(PoseStamped, ros.EE_POSE, lambda msg: self._on_part("pose", msg), ros.STREAM_QOS)
        self.create_subscription(JointState, ros.JOINT_STATES, lambda msg: self._on_part("joints", msg), ros.STREAM_QOS)
        if "wrist" in self.parts:
            self.create_subscription(Image, ros.WRIST_IMAGE, lambda msg: self._on_part("wrist", msg), ros.STREAM_QOS)
        ros.serve_estop(self, self.safety, "policy", lock=self._command_lock)
        if self.rate_hz > 0:
            self.create_timer(1.0 / self.rate_hz, self._on_timer)
        mode = f"{self.rate_hz:g} Hz" if self.rate_hz > 0 else "one command per observation"
        cameras = "+".join(self.cameras)
        self.get_logger().info(f"policy ready: {checkpoint} ({cameras} at {self.image_size} px, {mode})")

    # --- inputs ---------------------------------------------------------------------------
    def _on_instruction(self, msg: String) -> None:
        if msg.data == "":
            # The simulator's "no goal executes" (sent when a goal ends): hold still until the next
            # goal, rather than keep driving towards the last instruction on the idle camera stream.
            if self.instruction is not None:
                self.get_logger().info("no goal executing: holding still")
            self.instruction = None
            self.ack_pub.publish(String(data=""))
            return
        try:
            self.instruction = m.check_instruction(msg.data)
        except m.MalformedMessage as error:
            self.instruction = None  # never keep acting on an old instruction after a bad one
            self.report(error.kind, f"instruction ignored, robot held still: {error}")
            self.ack_pub.publish(String(data=""))  # the simulator must wait for the next valid one
            return
        self._out_of_scope_said = None
        self.runner.reset()  # a new instruction: checked for scope at its first observation
        self.ack_pub.publish(String(data=self.instruction))

    def _on_part(self, part: str, msg) -> None:
        key = m.stamp_key(msg.header.stamp)
        if self._latest is not None and key <= self._latest[1]:
            return  # older than the observation we already have
        parts = self._partial.setdefault(key, {})
        parts[part] = msg
        if len(parts) < len(self.parts):
            while len(self._partial) > 10:  # parts whose partners never came (e.g. a rejected image)
                self._partial.pop(min(self._partial))
            return
        del self._partial[key]
        try:
            obs = {
                "image": m.image_from_msg(parts["image"], self.image_size),
                "proprio": m.proprio_from_msgs(parts["pose"], parts["joints"]),
            }
            if "wrist" in parts:
                obs["wrist_image"] = m.image_from_msg(parts["wrist"], self.image_size)
        except m.MalformedMessage as error:
            self.report(error.kind, f"observation dropped: {error}")
            return
        self._partial = {k: v for k, v in self._partial.items() if k > key}
        self._latest = (msg.header.stamp, key, obs)
        self.safety.feed()
        if self.rate_hz <= 0:
            self._act()

    # --- outputs --------------------------------------------------------------------------
    def _on_timer(self) -> None:
        self._act()

    def _act(self) -> None:
        """Decode an action for the newest observation (once), filter it, publish it."""
        if self._latest is None:
            return
        stamp, key, obs = self._latest
        decided_at = time.monotonic()  # the watchdog judges the data the decision is made on, not inference time
        if self.instruction is None:
            command = None
        elif key != self._acted_key:
            command = self._decode({**obs, "instruction": self.instruction})
            self._acted_key = key
            self._last_command = command
        else:
            command = self._last_command  # fixed rate, no new frame: repeat (the watchdog guards it)
        with self._command_lock:  # an e-stop latched during the inference above applies to its result
            if command is None:
                action = self.safety.stop()
            else:
                action = self._filter(command, obs["proprio"], decided_at)
            twist, gripper = m.command_msgs(action, stamp)
            self.gripper_pub.publish(gripper)
            self.twist_pub.publish(twist)

    def _filter(self, command: np.ndarray, proprio: np.ndarray, now: float) -> np.ndarray:
        """The safety filter, announcing every change it makes on the events topic."""
        action, why = self.safety.filter(command, proprio[:3] if self.workspace_clamp else None, now)
        if why is not None:
            self.events_pub.publish(String(data=f"policy: {why}"))
        return action

    def _decode(self, obs: dict) -> np.ndarray | None:
        start = time.perf_counter()
        try:
            action, info = self.runner.act_with_info(obs)
        except Exception as error:  # a policy failure must stop the robot, not the node
            self.report("policy", f"policy failed, robot held still: {type(error).__name__}: {error}")
            return None
        self.time_pub.publish(Float64(data=time.perf_counter() - start))
        if info["stopped"]:  # out of scope: hold still and tell the simulator why, once per instruction
            if self._out_of_scope_said != obs["instruction"]:
                self._out_of_scope_said = obs["instruction"]
                self.get_logger().warning(info["message"])
                self.status_pub.publish(String(data=ros.OUT_OF_SCOPE + info["message"]))
            return None
        return action


def main() -> None:
    """Run the node until Ctrl-C (exit code 0); a bad checkpoint or parameter is one line, exit code 2."""
    # Two threads: the e-stop (a callback group of its own) is handled while an inference runs.
    ros.run_node("vla_policy", PolicyNode, threads=2)


if __name__ == "__main__":
    main()
