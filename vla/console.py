"""What a long job prints: progress bars on a terminal, a plain line every few seconds in a
pipe or a file, and a run log that holds everything the run printed.

``progress(...)`` is tqdm on a terminal. Piped through ``tee`` or into a file, tqdm's
carriage-return refreshes pile up (a quick start once printed 333 KB of them), so there it
prints one line every ``line_interval_s`` seconds instead. ``run_log(path)`` copies stdout
and stderr into ``path`` for the length of a run, bar refreshes excepted, with a progress
line there every ``line_interval_s`` seconds instead.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

LINE_INTERVAL_S = 10.0  # seconds between two progress lines in a pipe, a file or the run log
_run_log: TextIO | None = None  # the open run log, while ``run_log`` is active


def _is_terminal(stream: Any) -> bool:
    stream = getattr(stream, "terminal", stream)  # through the run log's tee
    return bool(getattr(stream, "isatty", lambda: False)())


class progress(tqdm):  # noqa: N801 - used like tqdm, as a function
    """tqdm on a terminal; elsewhere a plain progress line every ``LINE_INTERVAL_S`` seconds."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._lines = not _is_terminal(kwargs.get("file") or sys.stderr)
        if self._lines:
            kwargs["mininterval"] = LINE_INTERVAL_S
        self._logged_at = time.monotonic()
        super().__init__(*args, **kwargs)

    def _line(self) -> str:
        return self.format_meter(**{**self.format_dict, "ncols": 0})  # ncols 0: stats, no bar

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if self._lines:
            if msg != "":  # tqdm clears a finished bar with an empty message
                self.fp.write(self._line() + "\n")
                self.fp.flush()
            return True
        shown = super().display(msg, pos)
        if _run_log is not None and msg != "" and time.monotonic() - self._logged_at >= LINE_INTERVAL_S:
            self._logged_at = time.monotonic()
            _run_log.write(self._line() + "\n")
            _run_log.flush()
        return shown

    def close(self) -> None:
        if self._lines and not self.disable and self.leave is False:
            self.leave = True  # keep the last line: in a log there is nothing to clear
        if not self._lines and not self.disable and _run_log is not None:
            _run_log.write(self._line() + "\n")
        super().close()


class _Tee:
    """A text stream writing to the terminal stream and the run log; a bar's in-place
    refresh (a carriage return) reaches the terminal only."""

    def __init__(self, terminal: TextIO, log: TextIO):
        self.terminal, self.log = terminal, log

    def write(self, text: str) -> int:
        self.terminal.write(text)
        if "\r" not in text and "\x1b[" not in text:
            self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.terminal.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return _is_terminal(self.terminal)

    def fileno(self) -> int:
        return self.terminal.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.terminal, name)


@contextmanager
def run_log(path: Path) -> Iterator[None]:
    """Copy what the run prints (stdout and stderr) into ``path``, appended, and the error
    that ends it, if one does."""
    global _run_log
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as log:
        previous = sys.stdout, sys.stderr, _run_log
        sys.stdout, sys.stderr, _run_log = _Tee(sys.stdout, log), _Tee(sys.stderr, log), log
        try:
            yield
        except SystemExit as stop:
            if stop.code not in (None, 0):
                log.write(f"{stop.code}\n")
            raise
        except BaseException:
            log.write(traceback.format_exc())
            raise
        finally:
            sys.stdout, sys.stderr, _run_log = previous
