"""Conversions between the sandbox's contract (observation dict, 7-D action) and ROS 2
messages, with the checks that turn malformed input into one clear ``MalformedMessage``.

Units follow REP 103: metres, radians, seconds; the twist is in the ``world`` frame (x away
from the robot base, y to its left, z up). An action element ``a`` maps to a velocity
``a x MAX_TRANSLATION / CONTROL_DT`` (m/s) or ``a x MAX_ROTATION / CONTROL_DT`` (rad/s). The
float32 action survives the round trip bit for bit (the float64 error is far below half a
float32 ulp), which keeps ROS 2 rollouts identical to in-process ones.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, TwistStamped
from sensor_msgs.msg import Image, JointState

from envs.tabletop_env import INSTRUCTION_CHARSET, MAX_INSTRUCTION_LENGTH
from ros2_bridge.ros import CAMERA_FRAME, WORLD_FRAME
from ros2_bridge.safety import CONTROL_DT, MAX_ROTATION, MAX_TRANSLATION

# in joint_states: opening between the pads (m), velocity in m/s; in cmd/gripper: -1 open .. +1 closed
GRIPPER_JOINT = "gripper"
_ALLOWED = frozenset(INSTRUCTION_CHARSET)


class MalformedMessage(ValueError):
    """An incoming message the node cannot use; the text says what was wrong."""

    @property
    def kind(self) -> str:
        """The message without its numbers: errors of one kind share one throttled log line."""
        return re.sub(r"\d+", "#", str(self))[:80]


def stamp_key(stamp: Time) -> int:
    """A header stamp as one integer (nanoseconds), to pair messages of one observation."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


# --- observation --------------------------------------------------------------------------
def image_msg(image: np.ndarray, stamp: Time, frame_id: str = CAMERA_FRAME) -> Image:
    msg = Image()
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding, msg.is_bigendian, msg.step = "rgb8", 0, int(image.shape[1]) * 3
    msg.data = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    return msg


def image_from_msg(msg: Image, size: int) -> np.ndarray:
    """uint8 (size, size, 3) RGB, or MalformedMessage naming what differs."""
    if msg.encoding != "rgb8":
        raise MalformedMessage(f"image encoding must be 'rgb8', got {msg.encoding!r}")
    if (msg.height, msg.width) != (size, size):
        raise MalformedMessage(f"image must be {size}x{size} (the policy's input size), got {msg.height}x{msg.width}")
    if msg.step != 3 * msg.width or len(msg.data) != msg.step * msg.height:
        raise MalformedMessage(
            f"image data has {len(msg.data)} bytes and step {msg.step}; expected step {3 * msg.width} and "
            f"{3 * msg.width * msg.height} bytes"
        )
    return np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(size, size, 3)


def pose_msg(proprio: np.ndarray, stamp: Time) -> PoseStamped:
    """The grip site's pose from the env's proprio (float32 -> float64 -> float32 is exact)."""
    msg = PoseStamped()
    msg.header.stamp, msg.header.frame_id = stamp, WORLD_FRAME
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in proprio[:3])
    w, x, y, z = (float(v) for v in proprio[3:7])
    msg.pose.orientation.w, msg.pose.orientation.x = w, x
    msg.pose.orientation.y, msg.pose.orientation.z = y, z
    return msg


def joint_state_msg(names: list[str], positions: np.ndarray, velocities: np.ndarray, stamp: Time) -> JointState:
    msg = JointState()
    msg.header.stamp = stamp
    msg.name = list(names)
    msg.position = [float(v) for v in positions]
    msg.velocity = [float(v) for v in velocities]
    return msg


