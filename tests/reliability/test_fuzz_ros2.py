"""Generated malformed and oversized messages sent to the ROS 2 bridge over DDS (real rclpy).

One realtime bridge (simulator + policy node, separate processes, private ROS_DOMAIN_ID) runs
for the whole module; every example sends one bad input and checks the handling documented
in docs/ros2.md:

- a goal is accepted exactly when its task, split and instruction are valid (an empty
  instruction asks for the env's own), otherwise rejected with an error line in the
  simulator's log; an accepted goal ends SUCCEEDED, CANCELED, or ABORTED as out of scope;
- an instruction on the topic is acknowledged as itself when valid, as ``""`` when empty
  ("no goal executes") or invalid (then with a throttled error line);
- a command pair with NaN, inf or huge numbers or a malformed gripper message never reaches
  the robot as anything but a finite action within the limits;
- a malformed observation never makes the policy publish a non-finite or over-limit command;

and that both nodes are still running. The last test checks the logs and that a valid goal
still executes. ROS 2 strings end at a NUL character (the sender's rosidl conversion cuts
there), so the expected handling is that of the text before the first NUL.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("rclpy", reason="the ros2 extra is not installed: pip install -e '.[ros2]'")

from action_msgs.msg import GoalStatus  # noqa: E402
from builtin_interfaces.msg import Time  # noqa: E402
from geometry_msgs.msg import PoseStamped, TwistStamped  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from envs.evaluation import EVAL_SEED_BASE  # noqa: E402
from envs.instructions import INSTRUCTION_SPLITS  # noqa: E402
from envs.tabletop_env import INSTRUCTION_CHARSET, MAX_INSTRUCTION_LENGTH  # noqa: E402
from envs.tasks import TASK_CLASSES, TASK_NAMES  # noqa: E402
from ros2_bridge import messages as m  # noqa: E402
from ros2_bridge import ros  # noqa: E402
from ros2_bridge.interfaces import load_action  # noqa: E402
from ros2_bridge.safety import CONTROL_DT, MAX_ROTATION, MAX_TRANSLATION  # noqa: E402
from tests.reliability.cases import record_case  # noqa: E402
from tests.test_ros2_bridge import DOMAIN, IMAGE_SIZE, running_bridge, tiny_checkpoint  # noqa: E402, F401

WAIT = 10.0  # s: a generous bound on any one answer; a healthy bridge answers in milliseconds
VALID_TASKS = sorted(TASK_CLASSES) + sorted(TASK_NAMES)


@pytest.fixture(scope="module")
def bridge(tiny_checkpoint, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    # DOMAIN + 2 is the evaluation test's domain, idle while this module runs (one module at a time).
    yield from running_bridge(tiny_checkpoint, DOMAIN + 2, tmp_path_factory.mktemp("fuzz_ros2_logs"), lockstep=False)


class Wire:
    """The test's publishers and listeners on the bridge, created once: DDS discovery of a new
    endpoint takes longer than an example should."""

    def __init__(self, bridge) -> None:
        self.peer, self.nodes = bridge.peer, bridge.nodes
        node = self.peer.node
        self.instruction = node.create_publisher(String, ros.INSTRUCTION, ros.LATCHED_QOS)
        self.image = node.create_publisher(Image, ros.IMAGE, ros.STREAM_QOS)
        self.pose = node.create_publisher(PoseStamped, ros.EE_POSE, ros.STREAM_QOS)
        self.joints = node.create_publisher(JointState, ros.JOINT_STATES, ros.STREAM_QOS)
        self.twist = node.create_publisher(TwistStamped, ros.CMD_TWIST, ros.STREAM_QOS)
        self.gripper = node.create_publisher(JointState, ros.CMD_GRIPPER, ros.STREAM_QOS)
        self.acks: list[str] = []
        node.create_subscription(String, ros.INSTRUCTION_ACK, lambda msg: self.acks.append(msg.data), ros.LATCHED_QOS)
        # The policy's commands, with the publisher's write time: the test's own twists (sent only
        # by the command test) are told apart by time.
        self.commands: list[tuple[int, TwistStamped]] = []
        node.create_subscription(
            TwistStamped,
            ros.CMD_TWIST,
            lambda msg, info: self.commands.append((info["source_timestamp"], msg)),
            ros.STREAM_QOS,
        )
        self.goal = None  # the goal handle of a running goal the command test started
        self.goal_acks_from = 0  # len(acks) when that goal was sent
        self.feedback: list = []
        for pub in (self.instruction, self.image, self.pose, self.joints):
            assert self.peer.spin_until(lambda pub=pub: pub.get_subscription_count() >= 1, WAIT), pub.topic_name
        for pub in (self.twist, self.gripper):
            assert self.peer.spin_until(lambda pub=pub: pub.get_subscription_count() >= 1, WAIT), pub.topic_name
        self.peer.spin_for(0.2)  # the latched acknowledgement, if any, arrives now and not mid-example

    def alive(self) -> None:
        self.nodes.check_alive()

    def sim_log_lines(self, text: str) -> int:
        return sum(text in line for line in self.nodes.log("sim").splitlines())

    def wait_idle_ack(self, since: int) -> None:
        """Wait for the policy's acknowledgement of the "" a goal's end sends: until it came, an
        acknowledgement of the goal could still arrive in the middle of the next example."""
        assert self.peer.spin_until(lambda: "" in self.acks[since:], WAIT), "the goal's end was not acknowledged"

    def stop_goal(self) -> None:
        """Cancel the goal the command test keeps running (goal tests need the robot idle)."""
        if self.goal is None:
            return
        result = self.goal.get_result_async()
        self.goal.cancel_goal_async()
        assert self.peer.spin_until(result.done, WAIT), self.nodes.log("sim")[-2000:]
        self.goal = None
        self.wait_idle_ack(self.goal_acks_from)

    def running_goal(self) -> None:
        """Make sure a goal executes (the command test needs the simulator applying commands)."""
        if self.goal is not None and self.goal.status in (GoalStatus.STATUS_ACCEPTED, GoalStatus.STATUS_EXECUTING):
            return
        if self.goal is not None:  # it reached its time limit: its end is acknowledged before the next
            self.wait_idle_ack(self.goal_acks_from)
        self.feedback = []
        self.goal_acks_from = len(self.acks)
        sent = self.peer.client.client.send_goal_async(
            load_action().Goal(task="reach", seed=EVAL_SEED_BASE, max_steps=0),
            feedback_callback=lambda msg: self.feedback.append(msg.feedback),
        )
        assert self.peer.spin_until(sent.done, WAIT) and sent.result().accepted, self.nodes.log("sim")[-2000:]
        self.goal = sent.result()
        assert self.peer.spin_until(lambda: len(self.feedback) > 0, WAIT), self.nodes.log("sim")[-2000:]


@pytest.fixture(scope="module")
def wire(bridge) -> Wire:
    return Wire(bridge)


def received(text: str) -> str:
    """What a ROS 2 subscriber gets for ``text``: rosidl's C strings end at the first NUL."""
    return text.split("\x00", 1)[0]


