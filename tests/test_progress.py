"""Progress output: a plain line every few seconds in a pipe or file (no carriage-return
refreshes), and a run log that holds what the run printed and the error that ended it."""

from __future__ import annotations

import io
import sys

import pytest

import envs.progress as progress_module
from envs.progress import progress
from vla.app.console import run_log


def test_a_bar_in_a_pipe_prints_plain_lines_at_an_interval_and_a_last_line(monkeypatch):
    monkeypatch.setattr(progress_module, "LINE_INTERVAL_S", 0.0)  # a line at every refresh
    out = io.StringIO()
    bar = progress(total=3, desc="work", file=out, mininterval=0)
    for step in range(3):
        bar.update(1)
        bar.set_postfix(loss=step)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and lines and lines[-1].startswith("work: 100% 3/3")
    monkeypatch.setattr(progress_module, "LINE_INTERVAL_S", 3600.0)  # no refresh is due
    out = io.StringIO()
    with progress(range(100), desc="quiet", file=out) as bar:
        for _ in bar:
            pass
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]] and "100/100" in out.getvalue()


def test_the_run_log_holds_prints_and_the_error_that_ends_the_run(tmp_path):
    log = tmp_path / "run" / "job.log"
    with pytest.raises(SystemExit), run_log(log):
        print("config: tasks [reach]")
        print("half-way", file=sys.stderr)
        raise SystemExit("error: something a user can fix")
    text = log.read_text()
    assert "config: tasks [reach]" in text and "half-way" in text and "error: something a user can fix" in text
    assert sys.stdout is sys.__stdout__ or not hasattr(sys.stdout, "log")  # the tee is gone afterwards
