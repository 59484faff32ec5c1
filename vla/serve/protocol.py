"""The policy server's wire format, shared by the server and ``vla.serve.client``.

``POST /act`` takes one observation as JSON::

    {"instruction": "pick up the red cube",           # any text, at most 1,000 characters
     "proprio": [0.1, ...],                           # at least the policy's proprio_dim numbers
     "image": "<base64 of the uint8 H x W x 3 pixels, row-major>",
     "image_shape": [64, 64, 3],                      # must be the policy's camera size
     "wrist_image": "...",                            # only for a policy with a wrist camera
     "session": "robot-7",                            # optional: whose episode (out-of-scope verdicts)
     "reset": false,                                  # optional: true at an episode's first step
     "deadline_ms": 200}                              # optional: answer in time or not at all (504)

and answers ``{"action": [7 numbers], "stopped": bool, "message": str | null, "read_as": str,
"nothing_named": p, "batch_size": n, "queue_ms": t, "server_ms": t}``. A malformed request
is answered 400 or 422 with ``{"error": "<what is wrong, and what is allowed>"}``.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np

MAX_INSTRUCTION_CHARS = 1000  # the encoder reads 32 tokens at most; longer text is refused, not cut
MAX_SESSION_CHARS = 128
MAX_DEADLINE_MS = 60_000.0
KNOWN_FIELDS = {"instruction", "proprio", "image", "image_shape", "wrist_image", "session", "reset", "deadline_ms"}


class BadRequest(ValueError):
    """A request the server cannot act on; the message says what and what is allowed."""


def encode_observation(obs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An env observation (the contract's dict) as the JSON body of ``POST /act``."""
    image = np.ascontiguousarray(obs["image"], dtype=np.uint8)
    body = {
        "instruction": str(obs["instruction"]),
        "proprio": [float(x) for x in np.asarray(obs["proprio"]).reshape(-1)],
        "image": base64.b64encode(image.tobytes()).decode("ascii"),
        "image_shape": list(image.shape),
    }
    if "wrist_image" in obs:
        body["wrist_image"] = base64.b64encode(np.ascontiguousarray(obs["wrist_image"], np.uint8).tobytes()).decode()
    return {**body, **extra}


def parse_act_request(
    body: Any, image_size: int, proprio_dim: int, wrist: bool
) -> tuple[dict[str, Any], str, bool, float | None]:
    """(observation, session, reset, deadline_ms) of a ``POST /act`` body, or ``BadRequest``."""
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise BadRequest(f"unknown fields {unknown[:5]}; allowed: {', '.join(sorted(KNOWN_FIELDS))}")
    for name in ("instruction", "proprio", "image", "image_shape"):
        if name not in body:
            raise BadRequest(f"missing field {name!r} (needs instruction, proprio, image, image_shape)")
    instruction = body["instruction"]
    if not isinstance(instruction, str):
        raise BadRequest(f"instruction must be a string, got {type(instruction).__name__}")
    if len(instruction) > MAX_INSTRUCTION_CHARS:
        raise BadRequest(f"instruction has {len(instruction)} characters; at most {MAX_INSTRUCTION_CHARS}")
    shape = (image_size, image_size, 3)
    if body["image_shape"] != list(shape):
        raise BadRequest(f"image_shape must be {list(shape)} (this policy's camera), got {body['image_shape']!r}")
    obs = {"instruction": instruction, "image": _image(body["image"], "image", shape)}
    if wrist:
        if "wrist_image" not in body:
            raise BadRequest("this policy reads a wrist camera: send wrist_image too")
        obs["wrist_image"] = _image(body["wrist_image"], "wrist_image", shape)
    obs["proprio"] = _proprio(body["proprio"], proprio_dim)
    session = body.get("session", "")
    if not isinstance(session, str) or len(session) > MAX_SESSION_CHARS:
        raise BadRequest(f"session must be a string of at most {MAX_SESSION_CHARS} characters")
    reset = body.get("reset", False)
    if not isinstance(reset, bool):
        raise BadRequest(f"reset must be true or false, got {reset!r}")
    deadline = body.get("deadline_ms")
    if deadline is not None and (
        isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not 0 < deadline <= MAX_DEADLINE_MS
    ):
        raise BadRequest(f"deadline_ms must be a number in (0, {MAX_DEADLINE_MS:.0f}], got {deadline!r}")
    return obs, session, reset, None if deadline is None else float(deadline)


def _image(value: Any, name: str, shape: tuple[int, int, int]) -> np.ndarray:
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a base64 string of uint8 pixels, got {type(value).__name__}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{name} is not valid base64") from None
    expected = math.prod(shape)
    if len(raw) != expected:
        raise BadRequest(f"{name} holds {len(raw)} bytes; {shape[0]} x {shape[1]} x 3 uint8 pixels are {expected}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


def _proprio(value: Any, proprio_dim: int) -> np.ndarray:
    if not isinstance(value, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise BadRequest("proprio must be a list of numbers")
    if not proprio_dim <= len(value) <= 64:
        raise BadRequest(f"proprio has {len(value)} numbers; this policy reads {proprio_dim} (at most 64 are accepted)")
    proprio = np.asarray(value, dtype=np.float64)
    if not (np.isfinite(proprio).all() and np.abs(proprio).max() < np.finfo(np.float32).max):
        raise BadRequest("proprio holds NaN or infinite values (or values beyond float32)")
    return proprio.astype(np.float32)
