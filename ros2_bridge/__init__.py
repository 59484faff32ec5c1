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


_orderly_stop = False  # set once a node runs: from then on a SIGINT stops it in order


def exit_quietly_on_sigint() -> None:
    """Until a node runs, Ctrl-C (SIGINT) ends the process at once with exit code 0 and no
    traceback. Importing rclpy and torch and loading a checkpoint take seconds, and a launcher
    that stops a node meanwhile (``processes.stop`` sends SIGINT) must not read as a crash. At
    once (``os._exit``), not by an exception: nothing is open yet, and a SystemExit or
    KeyboardInterrupt raised while a library loads can land in its bare ``except:`` and be
    lost, and the node then starts as if never stopped (seen on a loaded machine). Call it
    before ``rclpy.init``: rclpy's handler chains to the one installed then."""
    import signal

    if signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, None):  # keep an inherited "ignore"
        signal.signal(signal.SIGINT, _on_sigint)


def stop_orderly_from_now() -> None:
    """From now on a SIGINT raises KeyboardInterrupt, which a node's ``main`` catches to close
    the node in order. No signal disposition changes: ``signal.signal`` now would replace
    rclpy's handler, which wakes the executor."""
    global _orderly_stop
    _orderly_stop = True


def _on_sigint(signum: int, frame: object) -> None:
    if _orderly_stop:
        raise KeyboardInterrupt
    import os

    os._exit(0)
