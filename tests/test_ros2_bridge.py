"""The ROS 2 bridge with real rclpy over DDS on loopback: the simulator and the policy node run
as separate processes on a private ROS_DOMAIN_ID; this test process joins as a third node.

Covers the publish/subscribe round trip, the action's goal, feedback, result and cancel,
the emergency stop (the goal ends ABORTED; the policy publishes no moving command after it
latched), stops only from the policy after a cancel, malformed input (images, instructions, a
1 kHz command flood), the policy node leaving (SIGINT: ABORTED at once, a clean exit) or
dying (SIGKILL: the watchdog stops the robot, the goal ends ABORTED), and the evaluation
command against in-process evaluation on the same seeds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="the ros2 extra is not installed: pip install -e '.[ros2]'")

import rclpy  # noqa: E402
from action_msgs.msg import GoalStatus  # noqa: E402
from geometry_msgs.msg import PoseStamped, TwistStamped  # noqa: E402
from rclpy.action.client import ClientGoalHandle  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

import envs  # noqa: E402
from envs.evaluation import EVAL_SEED_BASE  # noqa: E402
from ros2_bridge import messages as m  # noqa: E402
from ros2_bridge import ros  # noqa: E402
from ros2_bridge.client import InstructionClient  # noqa: E402
from ros2_bridge.interfaces import load_action  # noqa: E402
from ros2_bridge.processes import REPO_ROOT, NodeProcesses, ros_env, start_bridge  # noqa: E402
from ros2_bridge.safety import CONTROL_DT  # noqa: E402
from tests.test_bc import train  # noqa: E402

# Three private domains per test run (lock-step bridge, real-time bridge, evaluation command).
DOMAIN = 1 + (os.getpid() % 33) * 3
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # this process's nodes too
IMAGE_SIZE = 32  # the tiny model's
WATCHDOG_TIMEOUT = 0.1


class Peer:
    """A node of the test itself, on its own rclpy context and domain."""

    def __init__(self, domain: int):
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("test_peer", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.client = InstructionClient(self.node, self.executor)

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.01)

    def spin_until(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.02)
        return bool(predicate())

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_demos, tmp_path_factory) -> Path:
    load_action()  # generate the action interface once, before any node process needs it
    run_dir = tmp_path_factory.mktemp("ros2") / "run"
    result = train(tiny_demos, run_dir, "trainer.steps=6")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir / "checkpoints" / "best.pt"


def running_bridge(checkpoint: Path, domain: int, log_dir: Path, lockstep: bool):
    nodes = NodeProcesses(domain, log_dir)
    peer = None
    try:
        start_bridge(nodes, str(checkpoint), {"image_size": IMAGE_SIZE}, "reach", lockstep=lockstep)
        peer = Peer(domain)
        assert peer.client.wait_for_server(60.0), nodes.log("sim")[-2000:]
        if not lockstep:
            assert peer.client.wait_for_policy(60.0), nodes.log("policy")[-2000:]
        yield SimpleNamespace(nodes=nodes, peer=peer)
    finally:
        if peer is not None:
            peer.close()
        nodes.__exit__(None, None, None)


@pytest.fixture(scope="module")
def lockstep(tiny_checkpoint, tmp_path_factory):
    yield from running_bridge(tiny_checkpoint, DOMAIN, tmp_path_factory.mktemp("lockstep_logs"), lockstep=True)


@pytest.fixture(scope="module")
def realtime(tiny_checkpoint, tmp_path_factory):
    yield from running_bridge(tiny_checkpoint, DOMAIN + 1, tmp_path_factory.mktemp("realtime_logs"), lockstep=False)


def observation_msgs(stamp, image: np.ndarray):
    proprio = np.array([0.0, 0.0, 0.2, 1.0, 0.0, 0.0, 0.0, 0.096], dtype=np.float32)
    joints = m.joint_state_msg([m.GRIPPER_JOINT], [float(proprio[7])], [0.0], stamp)
    return m.image_msg(image, stamp), m.pose_msg(proprio, stamp), joints


def test_robot_state_messages_carry_the_env_proprio_exactly():
    """Pose + joint_states -> the env's proprio (envs.PROPRIO_NAMES), the gripper opening's
    velocity included; a joint state without velocities is refused, naming what is missing."""
    stamp = m.Time(sec=1, nanosec=0)
    proprio = np.array([0.1, -0.05, 0.2, 1.0, 0.0, 0.0, 0.0, 0.07, -0.31], dtype=np.float32)
    joints = m.joint_state_msg(["arm_1", m.GRIPPER_JOINT], [0.3, float(proprio[7])], [0.0, float(proprio[8])], stamp)
    assert np.array_equal(m.proprio_from_msgs(m.pose_msg(proprio, stamp), joints), proprio)
    assert len(proprio) == len(envs.PROPRIO_NAMES)
    joints.velocity = []
    with pytest.raises(m.MalformedMessage, match="2 names but 0 velocities"):
        m.proprio_from_msgs(m.pose_msg(proprio, stamp), joints)


def test_publish_subscribe_round_trip_through_the_policy_node(lockstep):
    peer = lockstep.peer
    node = peer.node
    image_pub = node.create_publisher(m.Image, ros.IMAGE, ros.STREAM_QOS)
    pose_pub = node.create_publisher(PoseStamped, ros.EE_POSE, ros.STREAM_QOS)
    joints_pub = node.create_publisher(JointState, ros.JOINT_STATES, ros.STREAM_QOS)
    instruction_pub = node.create_publisher(String, ros.INSTRUCTION, ros.LATCHED_QOS)
    commands = []
    node.create_subscription(TwistStamped, ros.CMD_TWIST, commands.append, ros.STREAM_QOS)
    instruction_pub.publish(String(data="touch the red cube"))
    assert peer.spin_until(lambda: image_pub.get_subscription_count() > 0, 10.0)
    peer.spin_for(0.3)

    stamp = node.get_clock().now().to_msg()
    image = np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    sent = time.monotonic()
    for msg, pub in zip(observation_msgs(stamp, image), (image_pub, pose_pub, joints_pub), strict=True):
        pub.publish(msg)
    key = m.stamp_key(stamp)
    assert peer.spin_until(lambda: any(m.stamp_key(c.header.stamp) == key for c in commands), 10.0)
    reply = next(c for c in commands if m.stamp_key(c.header.stamp) == key)
    assert reply.header.frame_id == ros.WORLD_FRAME
    assert time.monotonic() - sent < 5.0
    for name in ("image_pub", "pose_pub", "joints_pub", "instruction_pub"):
        node.destroy_publisher(locals()[name])


def test_action_goal_gives_feedback_every_step_and_a_result(lockstep):
    outcome = lockstep.peer.client.run(task="reach", seed=EVAL_SEED_BASE, max_steps=12, timeout=60)
    assert outcome.accepted and outcome.status == GoalStatus.STATUS_SUCCEEDED
    result = outcome.result
    assert 1 <= result.steps <= 12 and result.instruction
    assert [f.step for f in outcome.feedback] == list(range(1, result.steps + 1))
    elapsed = [f.elapsed for f in outcome.feedback]
    assert elapsed == sorted(elapsed)
    assert len(result.round_trip) == result.steps and all(0 < t < 5 for t in result.round_trip)


def test_an_instruction_the_policy_cannot_act_on_aborts_the_goal_with_its_reason(lockstep):
    # punctuation alone normalises to nothing: the policy stops and says so (out-of-scope
    # objects take the same path, with the reader's "nothing named" answer as the reason)
    outcome = lockstep.peer.client.run(task="reach", seed=EVAL_SEED_BASE, instruction="?!", max_steps=50, timeout=60)
    assert outcome.accepted and outcome.status == GoalStatus.STATUS_ABORTED, outcome
    assert outcome.result.message.startswith(ros.OUT_OF_SCOPE) and "is empty" in outcome.result.message
    assert outcome.result.steps < 50 and not outcome.result.success
    assert all(not np.any(f.last_action[:6]) for f in outcome.feedback)  # it never moved
    followed = lockstep.peer.client.run(task="reach", seed=EVAL_SEED_BASE, max_steps=3, timeout=60)
    assert followed.status == GoalStatus.STATUS_SUCCEEDED  # the next goal runs as usual


def test_cancel_ends_the_goal_and_stops_the_robot_at_once(lockstep):
    peer = lockstep.peer
    outcome = peer.client.run(task="reach", seed=EVAL_SEED_BASE + 1, timeout=60, cancel_when=lambda fb: len(fb) >= 3)
    assert outcome.status == GoalStatus.STATUS_CANCELED
    assert outcome.result.message == "canceled" and outcome.result.steps < 20
    frames = []
    subscription = peer.node.create_subscription(m.Image, ros.IMAGE, frames.append, ros.STREAM_QOS)
    peer.spin_for(0.5)
    assert frames == []  # lock-step: no goal, no steps, no new frames
    peer.node.destroy_subscription(subscription)


def reset_estops(peer: Peer) -> None:
    for service in ("/vla_sim/reset_estop", "/vla_policy/reset_estop"):
        client = peer.node.create_client(Trigger, service)
        assert client.wait_for_service(timeout_sec=10.0), service
        future = client.call_async(Trigger.Request())
        assert peer.spin_until(future.done, 10.0)
        assert future.result().success, service
        peer.node.destroy_client(client)


def test_estop_aborts_the_goal_and_latches_until_reset(lockstep):
    peer = lockstep.peer
    events = Recorder(peer, String, ros.SAFETY_EVENTS, ros.STREAM_QOS)
    estop = peer.node.create_publisher(Bool, ros.ESTOP, ros.ESTOP_QOS)
    assert peer.spin_until(lambda: estop.get_subscription_count() >= 2, 10.0)

    def stop_at_step_3(feedback) -> None:
        if feedback.step == 3:
            estop.publish(Bool(data=True))

    # Engaged mid-goal: the goal ends ABORTED saying why, not SUCCEEDED at the time limit.
    stopped = peer.client.run(task="reach", seed=EVAL_SEED_BASE, timeout=60, on_feedback=stop_at_step_3)
    assert stopped.accepted and stopped.status == GoalStatus.STATUS_ABORTED, stopped.result
    assert stopped.result.message.startswith(ros.ABORT_ESTOP) and "reset_estop" in stopped.result.message
    assert 3 <= stopped.result.steps < 60 and not stopped.result.success
    # A goal sent while the stop is latched ends at once, without a step.
    latched = peer.client.run(task="reach", seed=EVAL_SEED_BASE, max_steps=5, timeout=60)
    assert latched.status == GoalStatus.STATUS_ABORTED and latched.result.steps == 0
    assert latched.result.message.startswith(ros.ABORT_ESTOP)

    both = {f"sim: {ros.ESTOP_LATCHED}", f"policy: {ros.ESTOP_LATCHED}"}
    assert peer.spin_until(lambda: both <= {msg.data for _, msg in events.messages}, 10.0)
    reset_estops(peer)
    # A stop written before the reset (the test's, or a node's repeat of it) that arrives late
    # does not latch again.
    moving = peer.client.run(task="reach", seed=EVAL_SEED_BASE, max_steps=5, timeout=60)
    assert moving.status == GoalStatus.STATUS_SUCCEEDED and moving.result.steps == 5, moving.result
    assert any(np.any(f.last_action[:6]) for f in moving.feedback)
    peer.node.destroy_publisher(estop)
    events.close()


def test_malformed_images_and_instructions_are_logged_and_the_nodes_keep_serving(lockstep):
    peer, nodes = lockstep.peer, lockstep.nodes
    node = peer.node
    image_pub = node.create_publisher(m.Image, ros.IMAGE, ros.STREAM_QOS)
    pose_pub = node.create_publisher(PoseStamped, ros.EE_POSE, ros.STREAM_QOS)
    joints_pub = node.create_publisher(JointState, ros.JOINT_STATES, ros.STREAM_QOS)
    instruction_pub = node.create_publisher(String, ros.INSTRUCTION, ros.LATCHED_QOS)
    assert peer.spin_until(lambda: image_pub.get_subscription_count() > 0, 10.0)

    def publish(image_msg) -> None:
        stamp = node.get_clock().now().to_msg()
        _, pose, joints = observation_msgs(stamp, np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))
        image_msg.header.stamp = stamp
        for msg, pub in ((pose, pose_pub), (joints, joints_pub), (image_msg, image_pub)):
            pub.publish(msg)
        peer.spin_for(0.1)

    stamp = node.get_clock().now().to_msg()
    publish(m.image_msg(np.zeros((64, 64, 3), np.uint8), stamp))  # wrong size
    bgr = m.image_msg(np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), stamp)
    bgr.encoding = "bgr8"
    publish(bgr)  # wrong encoding
    short = m.image_msg(np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), stamp)
    short.data = bytes(10)
    publish(short)  # truncated data
    # one at a time: the latched topic keeps only the newest, and a busy node may read once for both
    instruction_pub.publish(String(data="touch the red cube \u2603"))  # a character outside the set
    assert peer.spin_until(lambda: "outside the allowed set" in nodes.log("policy"), 30.0)
    instruction_pub.publish(String(data="x" * 10_000))
    assert peer.spin_until(lambda: "10000 characters" in nodes.log("policy"), 30.0)
    rejected = peer.client.run(instruction="a" * 10_000, task="reach", seed=EVAL_SEED_BASE, timeout=30)
    assert not rejected.accepted

    ok = peer.client.run(task="reach", seed=EVAL_SEED_BASE, max_steps=5, timeout=60)
    assert ok.accepted and ok.result.steps == 5
    assert all(p.poll() is None for p in nodes.processes.values())
    policy_log, sim_log = nodes.log("policy"), nodes.log("sim")
    assert f"image must be {IMAGE_SIZE}x{IMAGE_SIZE}" in policy_log
    assert "image encoding must be 'rgb8', got 'bgr8'" in policy_log
    assert "image data has 10 bytes" in policy_log
    assert "instruction ignored, robot held still: instruction has characters outside the allowed set" in policy_log
    assert "instruction has 10000 characters, more than the 256 allowed" in policy_log
    assert "goal rejected: instruction has 10000 characters" in sim_log
    assert "Traceback" not in policy_log + sim_log
    for pub in (image_pub, pose_pub, joints_pub, instruction_pub):
        node.destroy_publisher(pub)


def test_policy_node_gone_aborts_the_goal_and_its_sigint_exit_is_clean(lockstep):
    """The last test of the lock-step bridge: it stops that policy node. SIGINT mid-goal, as a
    launcher stops a node; the node leaves the ROS graph, and the goal ends ABORTED saying so
    (lock-step waits 30 s for a slow answer, so only the graph tells this early)."""
    peer, nodes = lockstep.peer, lockstep.nodes
    feedback = []
    goal = peer.client.client.send_goal_async(
        load_action().Goal(task="push", seed=EVAL_SEED_BASE, max_steps=0), feedback_callback=feedback.append
    )
    assert peer.spin_until(goal.done, 10.0) and goal.result().accepted
    assert peer.spin_until(lambda: len(feedback) >= 1, 30.0), nodes.log("sim")[-2000:]
    policy = nodes.processes["policy"]
    os.killpg(policy.pid, signal.SIGINT)
    result = goal.result().get_result_async()
    assert peer.spin_until(result.done, 20.0), nodes.log("sim")[-2000:]
    response = result.result()
    assert response.status == GoalStatus.STATUS_ABORTED, response.result
    assert response.result.message.startswith(ros.ABORT_POLICY_GONE), response.result.message
    assert response.result.steps < 120  # push's time limit: it did not run on to the end
    assert policy.wait(timeout=30) == 0, nodes.log("policy")[-3000:]
    assert "Traceback" not in nodes.log("policy"), nodes.log("policy")[-3000:]


def test_policy_node_sigint_while_loading_exits_cleanly(tiny_checkpoint):
    """Ctrl-C while torch and the checkpoint load (seconds) is a normal stop too: exit code 0,
    no traceback."""
    command = [sys.executable, "-m", "ros2_bridge.policy_node", "--ros-args", "-p", f"checkpoint:={tiny_checkpoint}"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    # SIGINT as a shell or launcher hands it over: the full suite's pytest process was seen with
    # SIGINT ignored (0x6 in the child's SigIgn), which a child inherits, and the node keeps an
    # inherited "ignore" on purpose (nohup).
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=ros_env(DOMAIN),
        text=True,
        start_new_session=True,
        preexec_fn=default_sigint,
        **pipes,
    )
    try:
        # Once torch's libraries are mapped, the node's own module is running (it imports torch).
        maps = Path(f"/proc/{process.pid}/maps")
        deadline = time.monotonic() + 60.0
        while process.poll() is None and time.monotonic() < deadline:
            if "libtorch" in maps.read_text(errors="replace"):
                break
            time.sleep(0.02)
        assert process.poll() is None, "the node ended before it was interrupted"
        status = Path(f"/proc/{process.pid}/status").read_text()  # how the node held SIGINT then
        held = [line for line in status.splitlines() if line.startswith(("SigBlk", "SigIgn", "SigCgt"))]
        os.killpg(process.pid, signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the node kept running after SIGINT; its signal masks then: {held}") from None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]


def test_command_flood_at_1khz_is_survived_and_logged_once(realtime):
    peer, nodes = realtime.peer, realtime.nodes
    twist_pub = peer.node.create_publisher(TwistStamped, ros.CMD_TWIST, ros.STREAM_QOS)
    gripper_pub = peer.node.create_publisher(JointState, ros.CMD_GRIPPER, ros.STREAM_QOS)
    assert peer.spin_until(lambda: twist_pub.get_subscription_count() > 0, 10.0)
    feedback = []
    goal = peer.client.client.send_goal_async(
        load_action().Goal(task="reach", seed=EVAL_SEED_BASE, max_steps=0), feedback_callback=feedback.append
    )
    assert peer.spin_until(goal.done, 10.0) and goal.result().accepted

    def publish(non_finite: bool, malformed: bool) -> None:
        """One command pair: a NaN twist if ``non_finite``, a wrongly named gripper if ``malformed``."""
        twist, gripper = m.command_msgs(
            np.full(7, np.nan) if non_finite else np.zeros(7), peer.node.get_clock().now().to_msg()
        )
        if malformed:
            gripper.name = ["not_a_gripper", "x"]
        gripper_pub.publish(gripper)
        twist_pub.publish(twist)

    start = time.monotonic()
    # 1.8 s at 1 kHz, some of it garbage. The sim samples the latest pair once per control step,
    # so a lone bad message may never be seen: each kind of garbage also fills whole windows of
    # 0.3 s (6 control steps), twice each, between windows of sporadic garbage. Under the flood
    # a sim on a loaded machine steps far less often than every 50 ms (CI runs of sessions 23 and
    # 24 each missed one kind when its bursts lasted 3 control steps), so the windows are long.
    for i in range(1800):
        window = int((time.monotonic() - start) / 0.3) % 3
        burst = "non_finite" if window == 1 else "malformed" if window == 2 else None
        publish(
            non_finite=burst == "non_finite" or (burst is None and i % 10 == 0),
            malformed=burst == "malformed" or (burst is None and i % 7 == 0),
        )
        peer.executor.spin_once(timeout_sec=0)
        time.sleep(max(0.0, start + (i + 1) / 1000 - time.monotonic()))
    during = len(feedback)
    result = goal.result().get_result_async()
    wanted = ("non-finite command", "malformed command replaced by a stop")

    def sim_errors() -> list[str]:
        return [line for line in nodes.log("sim").splitlines() if line.startswith("[ERROR]")]

    # Under the flood a sim on a loaded machine steps rarely and may never sample one kind of
    # garbage (CI runs of sessions 23 and 24 each missed one). So, after it, whichever kind is not
    # logged yet keeps coming at 100 Hz, a rate the sim keeps up with, for at most 10 s while the
    # episode runs; fresh messages also keep the watchdog, which stops a silent stream first, fed.
    deadline = time.monotonic() + 10.0
    while not result.done() and time.monotonic() < deadline:
        missing = [w for w in wanted if not any(w in line for line in sim_errors())]
        if not missing:
            break
        publish(non_finite=missing[0] == wanted[0], malformed=missing[0] == wanted[1])
        peer.executor.spin_once(timeout_sec=0.01)
    # Survived: it keeps stepping; on a loaded machine the flood can outlast the reach task's
    # 3-s time limit, and then the episode must have ended on that limit, not on an error.
    assert peer.spin_until(lambda: len(feedback) > during or result.done(), 10.0)
    if result.done():
        assert result.result().result.message == "time limit", result.result().result
    else:
        cancel = goal.result().cancel_goal_async()
        assert peer.spin_until(cancel.done, 10.0)
        assert peer.spin_until(result.done, 10.0) and result.result().status == GoalStatus.STATUS_CANCELED
    assert all(p.poll() is None for p in nodes.processes.values())
    deadline = time.monotonic() + 5.0  # the node's log reaches its file a little later than the goal ends
    while True:
        errors = sim_errors()
        if all(any(w in line for line in errors) for w in wanted) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert any("non-finite command" in line for line in errors), errors
    assert any("malformed command replaced by a stop" in line for line in errors), errors
    assert len(errors) < 10, errors  # one line per kind, not one per message
    peer.node.destroy_publisher(twist_pub)
    peer.node.destroy_publisher(gripper_pub)


class Recorder:
    """Messages of one topic with their DDS source timestamps (the publisher's clock at the
    write, ns): the order in which one node published them, whatever order they arrive in."""

    def __init__(self, peer: Peer, msg_type: type, topic: str, qos: QoSProfile) -> None:
        self.peer = peer
        self.messages: list[tuple[int, object]] = []
        self.subscription = peer.node.create_subscription(
            msg_type, topic, lambda msg, info: self.messages.append((info["source_timestamp"], msg)), qos
        )

    def after(self, source_ns: int) -> list:
        return [msg for t, msg in self.messages if t > source_ns]

    def close(self) -> None:
        self.peer.node.destroy_subscription(self.subscription)


def moves(twist: TwistStamped) -> bool:
    lin, ang = twist.twist.linear, twist.twist.angular
    return any(v != 0.0 for v in (lin.x, lin.y, lin.z, ang.x, ang.y, ang.z))


def moving(feedback: list) -> bool:
    """Did any (arrival time, feedback) pair report a moving command?"""
    return any(np.any(f.last_action[:6]) for _, f in feedback)


def start_moving_goal(
    peer: Peer, feedback: list, max_steps: int = 0, nodes: NodeProcesses | None = None
) -> ClientGoalHandle:
    """A realtime goal, returned once the robot moves; ``feedback`` collects (arrival time,
    feedback) pairs. The policy's first commands can be slow on a loaded machine, and a goal
    may then end (time limit, or its 1 s without a command) before the robot ever moved: such a
    goal is sent again, twice at most, and the failure names how each attempt ended."""
    attempts = []
    for _ in range(3):
        feedback.clear()
        goal = peer.client.client.send_goal_async(
            load_action().Goal(task="reach", seed=EVAL_SEED_BASE, max_steps=max_steps),
            feedback_callback=lambda msg: feedback.append((time.monotonic(), msg.feedback)),
        )
        assert peer.spin_until(goal.done, 10.0) and goal.result().accepted
        result = goal.result().get_result_async()

        peer.spin_until(lambda r=result: moving(feedback) or r.done(), 20.0)
        if moving(feedback) and not result.done():
            return goal.result()
        attempts.append(result.result().result.message if result.done() else f"no motion, {len(feedback)} steps")
    logs = {name: nodes.log(name)[-2000:] for name in ("policy", "sim")} if nodes is not None else {}
    raise AssertionError(f"the robot never moved in 3 goals: {attempts}; logs: {logs}")


def test_after_cancel_the_policy_publishes_only_stops(realtime):
    peer = realtime.peer
    twists = Recorder(peer, TwistStamped, ros.CMD_TWIST, ros.STREAM_QOS)
    acks = Recorder(peer, String, ros.INSTRUCTION_ACK, ros.LATCHED_QOS)
    handle = start_moving_goal(peer, [], nodes=realtime.nodes)
    assert any(moves(t) for t in twists.after(0)), "the policy should be publishing motion"
    cancel_sent = time.time_ns()
    handle.cancel_goal_async()
    result = handle.get_result_async()
    assert peer.spin_until(result.done, 10.0) and result.result().status == GoalStatus.STATUS_CANCELED

    # The simulator tells the policy that no goal executes (instruction ""); the policy says it
    # got it on its acknowledgement topic. From then on it publishes stops only, although the
    # idle simulator keeps streaming camera frames for it to act on.
    def idle_ack() -> int | None:
        return next((t for t, msg in acks.messages if t > cancel_sent and msg.data == ""), None)

    assert peer.spin_until(lambda: idle_ack() is not None, 10.0), "the policy never acknowledged the goal's end"
    # at its rate (20 Hz) five take 0.25 s; a loaded machine may take several seconds
    assert peer.spin_until(lambda: len(twists.after(idle_ack())) >= 5, 20.0), "the policy stopped publishing"
    later = twists.after(idle_ack())
    assert not any(moves(t) for t in later), [t.twist for t in later if moves(t)][:3]
    twists.close()
    acks.close()


def test_estop_latches_in_the_policy_at_once_and_aborts_the_goal(realtime):
    peer = realtime.peer
    twists = Recorder(peer, TwistStamped, ros.CMD_TWIST, ros.STREAM_QOS)
    events = Recorder(peer, String, ros.SAFETY_EVENTS, ros.STREAM_QOS)
    estop = peer.node.create_publisher(Bool, ros.ESTOP, ros.ESTOP_QOS)
    assert peer.spin_until(lambda: estop.get_subscription_count() >= 2, 10.0)
    handle = start_moving_goal(peer, [], nodes=realtime.nodes)
    estop_sent = time.time_ns()
    estop.publish(Bool(data=True))
    result = handle.get_result_async()
    assert peer.spin_until(result.done, 10.0)
    assert result.result().status == GoalStatus.STATUS_ABORTED, result.result().result
    assert result.result().result.message.startswith(ros.ABORT_ESTOP)

    def latched(node: str) -> int | None:
        return next((t for t, msg in events.messages if msg.data == f"{node}: {ros.ESTOP_LATCHED}"), None)

    assert peer.spin_until(lambda: latched("policy") is not None and latched("sim") is not None, 10.0)
    # Every command the policy published after its latch (its own clock, so no arrival-order
    # race) is a stop; it kept publishing them.
    assert peer.spin_until(lambda: len(twists.after(latched("policy"))) >= 5, 20.0), "the policy stopped publishing"
    after_latch = twists.after(latched("policy"))
    assert not any(moves(t) for t in after_latch), [t.twist for t in after_latch][:3]
    assert latched("policy") - estop_sent < 5e9  # generous: the point is the ordering above
    reset_estops(peer)
    peer.node.destroy_publisher(estop)
    twists.close()
    events.close()


def test_watchdog_stops_the_robot_when_the_policy_node_dies(realtime):
    """The last test of the realtime bridge: it kills that policy node."""
    peer, nodes = realtime.peer, realtime.nodes
    twist_pub = peer.node.create_publisher(TwistStamped, ros.CMD_TWIST, ros.STREAM_QOS)
    gripper_pub = peer.node.create_publisher(JointState, ros.CMD_GRIPPER, ros.STREAM_QOS)
    feedback: list[tuple[float, object]] = []
    handle = start_moving_goal(peer, feedback, max_steps=400, nodes=nodes)

    before_kill = peer.node.get_clock().now().to_msg()  # the stamp of a command sent before the death
    os.killpg(nodes.processes["policy"].pid, signal.SIGKILL)  # dies mid-episode, no goodbye
    killed = time.monotonic()

    result = handle.get_result_async()

    def stopped() -> bool:  # a zero command applied, or (on a loaded machine) the goal already aborted
        return result.done() or any(t > killed and not np.any(f.last_action[:6]) for t, f in feedback)

    assert peer.spin_until(stopped, 10.0), "the robot kept moving (or stopped reporting) after the policy died"
    # The stop lasts: after abort_after (1 s) without a command the goal ends ABORTED, saying
    # why, instead of running on to its time limit and ending SUCCEEDED. (A crashed node stays
    # on the ROS graph for DDS's 20-s lease, so here the silence tells first.)
    assert peer.spin_until(result.done, 10.0), "the goal kept running without a policy"
    assert result.result().status == GoalStatus.STATUS_ABORTED, result.result().result
    assert result.result().result.message.startswith(ros.ABORT_NO_COMMAND), result.result().result.message
    assert result.result().result.steps < 400
    after = [f for t, f in feedback if t > killed]
    # the first zero command, or the end of the goal if it aborted before the sim's next step
    first_stop = next((i for i, f in enumerate(after) if not np.any(f.last_action[:6])), len(after))
    # Counted in control steps, not seconds (a wall-clock bound flaked on the loaded 2-core CI
    # machine): after the kill the robot may still execute the steps already in flight and
    # those within the watchdog timeout, then it stops and stays stopped.
    in_flight = 3
    assert first_stop <= round(WATCHDOG_TIMEOUT / CONTROL_DT) + in_flight, [list(f.last_action) for f in after[:6]]
    assert all(not np.any(f.last_action[:6]) for f in after[first_stop:])
    assert "watchdog" in nodes.log("sim") or first_stop == len(after)  # aborted before the watchdog's step

    def send(stamp) -> None:
        twist, gripper = m.command_msgs(np.array([1.0, 0, 0, 0, 0, 0, 1.0]), stamp)
        gripper_pub.publish(gripper)
        twist_pub.publish(twist)

    # A command answering an observation from before the stop (as a dead policy's queued one
    # would) cannot restart the robot, in this goal or the next; one answering a later
    # observation can. (Well within the next goal's 1 s without a command.)
    goal = peer.client.client.send_goal_async(
        load_action().Goal(task="reach", seed=EVAL_SEED_BASE, max_steps=400),
        feedback_callback=lambda msg: feedback.append((time.monotonic(), msg.feedback)),
    )
    assert peer.spin_until(goal.done, 10.0) and goal.result().accepted
    handle = goal.result()
    late = time.monotonic()
    for _ in range(5):
        send(before_kill)
        peer.spin_for(0.05)
    assert all(not np.any(f.last_action[:6]) for t, f in feedback if t > late)

    def fresh_command_moves() -> bool:
        send(peer.node.get_clock().now().to_msg())
        return any(np.any(f.last_action[:6]) for t, f in feedback if t > late)

    assert peer.spin_until(fresh_command_moves, 10.0), "a fresh command should move the robot again"
    handle.cancel_goal_async()
    result = handle.get_result_async()
    assert peer.spin_until(result.done, 10.0) and result.result().status == GoalStatus.STATUS_CANCELED
    assert nodes.processes["sim"].poll() is None
    peer.node.destroy_publisher(twist_pub)
    peer.node.destroy_publisher(gripper_pub)


def test_evaluate_command_matches_in_process_evaluation(tiny_checkpoint, tmp_path):
    out = tmp_path / "eval"
    command = [
        sys.executable,
        "-m",
        "ros2_bridge.evaluate",
        f"checkpoint={tiny_checkpoint}",
        "episodes=3",
        "tasks=[reach]",
        f"domain_id={DOMAIN + 2}",
        f"out_dir={out}",
    ]
    env = {**ros_env(DOMAIN + 2), "OMP_NUM_THREADS": "1"}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, text=True, start_new_session=True, **pipes)
    try:
        stdout, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, stderr[-3000:]
    report = json.loads((out / "evaluation.json").read_text())
    assert report["agreement"] == {"episodes": 3, "same_outcome": 3, "same_length": 3}
    assert report["ros2_per_episode"][0]["seeds"] == [EVAL_SEED_BASE + i for i in range(3)]
    assert report["latency"]["steps"] == sum(report["ros2_per_episode"][0]["lengths"])
    assert report["latency"]["safety_events"] == {}  # nothing clamped: the rollouts are the same
    assert "Per-episode agreement: 3/3" in stdout


def test_policy_node_with_a_missing_checkpoint_is_one_clear_error(tmp_path):
    command = [sys.executable, "-m", "ros2_bridge.policy_node", "--ros-args", "-p", f"checkpoint:={tmp_path}/none.pt"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=ros_env(DOMAIN), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "cannot start" in result.stderr and "no checkpoint at" in result.stderr
    assert "Traceback" not in result.stderr
    # `-p` without --ros-args (as an old version of docs/ros2.md had it) is no ROS argument: say so
    del command[3]
    result = subprocess.run(command, cwd=REPO_ROOT, env=ros_env(DOMAIN), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "-p counts only after --ros-args" in result.stderr, result.stderr[-2000:]
