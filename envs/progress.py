"""Progress bars for long work, in every layer (collection, grounding, training, evaluation).

``progress(...)`` is tqdm on a terminal. Piped through ``tee`` or into a file, tqdm's
carriage-return refreshes pile up (a quick start once printed 333 KB of them), so there it
prints one plain line every ``LINE_INTERVAL_S`` seconds instead. A run log
(``vla.app.console.run_log``) gets such a line every ``LINE_INTERVAL_S`` seconds too.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

LINE_INTERVAL_S = 10.0  # seconds between two progress lines in a pipe, a file or the run log
_run_log: TextIO | None = None  # the open run log, if any (log_progress_to)


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` (or the terminal behind a run log's tee) is a terminal."""
    stream = getattr(stream, "terminal", stream)  # through the run log's tee
    return bool(getattr(stream, "isatty", lambda: False)())


class progress(tqdm):  # noqa: N801 - used like tqdm, as a function
    """tqdm on a terminal; elsewhere a plain progress line every ``LINE_INTERVAL_S`` seconds."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._lines = not is_terminal(kwargs.get("file") or sys.stderr)
        if self._lines:
            kwargs["mininterval"] = LINE_INTERVAL_S
        self._logged_at = self._printed_at = time.monotonic()
        self._printed_n: float | None = None
        super().__init__(*args, **kwargs)

    def _line(self) -> str:
        return self.format_meter(**{**self.format_dict, "ncols": 0})  # ncols 0: stats, no bar

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if self._lines:  # tqdm refreshes on every set_postfix: a line at most every LINE_INTERVAL_S
            if msg == "":
                return False  # a finished bar's clearing: nothing to clear (no carriage return)
            if time.monotonic() - self._printed_at >= LINE_INTERVAL_S:
                self._print_line()
            return True
        shown = super().display(msg, pos)
        if _run_log is not None and msg != "" and time.monotonic() - self._logged_at >= LINE_INTERVAL_S:
            self._logged_at = time.monotonic()
            _run_log.write(self._line() + "\n")
            _run_log.flush()
        return shown

    def _print_line(self) -> None:
        self._printed_at, self._printed_n = time.monotonic(), self.n
        self.fp.write(self._line() + "\n")
        self.fp.flush()

    def close(self) -> None:
        if not self.disable:
            if self._lines:
                if self._printed_n != self.n:
                    self._print_line()  # the last word
                self.leave = False  # nothing to clear or end: the line above is complete
            elif _run_log is not None:
                _run_log.write(self._line() + "\n")
        super().close()


def log_progress_to(log: TextIO | None) -> None:
    """Also write a progress line every ``LINE_INTERVAL_S`` seconds to ``log`` (a run log
    that drops terminal refreshes; None: stop)."""
    global _run_log
    _run_log = log
