"""The policy server as an ASGI app (Starlette; run by uvicorn in ``python -m vla.serve``).

Routes: ``POST /act`` (one observation -> one action, vla/serve/protocol.py), ``GET /health``
(ready, the checkpoint, the queue) and ``GET /metrics`` (Prometheus text: requests by
status, batch sizes, queue depth, latency quantiles). Every refusal is one JSON error:

| status | when |
|---|---|
| 400 | the body is not JSON |
| 413 | the body is larger than ``max_body_kb`` (checked while reading: no giant buffer) |
| 422 | a field is missing or wrong (protocol.py names it and what is allowed) |
| 503 | the queue is full (back-pressure; ``Retry-After: 1``) |
| 504 | the request's deadline passed before its action was computed |
| 500 | the model failed on the request's batch (the server goes on) |
"""

from __future__ import annotations

import collections
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from vla.inference import PolicyRunner
from vla.serve.batcher import BatcherConfig, ContinuousBatcher, DeadlineExceeded, DynamicBatcher, Overloaded
from vla.serve.protocol import BadRequest, parse_act_request

LATENCY_WINDOW = 4096  # the latest requests whose server times the quantiles of /metrics cover


@dataclass
class ServeLimits:
    max_body_kb: int = 1024  # a larger request body is refused (413) as soon as it is seen


class BodyTooLarge(Exception):
    pass


class PolicyService:
    """A ``PolicyRunner`` behind a ``DynamicBatcher``, with the server's counters."""

    def __init__(
        self,
        runner: PolicyRunner,
        batching: BatcherConfig,
        limits: ServeLimits,
        name: str = "",
        continuous: bool = True,
        block_size: int = 16,
    ):
        """``continuous``: a policy that decodes token by token is served with continuous batching
        over a paged KV cache (``block_size`` tokens per block); one that decodes its 7 tokens
        in one pass (parallel) is dynamically batched either way."""
        self.runner = runner
        self.limits = limits
        self.name = name
        config = runner.policy.config
        self.image_size, self.proprio_dim = config.image_size, config.proprio_dim
        self.wrist = "wrist" in config.cameras
        self.mode = "dynamic"
        if continuous and config.decoding == "autoregressive":
            from vla.serve.engine import ContinuousEngine

            engine = ContinuousEngine(runner, batching.max_batch, block_size)
            self.batcher: DynamicBatcher = ContinuousBatcher(engine, batching)
            self.mode = "continuous"
        else:
            self.batcher = DynamicBatcher(self._run_batch, batching)
        self.started = time.time()
        self.responses: collections.Counter[int] = collections.Counter()
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)

    def _run_batch(self, items: list[tuple[dict[str, Any], str, bool]]) -> list[dict[str, Any]]:
        for _, session, reset in items:
            if reset:
                self.runner.reset(session)
        actions, infos = self.runner.act_batch_with_info([obs for obs, _, _ in items], [s for _, s, _ in items])
        return [{"action": a.tolist(), **info} for a, info in zip(np.asarray(actions), infos, strict=True)]

    async def act(self, request: Request) -> JSONResponse:
        started = time.monotonic()
        try:
            raw = await _read_limited(request, self.limits.max_body_kb * 1024)
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
                return self._error(400, "the body is not valid JSON (or is nested too deeply)")
            obs, session, reset, deadline_ms = parse_act_request(body, self.image_size, self.proprio_dim, self.wrist)
            result, timings = await self.batcher.submit((obs, session, reset), deadline_ms)
        except BodyTooLarge:
            return self._error(413, f"the body is larger than {self.limits.max_body_kb} KB")
        except BadRequest as error:
            return self._error(422, str(error))
        except Overloaded as error:
            return self._error(503, f"overloaded: {error}; retry later", headers={"Retry-After": "1"})
        except DeadlineExceeded as error:
            return self._error(504, str(error))
        except Exception as error:  # the model failed on this batch; the server goes on
            return self._error(500, f"the policy failed on this request's batch ({type(error).__name__}: {error})")
        server_ms = (time.monotonic() - started) * 1e3
        self.latencies_ms.append(server_ms)
        self.responses[200] += 1
        return JSONResponse({**result, **timings, "server_ms": server_ms})

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        self.responses[status] += 1
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "checkpoint": self.name,
                "batching": self.mode,
                "queue": self.batcher.depth,
                "max_queue": self.batcher.config.max_queue,
                "uptime_s": round(time.time() - self.started, 1),
            }
        )

    async def metrics(self, request: Request) -> PlainTextResponse:
        stats = self.batcher.stats
        lines = ["# TYPE vla_requests_total counter"]
        lines += [f'vla_requests_total{{status="{code}"}} {n}' for code, n in sorted(self.responses.items())]
        lines += [
            "# TYPE vla_queue_depth gauge",
            f"vla_queue_depth {self.batcher.depth}",
            "# TYPE vla_batches_total counter",
            f"vla_batches_total {stats.batches}",
            f"vla_batched_requests_total {stats.batched_requests}",
            f"vla_refused_total {stats.refused}",
            f"vla_expired_total {stats.expired}",
            f"vla_failed_total {stats.failed}",
            "# TYPE vla_batch_size_count counter",
        ]
        lines += [f'vla_batch_size_count{{size="{size}"}} {n}' for size, n in sorted(stats.batch_sizes.items())]
        if self.mode == "continuous":
            pool = self.batcher.engine.decoder.pool
            lines += [
                "# TYPE vla_kv_blocks gauge",
                f"vla_kv_blocks_used {pool.used}",
                f"vla_kv_blocks_peak {pool.peak_used}",
                f"vla_kv_blocks_total {pool.num_blocks}",
                f"vla_kv_block_bytes {pool.bytes_per_block}",
            ]
        if self.latencies_ms:
            values = np.asarray(self.latencies_ms)
            lines.append("# TYPE vla_server_ms summary")
            lines += [f'vla_server_ms{{quantile="{q}"}} {np.quantile(values, q):.3f}' for q in (0.5, 0.95, 0.99)]
        return PlainTextResponse("\n".join(lines) + "\n")


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, or BodyTooLarge as soon as it passes ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def make_app(service: PolicyService) -> Starlette:
    routes = [
        Route("/act", service.act, methods=["POST"]),
        Route("/health", service.health, methods=["GET"]),
        Route("/metrics", service.metrics, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        service.batcher.close()

    return Starlette(routes=routes, lifespan=lifespan)


@contextlib.contextmanager
def serve_in_background(service: PolicyService, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run the server in a thread of this process (tests, benchmarks); yields its URL."""
    import uvicorn

    config = uvicorn.Config(make_app(service), host=host, port=port, log_level="warning", timeout_keep_alive=30)
    with uvicorn_in_background(config, "policy server") as url:
        yield url


@contextlib.contextmanager
def uvicorn_in_background(config: Any, name: str) -> Iterator[str]:
    """A uvicorn server (``config``: a ``uvicorn.Config``) on a thread of this process until
    the block ends; yields its URL, with the port it bound."""
    import threading

    import uvicorn

    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=name.replace(" ", "-"), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the {name} did not start on {config.host}:{config.port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{config.host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
