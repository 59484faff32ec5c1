"""The topic names and QoS profiles every node and client share.

Topics (all under ``/vla``; message types in docs/ros2.md):
    camera/image      sensor_msgs/Image          sim -> policy   rgb8, frame ``scene_camera``
    camera/wrist/image sensor_msgs/Image         sim -> policy   rgb8, frame ``wrist_camera`` (if enabled)
    joint_states      sensor_msgs/JointState     sim -> policy   rad (arm), m (fingers, gripper)
    ee_pose           geometry_msgs/PoseStamped  sim -> policy   grip site in frame ``world``
    instruction       std_msgs/String            sim -> policy   latched (transient local)
    instruction_ack   std_msgs/String            policy -> sim   the instruction the policy now uses
    cmd/ee_twist      geometry_msgs/TwistStamped policy -> sim   m/s and rad/s, frame ``world``
    cmd/gripper       sensor_msgs/JointState     policy -> sim   joint ``gripper``: -1 open .. +1 closed
    estop             std_msgs/Bool              anyone -> both  true latches a stop
    policy/inference_time std_msgs/Float64       policy ->       seconds per decoded action
    policy/status     std_msgs/String            policy -> sim   "out of scope: <why>" when the policy stops on an
                                                                  instruction it cannot act on (the goal then aborts)
    safety/events     std_msgs/String            both ->         "<node>: <rule>" whenever the filter changed a command
Services: ``/vla_sim/reset_estop`` and ``/vla_policy/reset_estop`` (std_srvs/Trigger).
Action: ``/vla/execute_instruction`` (vla_sandbox_interfaces/action/ExecuteInstruction).
"""

from __future__ import annotations

from ros2_bridge import require_ros

require_ros()

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

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


def serve_estop(node, safety) -> None:
    """The emergency stop every node obeys: ``true`` on the estop topic latches a stop in
    ``safety``; the node's ``~/reset_estop`` service (std_srvs/Trigger) releases it."""

    def on_estop(msg: Bool) -> None:
        if msg.data:
            safety.engage_estop("estop topic")

    def on_reset(request, response):
        response.success = safety.reset_estop()
        response.message = "emergency stop released" if response.success else "no emergency stop was engaged"
        node.get_logger().info(response.message)
        return response

    node.create_subscription(Bool, ESTOP, on_estop, 10)
    node.create_service(Trigger, "~/reset_estop", on_reset)
