"""A client of the ``execute_instruction`` action: send one goal, collect its feedback,
wait for the result (cancelling it if it runs past a deadline)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ros2_bridge import require_ros

require_ros()  # before any ROS import: one clear message without the ros2 extra

from action_msgs.msg import GoalStatus  # noqa: E402
from geometry_msgs.msg import TwistStamped  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from rclpy.executors import Executor, SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402

from ros2_bridge import ros  # noqa: E402
from ros2_bridge.interfaces import load_action  # noqa: E402

ExecuteInstruction = load_action()


@dataclass
class Outcome:
    accepted: bool
    status: int = GoalStatus.STATUS_UNKNOWN  # GoalStatus.STATUS_SUCCEEDED / _CANCELED / _ABORTED
    result: object = None  # ExecuteInstruction.Result
    feedback: list = field(default_factory=list)


class InstructionClient:
    """Owns a node and an executor; ``run`` blocks until the goal ends."""

    def __init__(self, node: Node, executor: Executor | None = None):
        self.node = node
        self.client = ActionClient(node, ExecuteInstruction, ros.EXECUTE_INSTRUCTION)
        if executor is None:
            executor = SingleThreadedExecutor(context=node.context)
            executor.add_node(node)
        self.executor = executor

    def wait_for_server(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.client.server_is_ready():
                return True
            self.executor.spin_once(timeout_sec=0.1)
        return False

    def wait_for_policy(self, timeout: float) -> bool:
        """True once the policy node publishes commands (it does at its rate once it sees frames)."""
        heard: list = []
        subscription = self.node.create_subscription(TwistStamped, ros.CMD_TWIST, heard.append, ros.STREAM_QOS)
        deadline = time.monotonic() + timeout
        while not heard and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.1)
        self.node.destroy_subscription(subscription)
        return bool(heard)

    def run(
        self,
        instruction: str = "",
        task: str = "",
        seed: int = -1,
        split: str = "",
        max_steps: int = 0,
        timeout: float = 300.0,
        on_feedback: Callable[[object], None] | None = None,
        cancel_when: Callable[[list], bool] | None = None,
    ) -> Outcome:
        """Send a goal; cancel it after ``timeout`` s or as soon as ``cancel_when(feedback)``."""
        goal = ExecuteInstruction.Goal(instruction=instruction, task=task, seed=seed, split=split, max_steps=max_steps)
        outcome = Outcome(accepted=False)

        def feedback(msg) -> None:
            outcome.feedback.append(msg.feedback)
            if on_feedback is not None:
                on_feedback(msg.feedback)

        sent = self.client.send_goal_async(goal, feedback_callback=feedback)
        self.executor.spin_until_future_complete(sent, timeout_sec=10.0)
        handle = sent.result()
        if handle is None or not handle.accepted:
            return outcome
        outcome.accepted = True
        result = handle.get_result_async()
        deadline = time.monotonic() + timeout
        cancelled = False
        while not result.done():
            self.executor.spin_once(timeout_sec=0.05)
            late = time.monotonic() > deadline
            if not cancelled and (late or (cancel_when is not None and cancel_when(outcome.feedback))):
                if late:
                    self.node.get_logger().error(f"goal ran past {timeout:.0f} s: cancelling it")
                handle.cancel_goal_async()
                cancelled = True
        response = result.result()
        outcome.status, outcome.result = response.status, response.result
        return outcome
