"""The policy behind the continuous batcher: a ``ContinuousDecoder`` (vla/paged_kv.py) plus
what ``PolicyRunner`` adds around decoding (the out-of-scope check, tokens -> actions)."""

from __future__ import annotations

from typing import Any

import numpy as np

from vla.data import observations_to_batch
from vla.inference import PolicyRunner
from vla.paged_kv import ContinuousDecoder


class ContinuousEngine:
    """``admit([(key, (obs, session, reset))])`` and ``step() -> [(key, {"action": ..., **info})]``."""

    def __init__(self, runner: PolicyRunner, max_batch: int, block_size: int = 16):
        self.runner = runner
        self.decoder = ContinuousDecoder(runner.policy, block_size=block_size, max_batch=max_batch)
        # key -> (instruction, scope verdicts, what the policy read of it)
        self._finishing: dict[Any, tuple[str, np.ndarray, str]] = {}

    @property
    def running(self) -> int:
        return len(self.decoder.running)

    def admit(self, requests: list[tuple[Any, tuple[dict[str, Any], str, bool]]]) -> None:
        for _, (_, session, reset) in requests:
            if reset:
                self.runner.reset(session)
        observations = [obs for _, (obs, _, _) in requests]
        batch = observations_to_batch(observations, self.runner.device)
        sessions = [session for _, (_, session, _) in requests]
        typed = batch["instruction"]
        verdicts, batch["instruction"] = self.runner.check_instructions(batch, sessions)
        rows = [{k: v[i : i + 1] for k, v in batch.items()} for i in range(len(requests))]
        self.decoder.admit([(key, row) for (key, _), row in zip(requests, rows, strict=True)])
        for (key, _), text, verdict, reading in zip(requests, typed, verdicts, batch["instruction"], strict=True):
            self._finishing[key] = (text, verdict, reading)

    def step(self) -> list[tuple[Any, dict[str, Any]]]:
        finished = self.decoder.step()
        if not finished:
            return []
        texts, verdicts, readings = zip(*(self._finishing.pop(key) for key, _ in finished), strict=True)
        bins = np.array([bins for _, bins in finished])
        actions, infos = self.runner.finish(bins, list(texts), np.array(verdicts), list(readings))
        results = zip(finished, actions, infos, strict=True)
        return [(key, {"action": action.tolist(), **info}) for (key, _), action, info in results]

    def abort(self) -> list[Any]:
        """Drop every running request (after a failure); their keys."""
        keys = [s.key for s in self.decoder.running]
        for sequence in self.decoder.running:
            self.decoder.pool.release(sequence.table)
        self.decoder.running.clear()
        for key in keys:
            self._finishing.pop(key, None)
        return keys
