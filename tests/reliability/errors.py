"""What counts as a clear error in the campaign: a ValueError with one short line that a user
can act on (the project's rule for bad input, docs/architecture.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

MAX_MESSAGE = 600  # characters: a message longer than this buries the bad value


@contextlib.contextmanager
def clear_error_or_ok(*, allowed: tuple[type[BaseException], ...] = (ValueError,)) -> Iterator[dict]:
    """Either the block runs, or it raises one of ``allowed`` with a one-line message.

    Yields a dict whose ``"error"`` is the caught exception (or None), for follow-up checks.
    """
    outcome: dict = {"error": None}
    try:
        yield outcome
    except allowed as exc:
        message = str(exc)
        assert message, f"{type(exc).__name__} without a message"
        assert "\n" not in message, f"multi-line error: {message[:200]!r}"
        assert len(message) <= MAX_MESSAGE, f"error of {len(message)} characters: {message[:200]!r}..."
        outcome["error"] = exc
    except Exception as exc:  # anything else is a crash the user cannot act on
        pytest.fail(f"unclear error {type(exc).__name__}: {str(exc)[:300]}")