def proprio_from_msgs(pose: PoseStamped, joints: JointState) -> np.ndarray:
    """The env's proprio vector (float32, 9): grip-site xyz, quaternion wxyz, gripper opening
    and its velocity (``envs.PROPRIO_NAMES``)."""
    if GRIPPER_JOINT not in joints.name:
        raise MalformedMessage(f"joint_states has no {GRIPPER_JOINT!r} entry (names: {list(joints.name)[:10]})")
    if len(joints.position) != len(joints.name):
        raise MalformedMessage(f"joint_states has {len(joints.name)} names but {len(joints.position)} positions")
    if len(joints.velocity) != len(joints.name):
        raise MalformedMessage(f"joint_states has {len(joints.name)} names but {len(joints.velocity)} velocities")
    p, q = pose.pose.position, pose.pose.orientation
    gripper = list(joints.name).index(GRIPPER_JOINT)
    opening, opening_velocity = joints.position[gripper], joints.velocity[gripper]
    proprio = np.array([p.x, p.y, p.z, q.w, q.x, q.y, q.z, opening, opening_velocity], dtype=np.float64)
    with np.errstate(over="ignore"):
        single = proprio.astype(np.float32)
    # Checked after the cast: 1e300 m is finite as a double but inf as the policy's float32 input.
    if not np.all(np.isfinite(single)):
        raise MalformedMessage(f"robot state has non-finite or out-of-range values: {proprio.tolist()}")
    return single


def check_instruction(text: str) -> str:
    """The env's rules: 1..256 characters from its character set."""
    if not text:
        raise MalformedMessage("instruction is empty")
    if len(text) > MAX_INSTRUCTION_LENGTH:
        limit = MAX_INSTRUCTION_LENGTH
        raise MalformedMessage(f"instruction has {len(text)} characters, more than the {limit} allowed")
    bad = sorted(set(text) - _ALLOWED)
    if bad:
        raise MalformedMessage(f"instruction has characters outside the allowed set: {bad[:10]}")
    return text


# --- command ------------------------------------------------------------------------------
def command_msgs(action: np.ndarray, stamp: Time) -> tuple[TwistStamped, JointState]:
    """A 7-D action -> (twist in m/s and rad/s, gripper command), both stamped with the
    observation they answer."""
    a = np.asarray(action, dtype=np.float64)
    twist = TwistStamped()
    twist.header.stamp, twist.header.frame_id = stamp, WORLD_FRAME
    linear, angular = a[:3] * MAX_TRANSLATION / CONTROL_DT, a[3:6] * MAX_ROTATION / CONTROL_DT
    twist.twist.linear.x, twist.twist.linear.y, twist.twist.linear.z = (float(v) for v in linear)
    twist.twist.angular.x, twist.twist.angular.y, twist.twist.angular.z = (float(v) for v in angular)
    gripper = JointState()
    gripper.header.stamp = stamp
    gripper.name, gripper.position = [GRIPPER_JOINT], [float(a[6])]
    return twist, gripper


def action_from_msgs(twist: TwistStamped, gripper: JointState) -> np.ndarray:
    """(twist, gripper command) -> the float32 7-D action. Non-finite values pass through
    (the safety filter turns them into a stop); a malformed gripper message raises."""
    if list(gripper.name) != [GRIPPER_JOINT] or len(gripper.position) != 1:
        raise MalformedMessage(
            f"gripper command must be a JointState with name [{GRIPPER_JOINT!r}] and one position, "
            f"got names {list(gripper.name)[:5]} and {len(gripper.position)} positions"
        )
    lin, ang = twist.twist.linear, twist.twist.angular
    with np.errstate(invalid="ignore", over="ignore"):
        action = np.array(
            [
                *(np.array([lin.x, lin.y, lin.z]) * CONTROL_DT / MAX_TRANSLATION),
                *(np.array([ang.x, ang.y, ang.z]) * CONTROL_DT / MAX_ROTATION),
                gripper.position[0],
            ]
        )
    return action.astype(np.float32)


def observation(image: np.ndarray, proprio: np.ndarray, instruction: str) -> dict[str, Any]:
    """The contract's observation dict (what ``vla.load_policy(...).act`` takes)."""
    return {"image": image, "proprio": proprio, "instruction": instruction}
