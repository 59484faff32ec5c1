"""The page's messages, checked: each mistake is one line naming the bad value and what is
allowed, shown on the page (the connection and the server go on)."""

from __future__ import annotations

import json
import secrets
from typing import Any

from envs.tabletop_env import INSTRUCTION_CHARSET, MAX_INSTRUCTION_LENGTH
from envs.tasks import TASK_CLASSES
from vla.demo.episode import DRIVERS, EpisodeSettings

COMMANDS = ("reset", "step", "run", "pause")
MAX_SEED = 2**31 - 1  # seeds the page offers; the env itself takes up to 2**63 - 1
ALLOWED_TEXT = f"1..{MAX_INSTRUCTION_LENGTH} characters: letters, digits, spaces and {INSTRUCTION_CHARSET[62:].strip()}"


class BadRequest(ValueError):
    """A message the demo cannot act on; its text is shown to the person."""


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_message(raw: str) -> dict[str, Any]:
    """The JSON object of one message, with a known ``type``."""
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("the message is not valid JSON") from None
    if not isinstance(message, dict) or message.get("type") not in COMMANDS:
        kind = message.get("type") if isinstance(message, dict) else None
        raise BadRequest(f"unknown command {_short(kind)}: allowed are {', '.join(COMMANDS)}")
    return message


def parse_seed(value: Any) -> int:
    """A whole number in 0..MAX_SEED; empty or null picks a random one (shown back to the page)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return secrets.randbelow(MAX_SEED + 1)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise BadRequest(
            f"seed {_short(value)} is not allowed: a whole number in 0..{MAX_SEED}, or empty for a random one"
        )
    return value


def parse_settings(message: dict[str, Any]) -> EpisodeSettings:
    """The settings of a new episode. The instruction is only checked for emptiness here: the
    env's own check (its length and characters) answers the rest, in its words."""
    task = message.get("task")
    if not isinstance(task, str) or task not in TASK_CLASSES:
        raise BadRequest(f"task {_short(task)} is not one of {', '.join(TASK_CLASSES)}")
    driver = message.get("driver", "policy")
    if not isinstance(driver, str) or driver not in DRIVERS:
        raise BadRequest(f"driver {_short(driver)} is not one of {', '.join(DRIVERS)}")
    instruction = message.get("instruction", "")
    if not isinstance(instruction, str):
        raise BadRequest(f"the instruction must be text, got {type(instruction).__name__}")
    if driver == "policy" and not instruction.strip():
        raise BadRequest(
            f"the instruction is empty: type what the robot should do ({ALLOWED_TEXT}), "
            "e.g. 'touch the red cube', or press 'Scene's instruction'"
        )
    return EpisodeSettings(task, parse_seed(message.get("seed")), instruction, driver)
