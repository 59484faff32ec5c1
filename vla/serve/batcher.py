"""Dynamic batching with a bounded queue, per-request deadlines and back-pressure.

Requests from many robots arrive one observation at a time; the model is cheapest per action
when it sees them together (a batch of 32 costs little more than a batch of 1 on a GPU:
docs/performance.md). ``DynamicBatcher`` holds arriving requests in a queue of at most
``max_queue`` and a worker thread takes them ``max_batch`` at a time, waiting at most
``max_wait_ms`` after the first for more to join. What it never does:

- grow without bound: a request that finds the queue full is refused at once (``Overloaded``,
  HTTP 503 with Retry-After), so a flood costs the flooder, not the robots already waiting;
- compute for nobody: a request whose deadline passed, or whose caller gave up, is dropped
  when its batch is formed (``DeadlineExceeded``, HTTP 504);
- let one failure stop the others: an error in a batch fails that batch's requests only.

The model runs in the worker thread, so the event loop keeps accepting and refusing requests
while a batch computes.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Overloaded(Exception):
    """The queue is full: try again later."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before its action was computed."""


@dataclass
class BatcherConfig:
    max_batch: int = 32  # requests decoded together at most
    max_wait_ms: float = 2.0  # how long the first request of a batch waits for others to join
    max_queue: int = 256  # requests waiting at most; one more is refused (503)
    deadline_ms: float = 1000.0  # a request's deadline when it names none

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        for name in ("max_wait_ms", "deadline_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0 (milliseconds), got {value!r}")


@dataclass
class _Request:
    item: Any
    deadline: float  # time.monotonic() by which the answer is due
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class Stats:
    """Counters for /metrics (read under the batcher's lock)."""

    batches: int = 0
    batched_requests: int = 0
    refused: int = 0  # queue full
    expired: int = 0  # deadline passed or caller gone before its batch
    failed: int = 0  # the model raised
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)


class DynamicBatcher:
    """``await batcher.submit(item, deadline_ms)`` -> ``run_batch([items])[i]``; ``run_batch``
    runs in one worker thread (module docstring)."""

    def __init__(self, run_batch: Callable[[list[Any]], list[Any]], config: BatcherConfig):
        self.run_batch = run_batch
        self.config = config
        self.stats = Stats()
        self._queue: collections.deque[_Request] = collections.deque()
        self._lock = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="policy-batcher", daemon=True)
        self._worker.start()

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def submit(self, item: Any, deadline_ms: float | None = None) -> tuple[Any, dict[str, float]]:
        """The result for ``item`` and its timings (``queue_ms``, ``batch_size``), or
        ``Overloaded`` at once, or ``DeadlineExceeded`` once ``deadline_ms`` has passed."""
        budget = (self.config.deadline_ms if deadline_ms is None else deadline_ms) / 1e3
        loop = asyncio.get_running_loop()
        request = _Request(item, time.monotonic() + budget, loop.create_future(), loop)
        with self._lock:
            if self._closed:
                raise Overloaded("the server is shutting down")
            if len(self._queue) >= self.config.max_queue:
                self.stats.refused += 1
                raise Overloaded(f"queue full ({self.config.max_queue} requests waiting)")
            self._queue.append(request)
            self._lock.notify()
        try:
            return await asyncio.wait_for(asyncio.shield(request.future), timeout=max(budget, 0.0))
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"no answer within the deadline of {budget * 1e3:.0f} ms") from None
        finally:
            request.future.cancel()  # a no-op when answered; otherwise the worker skips it

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._worker.join(timeout=5)

    def _next_batch(self, room: int | None = None, block: bool = True) -> list[_Request]:
        """Up to ``room`` (default max_batch) live requests. ``block``: wait for a first one,
        then at most max_wait_ms for company; otherwise take only what is queued now."""
        room = self.config.max_batch if room is None else room
        with self._lock:
            while block and not self._queue and not self._closed:
                self._lock.wait()
            if self._closed or not self._queue:
                return []
            until = self._queue[0].arrived + self.config.max_wait_ms / 1e3
            while block and len(self._queue) < room and not self._closed:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(timeout=left)
            batch, now = [], time.monotonic()
            while self._queue and len(batch) < room:
                request = self._queue.popleft()
                if request.future.cancelled() or request.deadline <= now:
                    self.stats.expired += 1
                    continue
                batch.append(request)
            return batch

    def _count(self, size: int, failed: bool) -> None:
        with self._lock:
            self.stats.batches += 1
            self.stats.batched_requests += size
            self.stats.batch_sizes[size] += 1
            self.stats.failed += size if failed else 0

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                if self._closed:
                    return
                continue
            started = time.monotonic()
            try:
                results = self.run_batch([r.item for r in batch])
                error = None
            except Exception as exc:  # the batch fails; the server and the next batches go on
                results, error = [None] * len(batch), exc
            self._count(len(batch), error is not None)
            for request, result in zip(batch, results, strict=True):
                timings = {"queue_ms": (started - request.arrived) * 1e3, "batch_size": len(batch)}
                request.loop.call_soon_threadsafe(_settle, request.future, result, error, timings)


def _settle(future: asyncio.Future, result: Any, error: Exception | None, timings: dict[str, float]) -> None:
    if future.done():  # the caller gave up (deadline, disconnect)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result((result, timings))


class ContinuousBatcher(DynamicBatcher):
    """Continuous batching for token-by-token decoding: requests join the running batch at
    any token boundary and leave when their action is complete (vla/paged_kv.py). ``engine``
    has ``admit([(key, item)])``, ``step() -> [(key, result)]``, ``running`` and ``abort()``;
    ``max_batch`` bounds the running batch."""

    def __init__(self, engine: Any, config: BatcherConfig):
        self.engine = engine
        self._requests: dict[int, _Request] = {}
        self._admitted: dict[int, float] = {}
        super().__init__(run_batch=lambda items: [], config=config)

    def _work(self) -> None:
        while not self._closed:
            room = self.config.max_batch - self.engine.running
            # idle: wait for requests (and max_wait_ms for company); running: take who is there
            new = self._next_batch(room, block=self.engine.running == 0) if room > 0 else []
            if new:
                now = time.monotonic()
                for request in new:
                    self._requests[id(request)] = request
                    self._admitted[id(request)] = now
                try:
                    self.engine.admit([(id(r), r.item) for r in new])
                    self._count(len(new), False)
                except Exception as error:
                    self._count(len(new), True)
                    self._fail([id(r) for r in new], error)
            if not self.engine.running:
                continue
            try:
                finished = self.engine.step()
            except Exception as error:  # the running batch fails; the server goes on
                keys = self.engine.abort()
                self._fail(keys, error)
                continue
            for key, result in finished:
                request = self._requests.pop(key)
                timings = {
                    "queue_ms": (self._admitted.pop(key) - request.arrived) * 1e3,
                    "batch_size": self.engine.running + len(finished),
                }
                request.loop.call_soon_threadsafe(_settle, request.future, result, None, timings)

    def _fail(self, keys: list[int], error: Exception) -> None:
        for key in keys:
            request = self._requests.pop(key, None)
            self._admitted.pop(key, None)
            if request is not None:
                request.loop.call_soon_threadsafe(_settle, request.future, None, error, {})