def valid_instruction(text: str) -> bool:
    """The env's rules (envs/tabletop_env.py), restated: 1..256 characters from its set."""
    return 1 <= len(text) <= MAX_INSTRUCTION_LENGTH and set(text) <= set(INSTRUCTION_CHARSET)


def repeat(unit: str, length: int) -> str:
    """``unit`` repeated to ``length`` characters: long texts without hypothesis drawing each one."""
    return (unit * (length // len(unit) + 1))[:length]


instructions = st.one_of(
    st.just(""),
    st.text(max_size=300),  # any unicode (no lone surrogates: UTF-8 cannot carry them)
    st.text(alphabet=INSTRUCTION_CHARSET, min_size=1, max_size=40),  # valid, mostly out of scope
    st.builds(repeat, st.text(alphabet="abc ", min_size=1, max_size=4), st.integers(250, 262)),  # the 256 edge
    st.builds(repeat, st.text(min_size=1, max_size=8), st.integers(0, 100_000)),  # oversized
    st.builds(lambda a, b: a + "\x00" + b, st.text(alphabet=INSTRUCTION_CHARSET, max_size=20), st.text(max_size=20)),
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)  # NaN, inf, huge, subnormal, -0.0
float_lists = st.lists(FLOATS, max_size=4)
name_lists = st.lists(st.one_of(st.just(m.GRIPPER_JOINT), st.text(max_size=12)), max_size=4)
stamps = st.one_of(
    st.none(),  # now: a fresh command or observation
    st.builds(Time, sec=st.integers(-(2**31), 2**31 - 1), nanosec=st.integers(0, 2**32 - 1)),
)


def stamp_or_now(wire: Wire, stamp: Time | None) -> Time:
    return wire.peer.node.get_clock().now().to_msg() if stamp is None else stamp


@settings(deadline=None)
@given(
    instruction=instructions,
    task=st.one_of(st.sampled_from(["", "reach", "VLASandbox/Reach-v0"]), st.text(max_size=30)),
    split=st.one_of(st.sampled_from(["", "train", "heldout"]), st.text(max_size=30)),
    seed=st.integers(-(2**63), 2**63 - 1),
    max_steps=st.integers(0, 2**32 - 1),
)
def test_any_goal(wire, instruction, task, split, seed, max_steps):
    record_case("ros2")
    wire.stop_goal()
    text = received(instruction)
    valid = (
        received(task) in ["", *VALID_TASKS]
        and received(split) in ["", *INSTRUCTION_SPLITS]
        and (text == "" or valid_instruction(text))
    )
    rejected_before = wire.sim_log_lines("goal rejected: ")
    acks_before = len(wire.acks)
    goal = load_action().Goal(instruction=instruction, task=task, split=split, seed=seed, max_steps=max_steps)
    sent = wire.peer.client.client.send_goal_async(goal)
    assert wire.peer.spin_until(sent.done, WAIT), "no answer to the goal"
    handle = sent.result()
    assert handle.accepted == valid, (instruction[:80], task, split)
    if not valid:  # one clear error line, the node keeps serving
        deadline = time.monotonic() + WAIT  # the line reaches the node's log file a moment later
        while wire.sim_log_lines("goal rejected: ") == rejected_before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert wire.sim_log_lines("goal rejected: ") > rejected_before
    else:
        result = handle.get_result_async()
        handle.cancel_goal_async()
        assert wire.peer.spin_until(result.done, WAIT), wire.nodes.log("sim")[-2000:]
        status, outcome = result.result().status, result.result().result
        assert status in (GoalStatus.STATUS_SUCCEEDED, GoalStatus.STATUS_CANCELED, GoalStatus.STATUS_ABORTED)
        if status == GoalStatus.STATUS_ABORTED:  # only the policy's "cannot act on this" may end it so here
            assert outcome.message.startswith(ros.OUT_OF_SCOPE), outcome.message
        if text:
            assert outcome.instruction == text  # executed as sent, never silently replaced
        wire.wait_idle_ack(acks_before)
    wire.alive()


@settings(deadline=None)
@given(text=instructions)
def test_any_instruction_on_the_topic(wire, text):
    record_case("ros2")
    wire.stop_goal()
    before = len(wire.acks)
    wire.instruction.publish(String(data=text))
    assert wire.peer.spin_until(lambda: len(wire.acks) > before, WAIT), "the policy did not acknowledge"
    effective = received(text)
    # Acknowledged as itself when valid; "" when empty (no goal: hold still) or invalid (ignored).
    assert wire.acks[before] == (effective if valid_instruction(effective) else "")
    wire.alive()


@settings(deadline=None)
@given(
    linear=st.lists(FLOATS, min_size=3, max_size=3),
    angular=st.lists(FLOATS, min_size=3, max_size=3),
    names=name_lists,
    positions=float_lists,
    velocities=float_lists,
    stamp=stamps,
)
def test_any_command_pair(wire, linear, angular, names, positions, velocities, stamp):
    record_case("ros2")
    wire.running_goal()
    twist, gripper = TwistStamped(), JointState()
    twist.header.stamp = gripper.header.stamp = stamp_or_now(wire, stamp)
    twist.twist.linear.x, twist.twist.linear.y, twist.twist.linear.z = linear
    twist.twist.angular.x, twist.twist.angular.y, twist.twist.angular.z = angular
    gripper.name, gripper.position, gripper.velocity = names, positions, velocities
    # A burst over three control steps: the 20 Hz simulator samples the latest pair once a step,
    # and the policy's own commands come in between.
    seen = len(wire.feedback)
    for _ in range(15):
        wire.gripper.publish(gripper)
        wire.twist.publish(twist)
        wire.peer.spin_for(0.01)
    wire.peer.spin_until(lambda: len(wire.feedback) >= seen + 2 or wire.goal.status >= GoalStatus.STATUS_SUCCEEDED, 2.0)
    for feedback in wire.feedback[seen:]:  # what the robot did: finite, within the limits, always
        action = np.asarray(feedback.last_action, dtype=np.float64)
        assert np.all(np.isfinite(action)) and np.all(np.abs(action) <= 1.0), action
    wire.alive()


@settings(deadline=None)
@given(
    height=st.integers(0, 2**32 - 1) | st.just(IMAGE_SIZE),
    width=st.integers(0, 2**32 - 1) | st.just(IMAGE_SIZE),
    encoding=st.sampled_from(["rgb8", "bgr8", "mono8", ""]) | st.text(max_size=20),
    step=st.integers(0, 2**32 - 1) | st.just(3 * IMAGE_SIZE),
    data_size=st.integers(0, 100_000) | st.just(3 * IMAGE_SIZE * IMAGE_SIZE),
    pose=st.lists(FLOATS, min_size=7, max_size=7),
    names=name_lists,
    positions=float_lists,
    velocities=float_lists,
    stamp=stamps,
)
def test_any_observation(wire, height, width, encoding, step, data_size, pose, names, positions, velocities, stamp):
    record_case("ros2")
    wire.stop_goal()
    if not wire.acks or wire.acks[-1] != "touch the red cube":
        # The policy decodes observations only for an instruction: give it one, so that the
        # observations that pass its checks go through the model.
        wire.instruction.publish(String(data="touch the red cube"))
        assert wire.peer.spin_until(lambda: wire.acks[-1:] == ["touch the red cube"], WAIT)
    stamp = stamp_or_now(wire, stamp)
    image = Image(height=height, width=width, encoding=encoding, step=step, data=bytes(data_size))
    image.header.stamp = stamp
    posed = PoseStamped()
    posed.header.stamp = stamp
    p, q = posed.pose.position, posed.pose.orientation
    p.x, p.y, p.z, q.w, q.x, q.y, q.z = pose
    joints = JointState(name=names, position=positions, velocity=velocities)
    joints.header.stamp = stamp
    start = time.time_ns()
    wire.joints.publish(joints)
    wire.pose.publish(posed)
    wire.image.publish(image)
    wire.peer.spin_for(0.15)  # three of the policy's control periods
    # Whatever it made of the observation (dropped with a log line, or decoded), every command the
    # policy published is finite and within the velocity limits.
    for t, twist in wire.commands:
        if t < start:
            continue
        lin, ang = twist.twist.linear, twist.twist.angular
        values = np.array([lin.x, lin.y, lin.z, ang.x, ang.y, ang.z])
        limits = np.array([MAX_TRANSLATION] * 3 + [MAX_ROTATION] * 3) / CONTROL_DT
        assert np.all(np.isfinite(values)) and np.all(np.abs(values) <= limits * (1 + 1e-6)), values
    del wire.commands[:]  # keep the list short over a campaign
    wire.alive()


def test_after_the_fuzz_the_nodes_log_clearly_and_execute_a_valid_goal(wire):
    wire.stop_goal()
    wire.instruction.publish(String(data=""))  # the policy holds still until the goal's instruction
    wire.alive()
    outcome = wire.peer.client.run(task="reach", seed=EVAL_SEED_BASE, max_steps=5, timeout=60)
    assert outcome.accepted and outcome.status == GoalStatus.STATUS_SUCCEEDED, outcome.result
    assert outcome.result.steps == 5
    sim_log, policy_log = wire.nodes.log("sim"), wire.nodes.log("policy")
    assert "Traceback" not in sim_log + policy_log, (sim_log + policy_log)[-3000:]
    for line in (sim_log + policy_log).splitlines():  # each error is one line naming the problem
        if line.startswith("[ERROR]"):
            assert len(line) < 1000, line[:300]
