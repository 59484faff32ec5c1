"""The ROS 2 bridge's safety layer in plain Python (no rclpy needed): clamp, NaN/inf, watchdog,
emergency stop, throttled error reports."""

from __future__ import annotations

import numpy as np
import pytest

from ros2_bridge import safety
from ros2_bridge.safety import SafetyFilter, SafetyLimits, ThrottledLog, Watchdog


class FakeClock:
    """Time that moves only when told: the watchdog is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_filter(**limits) -> tuple[SafetyFilter, FakeClock, list[str]]:
    clock, logged = FakeClock(), []
    f = SafetyFilter(SafetyLimits(**limits), log=logged.append, clock=clock)
    f.feed()
    return f, clock, logged


CENTRE = np.array([0.0, 0.0, 0.2])


def test_scaling_constants_match_the_env():
    from envs import tabletop_env

    assert safety.CONTROL_DT == pytest.approx(tabletop_env.CONTROL_DT)
    assert safety.MAX_TRANSLATION == tabletop_env.MAX_TRANSLATION
    assert safety.MAX_ROTATION == tabletop_env.MAX_ROTATION


def test_commands_within_the_limits_pass_bit_identical():
    f, _, logged = make_filter()
    command = np.array([0.3, -0.7, 0.1, 0.05, -1.0, 1.0, 0.42], dtype=np.float32)
    out, why = f.filter(command, CENTRE)
    assert why is None and out.dtype == np.float32 and np.array_equal(out, command)
    assert f.stats.total() == 0 and not logged


def test_velocity_limits_clamp_translation_and_rotation():
    f, _, _ = make_filter(max_linear_speed=0.1, max_angular_speed=0.6)  # 0.2 and 0.2 of full scale
    out, why = f.filter([1.0, -1.0, 0.1, 1.0, -0.5, 0.0, 3.0], CENTRE)
    assert why == "clamped"
    np.testing.assert_allclose(out, [0.2, -0.2, 0.1, 0.2, -0.2, 0.0, 1.0], atol=1e-6)


def test_workspace_clamp_stops_at_the_boundary_and_allows_moving_back():
    f, _, _ = make_filter(workspace_low=(-0.3, -0.3, 0.0), workspace_high=(0.3, 0.3, 0.4))
    near_top = np.array([0.0, 0.0, 0.39])  # 1 cm below the ceiling: at most 0.4 of a full step up
    out, why = f.filter([0, 0, 1.0, 0, 0, 0, -1], near_top)
    assert why == "clamped" and out[2] == pytest.approx(0.01 / safety.MAX_TRANSLATION, rel=1e-5)
    above = np.array([0.0, 0.0, 0.5])  # outside: further up is refused, down is allowed
    assert f.filter([0, 0, 1.0, 0, 0, 0, -1], above)[0][2] == 0.0
    assert f.filter([0, 0, -1.0, 0, 0, 0, -1], above)[0][2] == -1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_commands_become_a_stop_holding_the_gripper(bad):
    f, _, logged = make_filter()
    f.filter([0.5, 0, 0, 0, 0, 0, 1.0], CENTRE)  # gripper closed on something
    out, why = f.filter([bad, 0, 0, 0, 0, 0, 0], CENTRE)
    assert why == "non_finite" and np.array_equal(out, [0, 0, 0, 0, 0, 0, 1.0])
    assert len(logged) == 1 and "non-finite" in logged[0]


def test_a_flood_of_bad_commands_logs_one_line():
    f, clock, logged = make_filter()
    for _ in range(1000):
        clock.now += 0.001
        f.feed()
        f.filter([np.nan] * 7, CENTRE)
    assert len(logged) == 1 and f.stats.non_finite == 1000


def test_watchdog_stops_motion_after_its_timeout_and_resumes_when_fed():
    f, clock, logged = make_filter()  # default timeout: two control periods
    assert f.limits.watchdog_timeout == pytest.approx(2 * safety.CONTROL_DT)
    command = [1.0, 0, 0, 0, 0, 0, -1]
    clock.now += 0.09
    assert f.filter(command, CENTRE)[1] is None
    clock.now += 0.02  # 0.11 s since the last observation
    out, why = f.filter(command, CENTRE)
    assert why == "watchdog" and not out[:6].any()
    assert f.filter(command, CENTRE)[1] == "watchdog" and len(logged) == 1  # one line per stoppage
    f.feed()
    assert f.filter(command, CENTRE)[1] is None


def test_repeated_watchdog_stops_are_throttled_with_a_count():
    # What a loaded machine produced: a short stop every ~0.4 s for 7 s, each once logged on its
    # own line. Now the first stop is logged at once and the rest are summarised with a count.
    f, clock, logged = make_filter()
    command = [0.5, 0, 0, 0, 0, 0, -1]
    stops = 0
    for _ in range(18):
        clock.now += 0.25  # 0.25 s without a fresh observation: the watchdog trips
        assert f.filter(command, CENTRE)[1] == "watchdog"
        assert f.filter(command, CENTRE)[1] == "watchdog"  # the same stop: not a new event
        stops += 1
        clock.now += 0.14
        f.feed()  # fresh data again: the robot may move until the next stop
        assert f.filter(command, CENTRE)[1] is None
    assert stops == 18 and clock.now - 100.0 == pytest.approx(18 * 0.39)
    assert len(logged) == 2, logged
    assert "watchdog" in logged[0] and "more since the last report" not in logged[0]
    assert logged[1].endswith("(12 more since the last report)"), logged  # stops 2..13 of 18
    assert f.stats.watchdog == 36  # every replaced command is still counted


def test_watchdog_never_fed_is_expired():
    assert Watchdog(0.1, clock=FakeClock()).expired()


def test_estop_latches_until_reset():
    f, clock, logged = make_filter()
    f.engage_estop("test")
    for _ in range(5):
        clock.now += 0.01
        f.feed()
        out, why = f.filter([1.0, 1.0, 0, 0, 0, 0, 1.0], CENTRE)
        assert why == "estop" and not out[:6].any()
    assert any("emergency stop engaged" in line for line in logged)
    assert f.reset_estop() and not f.estopped
    assert f.filter([1.0, 1.0, 0, 0, 0, 0, 1.0], CENTRE)[1] is None
    assert not f.reset_estop()  # nothing left to release


def test_wrong_length_command_is_a_stop():
    f, _, logged = make_filter()
    out, why = f.filter([1.0, 2.0], CENTRE)
    assert why == "malformed" and not out[:6].any() and logged


def test_throttled_log_reports_how_many_it_held_back():
    clock, lines = FakeClock(), []
    report = ThrottledLog(lines.append, period=5.0, clock=clock)
    for _ in range(10):
        report("image", "bad image")
    clock.now += 6.0
    report("image", "bad image")
    report("instruction", "bad instruction")
    assert lines == ["bad image", "bad image (9 more since the last report)", "bad instruction"]


def test_invalid_limits_are_rejected():
    with pytest.raises(ValueError, match="workspace_low"):
        SafetyLimits(workspace_low=(0, 0, 1), workspace_high=(1, 1, 0.5))
    with pytest.raises(ValueError, match="watchdog_timeout"):
        SafetyLimits(watchdog_timeout=0)


def test_without_rclpy_the_bridge_says_how_to_install_it(monkeypatch):
    import importlib.util

    import ros2_bridge

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "rclpy" else real(name, *args))
    with pytest.raises(ImportError, match=r"pip install -e '\.\[ros2\]'"):
        ros2_bridge.require_ros()
