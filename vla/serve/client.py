"""A robot's side of the policy server: ``PolicyClient(url).act(obs)``, the same call as
``vla.load_policy(path).act(obs)``, over one kept-alive HTTP connection (standard library only).

    from vla.serve.client import PolicyClient
    policy = PolicyClient("http://127.0.0.1:8000", session="robot-1")
    obs, _ = env.reset(seed=0); policy.reset()
    action = policy.act(obs)
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Any

import numpy as np

from vla.serve.protocol import encode_observation


class ServerError(RuntimeError):
    """The server refused or failed a request; ``status`` is its HTTP status (503: overloaded)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"policy server answered {status}: {message}")
        self.status = status


class PolicyClient:
    def __init__(self, url: str, session: str = "", timeout: float = 10.0, deadline_ms: float | None = None):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"url must look like http://host:port, got {url!r}")
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.session, self.timeout, self.deadline_ms = session, timeout, deadline_ms
        self._connection: http.client.HTTPConnection | None = None
        self._reset = True  # the first step of a client is an episode's first step

    def reset(self) -> None:
        """At an episode's start: the server forgets this session's out-of-scope verdicts."""
        self._reset = True

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        return self.act_with_info(obs)[0]

    def act_with_info(self, obs: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        extra: dict[str, Any] = {"session": self.session, "reset": self._reset}
        if self.deadline_ms is not None:
            extra["deadline_ms"] = self.deadline_ms
        status, answer = self.post("/act", encode_observation(obs, **extra))
        if status != 200:
            raise ServerError(status, answer.get("error", str(answer)))
        self._reset = False
        return np.asarray(answer.pop("action"), dtype=np.float32), answer

    def get(self, path: str) -> tuple[int, Any]:
        return self._request("GET", path, None)

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        return self._request("POST", path, json.dumps(body).encode())

    def _request(self, method: str, path: str, data: bytes | None) -> tuple[int, Any]:
        for attempt in (0, 1):  # a kept-alive connection the server closed is opened again once
            if self._connection is None:
                self._connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                headers = {"Content-Type": "application/json"} if data is not None else {}
                self._connection.request(method, path, body=data, headers=headers)
                response = self._connection.getresponse()
                payload = response.read()
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
                continue
            kind = response.getheader("Content-Type", "")
            return response.status, json.loads(payload) if "json" in kind else payload.decode()
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
