"""One clear line instead of a traceback for mistakes a user can fix (bad path, bad value,
a checkpoint that does not fit): scripts run their body inside ``user_errors()``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from vla.checkpoint import CheckpointError


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
