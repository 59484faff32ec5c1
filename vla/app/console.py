"""The run log: everything a run prints (stdout and stderr), copied into a file in its run
directory for the length of the run, with the error that ends it, if one does. A bar's
in-place refreshes reach the terminal only; the log gets a progress line every few seconds
instead (``envs.progress``)."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from envs.progress import is_terminal, log_progress_to


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
        return is_terminal(self.terminal)

    def fileno(self) -> int:
        return self.terminal.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.terminal, name)


@contextmanager
def run_log(path: Path) -> Iterator[None]:
    """Copy what the run prints (stdout and stderr) into ``path``, appended, and the error
    that ends it, if one does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as log:
        previous = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        log_progress_to(log)
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
            sys.stdout, sys.stderr = previous
            log_progress_to(None)
