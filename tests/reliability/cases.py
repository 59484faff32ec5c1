"""Counts the generated cases each public surface received, for the campaign's report.

Every property test calls ``record_case(surface)`` once per example it runs. The counts go to
the JSON file named by ``VLA_CASES_FILE`` (set by ``eval/reliability.py``); without it they are
kept in memory only, so a plain ``pytest`` run writes nothing.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

SURFACES = ("env", "policy", "configs", "files", "ros2", "server")
_counts: Counter[str] = Counter()


def record_case(surface: str) -> None:
    """One generated case ran against ``surface`` (one of ``SURFACES``)."""
    if surface not in SURFACES:
        raise ValueError(f"unknown surface {surface!r}: expected one of {', '.join(SURFACES)}")
    _counts[surface] += 1


def counts() -> dict[str, int]:
    return dict(_counts)


def flush() -> None:
    """Add this process's counts to the file named by VLA_CASES_FILE (if set)."""
    target = os.environ.get("VLA_CASES_FILE")
    if not target or not _counts:
        return
    path = Path(target)
    total = Counter(json.loads(path.read_text())) if path.exists() else Counter()
    total.update(_counts)
    path.write_text(json.dumps(dict(total), indent=1, sort_keys=True))
    _counts.clear()
