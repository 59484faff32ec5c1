"""The topic names and QoS profiles every node and client share.

Topics (all under ``/vla``; message types in docs/ros2.md):
    camera/image      sensor_msgs/Image          sim -> policy   rgb8, frame ``scene_camera``
    camera/wrist/image sensor_msgs/Image         sim -> policy   rgb8, frame ``wrist_camera`` (if enabled)
    joint_states      sensor_msgs/JointState     sim -> policy   rad (arm), m (fingers, gripper)
    ee_pose           geometry_msgs/PoseStamped  sim -> policy   grip site in frame ``world``
    instruction       std_msgs/String            sim -> policy   latched (transient local); "" while no goal executes
    instruction_ack   std_msgs/String            policy -> sim   the instruction the policy now uses
    cmd/ee_twist      geometry_msgs/TwistStamped policy -> sim   m/s and rad/s, frame ``world``
    cmd/gripper       sensor_msgs/JointState     policy -> sim   joint ``gripper``: -1 open .. +1 closed
    estop             std_msgs/Bool              anyone -> both  true latches a stop (each node repeats it once)
    policy/inference_time std_msgs/Float64       policy ->       seconds per decoded action
    policy/status     std_msgs/String            policy -> sim   "out of scope: <why>" when the policy stops on an
                                                                  instruction it cannot act on (the goal then aborts)
    safety/events     std_msgs/String            both ->         "<node>: <rule>" whenever the filter changed a command,
                                                                  "<node>: estop latched" when an e-stop latches
Services: ``/vla_sim/reset_estop`` and ``/vla_policy/reset_estop`` (std_srvs/Trigger).
Action: ``/vla/execute_instruction`` (vla_sandbox_interfaces/action/ExecuteInstruction).
"""

from __future__ import annotations

from ros2_bridge import require_ros

require_ros()

import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import rclpy  # noqa: E402
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup  # noqa: E402
from rclpy.executors import Executor, ExternalShutdownException, MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.subscription import MessageInfo  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from ros2_bridge import exit_quietly_on_sigint, stop_orderly_from_now  # noqa: E402
from ros2_bridge.safety import SafetyFilter  # noqa: E402

NAMESPACE = "/vla"
IMAGE = f"{NAMESPACE}/camera/image"
WRIST_IMAGE = f"{NAMESPACE}/camera/wrist/image"
JOINT_STATES = f"{NAMESPACE}/joint_states"
EE_POSE = f"{NAMESPACE}/ee_pose"
INSTRUCTION = f"{NAMESPACE}/instruction"
INSTRUCTION_ACK = f"{NAMESPACE}/instruction_ack"
CMD_TWIST = f"{NAMESPACE}/cmd/ee_twist"
CMD_GRIPPER = f"{NAMESPACE}/cmd/gripper"
ESTOP = f"{NAMESPACE}/estop"
INFERENCE_TIME = f"{NAMESPACE}/policy/inference_time"
POLICY_STATUS = f"{NAMESPACE}/policy/status"
OUT_OF_SCOPE = "out of scope: "  # policy/status prefix of a stop on an instruction the policy cannot act on
# How the result message of an ABORTED goal starts, besides OUT_OF_SCOPE (docs/ros2.md).
ABORT_ESTOP = "emergency stop: "
ABORT_POLICY_GONE = "policy node gone: "
ABORT_NO_COMMAND = "no command: "
ABORT_SIM_ERROR = "simulator error: "
# Default seconds without a command before the simulator aborts the goal (parameter abort_after).
ABORT_AFTER_REALTIME = 1.0
ABORT_AFTER_LOCKSTEP = 30.0
SAFETY_EVENTS = f"{NAMESPACE}/safety/events"
EXECUTE_INSTRUCTION = f"{NAMESPACE}/execute_instruction"
WORLD_FRAME = "world"
CAMERA_FRAME = "scene_camera"
WRIST_CAMERA_FRAME = "wrist_camera"

# Reliable, a short queue: lock-step evaluation must not lose a message, and a slow reader
# should see recent data rather than a backlog.
STREAM_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
# The current instruction (and its acknowledgement) must reach a node that starts later.
LATCHED_QOS = QoSProfile(
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    history=HistoryPolicy.KEEP_LAST,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)


# Reliable and volatile: every e-stop message must arrive, and a volatile reader also matches a
# transient-local writer (a transient-local reader would refuse the usual volatile one).
ESTOP_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
ESTOP_LATCHED = "estop latched"  # safety/events text ("<node>: estop latched") at the moment a node latches


def serve_estop(
    node: Node,
    safety: SafetyFilter,
    node_label: str,
    lock: threading.Lock | None = None,
    on_latch: Callable[[], None] | None = None,
) -> None:
    """The emergency stop every node obeys: ``true`` on the estop topic latches a stop in
    ``safety``; the node's ``~/reset_estop`` service (std_srvs/Trigger) releases it.

    The subscription has a callback group of its own, so with a multi-threaded executor the
    stop latches while the node's other callbacks (a policy's inference) are still running.
    ``lock`` is held while latching; a node that holds it while it filters and publishes a
    command publishes no moving command once the latch is set. At the moment it latches, the
    node says so on the safety events topic (``"<node_label>: estop latched"``) and repeats the
    ``true`` once on the estop topic: a node that had not yet discovered the sender, and so
    never got its message, stops too. A ``true`` written before the node's last reset (its DDS
    source timestamp says when) is ignored: a stop delivered late, or another node's repeat of
    it, must not latch again a stop that was already released.
    """
    lock = lock if lock is not None else threading.Lock()
    group = MutuallyExclusiveCallbackGroup()
    relay = node.create_publisher(Bool, ESTOP, ESTOP_QOS)
    events = node.create_publisher(String, SAFETY_EVENTS, STREAM_QOS)

    released_ns = 0  # system clock (as DDS source timestamps) of the last reset

    def on_estop(msg: Bool, info: MessageInfo) -> None:
        if not msg.data:
            return  # only the reset service releases a stop: a stray ``false`` must not
        with lock:
            if info["source_timestamp"] <= released_ns:
                return
            latched_now = not safety.estopped
            safety.engage_estop("estop topic")
            if latched_now:
                events.publish(String(data=f"{node_label}: {ESTOP_LATCHED}"))
        if latched_now:
            relay.publish(Bool(data=True))
            if on_latch is not None:
                on_latch()

    def on_reset(request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        nonlocal released_ns
        with lock:
            response.success = safety.reset_estop()
            released_ns = time.time_ns()
        response.message = "emergency stop released" if response.success else "no emergency stop was engaged"
        node.get_logger().info(response.message)
        return response

    node.create_subscription(Bool, ESTOP, on_estop, ESTOP_QOS, callback_group=group)
    node.create_service(Trigger, "~/reset_estop", on_reset, callback_group=group)


def close_node(node: Node | None, executor: Executor | None) -> None:
    """A node's orderly end: stop the executor (waiting for its running callbacks, so none
    publishes on a destroyed node), destroy the node, shut rclpy down unless a SIGINT already
    did. A second Ctrl-C meanwhile only cuts this short; the process ends either way."""
    try:
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        try:
            rclpy.try_shutdown()  # shutdown() only if rclpy.ok()
        except RuntimeError:
            # An RCLError "already shut down": rclpy's SIGINT handler shuts the context down on a
            # thread of its own, so it can do so between the ok() check and the shutdown.
            if rclpy.ok():
                raise
    except KeyboardInterrupt:
        pass


def interrupted() -> bool:
    """Whether rclpy's SIGINT handler has shut the context down: an RCLError raised then (a
    callback publishing on the closed context) is the echo of a Ctrl-C, not a failure."""
    return not rclpy.ok()


def run_node(
    label: str,
    make_node: Callable[[], Node],
    threads: int,
    before_close: Callable[[Node], None] | None = None,
) -> None:
    """A bridge node's ``main``: spin it on ``threads`` executor threads until Ctrl-C or SIGINT
    (exit code 0, no traceback, also while it is starting); a bad parameter, checkpoint or
    ``--ros-args`` is one line ``<label>: cannot start: ...`` and exit code 2."""
    exit_quietly_on_sigint()  # until the node is built: a stop ends the process at once
    node: Node | None = None
    executor: MultiThreadedExecutor | None = None
    cannot_start: Exception | None = None
    try:
        try:
            rclpy.init()
        except RuntimeError as error:  # an RCLError: malformed --ros-args
            cannot_start = error
        else:
            try:
                node = make_node()
            except (ValueError, RuntimeError, OSError) as error:  # an RCLError is a RuntimeError too
                if not interrupted():  # else this is the echo of a SIGINT during the start
                    cannot_start = error
        if node is not None:
            executor = MultiThreadedExecutor(num_threads=threads)
            executor.add_node(node)
            # From here a stop is orderly (goals aborted, node closed). Not earlier: loading a
            # checkpoint runs libraries whose bare ``except:`` can swallow a KeyboardInterrupt.
            stop_orderly_from_now()
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # Ctrl-C or SIGINT: a normal stop
    except RuntimeError:
        if not interrupted():
            raise  # a real failure: its traceback is the report
    finally:
        force_exit_after(STOP_GRACE_S, label)
        if node is not None and before_close is not None:
            before_close(node)
        close_node(node, executor)
    if cannot_start is not None:
        print(f"{label}: cannot start: {cannot_start}", file=sys.stderr)
        sys.exit(2)


STOP_GRACE_S = 10.0  # from a stop to the process's end, at most (a launcher would escalate to SIGKILL)


def force_exit_after(seconds: float, label: str) -> None:
    """End the process ``seconds`` from now if closing has not ended it: an executor thread
    stuck in a callback would otherwise keep it alive (shutdown and the interpreter's exit both
    wait for it), and a node told to stop must stop. A daemon timer: a normal exit ignores it."""

    def expire() -> None:
        print(f"{label}: still closing {seconds:.0f} s after the stop; exiting", file=sys.stderr, flush=True)
        os._exit(0)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
