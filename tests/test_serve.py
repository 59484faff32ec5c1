"""The policy server: real HTTP on loopback, dynamic batching, and every refusal a clear answer
(malformed and oversized requests, a flood past the queue, missed deadlines, vanished clients)."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from tests.conftest import TINY_MODEL
from vla.inference import PolicyRunner
from vla.policy import PolicyConfig, VLAPolicy
from vla.serve.app import PolicyService, ServeLimits, serve_in_background
from vla.serve.batcher import BatcherConfig, DeadlineExceeded, DynamicBatcher, Overloaded
from vla.serve.client import PolicyClient, ServerError
from vla.serve.protocol import encode_observation
from vla.tokenizer import ActionTokenizer

INSTRUCTIONS = ["touch the red cube", "push the blue cylinder to the white zone", "lift the green cube"]


def tiny_runner(**overrides) -> PolicyRunner:
    torch.manual_seed(0)
    policy = VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "proprio_dim": 8, **overrides}))
    policy.head.weight.data *= 50  # greedy choices far apart: batched float order cannot flip a token
    return PolicyRunner(policy, ActionTokenizer(256))


def observation(i: int) -> dict:
    rng = np.random.default_rng(i)
    return {
        "image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "proprio": rng.normal(size=9).astype(np.float32),
        "instruction": INSTRUCTIONS[i % len(INSTRUCTIONS)],
    }


@pytest.fixture(params=["parallel", "autoregressive"])
def server(request):
    """Parallel decoding is dynamically batched; autoregressive decoding continuously batched
    over the paged KV cache."""
    runner = tiny_runner(decoding=request.param)
    service = PolicyService(runner, BatcherConfig(max_batch=8, max_wait_ms=5.0, max_queue=64), ServeLimits(256))
    assert service.mode == ("continuous" if request.param == "autoregressive" else "dynamic")
    with serve_in_background(service) as url:
        yield url, runner, service


def test_two_robots_get_the_actions_the_policy_gives_in_process(server):
    url, runner, service = server
    reference = tiny_runner(decoding=runner.policy.config.decoding)  # the plain KV cache, batch 1

    def robot(k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        client = PolicyClient(url, session=f"robot-{k}")
        pairs = []
        for i in range(12):
            obs = observation(100 * k + i)
            action, info = client.act_with_info(obs)
            assert info["batch_size"] >= 1 and info["read_as"] == obs["instruction"]
            pairs.append((action, obs))
        client.close()
        return pairs

    with ThreadPoolExecutor(2) as pool:
        results = [p for pairs in pool.map(robot, range(2)) for p in pairs]
    for action, obs in results:  # batched with the other robot or alone: the same tokens
        np.testing.assert_array_equal(action, reference.act(obs))
    status, health = PolicyClient(url).get("/health")
    assert status == 200 and health["status"] == "ok" and health["queue"] == 0
    status, metrics = PolicyClient(url).get("/metrics")
    assert 'vla_requests_total{status="200"} 24' in metrics and "vla_batches_total" in metrics
    if service.mode == "continuous":
        assert "vla_kv_blocks_used 0" in metrics and "vla_kv_blocks_peak" in metrics


def raw_post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("POST", "/act", body=body, headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    return response.status, answer


def good_body(**changes) -> dict:
    return {**encode_observation(observation(0)), **changes}


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[" * 50_000 + b"]" * 50_000, 400, "nested too deeply"),
        (b"[1, 2]", 422, "must be a JSON object"),
        (json.dumps({k: v for k, v in good_body().items() if k != "image"}).encode(), 422, "missing field 'image'"),
        (json.dumps(good_body(image_shape=[64, 64, 3])).encode(), 422, r"image_shape must be \[32, 32, 3\]"),
        (json.dumps(good_body(image=base64.b64encode(b"abc").decode())).encode(), 422, "holds 3 bytes"),
        (json.dumps(good_body(image="%%%")).encode(), 422, "not valid base64"),
        (json.dumps(good_body(proprio=[1.0, 2.0])).encode(), 422, "this policy reads 8"),
        (json.dumps(good_body(proprio=[float("nan")] * 9)).encode(), 422, "NaN or infinite"),
        (json.dumps(good_body(proprio=[1e39] * 9)).encode(), 422, "NaN or infinite"),
        (json.dumps(good_body(instruction=7)).encode(), 422, "instruction must be a string"),
        (json.dumps(good_body(instruction="a" * 1001)).encode(), 422, "at most 1000"),
        (json.dumps(good_body(colour="red")).encode(), 422, r"unknown fields \['colour'\]"),
        (json.dumps(good_body(deadline_ms=-1)).encode(), 422, "deadline_ms must be a number"),
        (json.dumps(good_body(reset="yes")).encode(), 422, "reset must be true or false"),
    ],
)
def test_a_malformed_request_gets_a_clear_error_and_the_server_goes_on(server, body, status, message):
    url, _, _ = server
    code, answer = raw_post(url, body)
    assert code == status and "error" in answer
    assert re.search(message, answer["error"]), answer
    assert PolicyClient(url).act(observation(1)).shape == (7,)


def test_an_oversized_body_is_refused_declared_or_streamed(server):
    url, _, _ = server
    code, answer = raw_post(url, b"x" * (300 * 1024))
    assert code == 413 and "larger than 256 KB" in answer["error"]
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:  # chunked: no length declared
        s.sendall(b"POST /act HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"y" * 65536
        for _ in range(6):
            s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        s.sendall(b"0\r\n\r\n")
        assert b" 413 " in s.recv(4096).split(b"\r\n")[0] + b" "
    assert PolicyClient(url).act(observation(2)).shape == (7,)


def test_an_empty_or_nonsense_instruction_is_answered_not_refused(server):
    url, _, _ = server
    action, info = PolicyClient(url).act_with_info({**observation(3), "instruction": " ?! "})
    assert info["stopped"] and "empty" in info["message"] and not action[:6].any()


def test_a_vanished_client_leaves_the_server_serving(server):
    url, _, _ = server
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(good_body()).encode()
    for cut in (10, len(body) // 2, len(body)):
        s = socket.create_connection((host, int(port)), timeout=10)
        head = f"POST /act HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        s.sendall(head.encode() + body[:cut])
        s.close()  # gone mid-request (or before reading the answer)
    assert PolicyClient(url).act(observation(4)).shape == (7,)


def test_a_flood_past_the_queue_is_refused_with_503_and_the_rest_are_served():
    runner = tiny_runner()
    slow = runner.act_batch_with_info

    def slow_batch(observations, sessions=None):
        time.sleep(0.05)  # a model slower than the flood: the queue fills
        return slow(observations, sessions)

    runner.act_batch_with_info = slow_batch
    service = PolicyService(runner, BatcherConfig(max_batch=1, max_wait_ms=0.0, max_queue=3), ServeLimits(256))
    with serve_in_background(service) as url:

        def one(i: int) -> int:
            try:
                PolicyClient(url, deadline_ms=10_000).act(observation(i))
                return 200
            except ServerError as error:
                return error.status

        with ThreadPoolExecutor(24) as pool:
            codes = list(pool.map(one, range(48)))
        assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) >= 3
        assert service.batcher.depth == 0
        status, metrics = PolicyClient(url).get("/metrics")
        assert f'vla_requests_total{{status="503"}} {codes.count(503)}' in metrics
        assert PolicyClient(url).act(observation(5)).shape == (7,)


def test_a_missed_deadline_is_a_504_and_its_work_is_skipped():
    runner = tiny_runner()
    service = PolicyService(runner, BatcherConfig(max_batch=4, max_wait_ms=50.0), ServeLimits(256))
    with serve_in_background(service) as url:
        with pytest.raises(ServerError, match="504.*deadline of 1 ms"):
            PolicyClient(url, deadline_ms=1).act(observation(6))
        time.sleep(0.2)
        assert service.batcher.stats.expired == 1 and service.batcher.stats.batched_requests == 0


def test_the_batcher_batches_refuses_when_full_and_isolates_a_failed_batch():
    gate = threading.Event()
    seen: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        gate.wait(5)
        seen.append(items)
        if -1 in items:
            raise RuntimeError("bad batch")
        return [2 * x for x in items]

    async def scenario():
        batcher = DynamicBatcher(run, BatcherConfig(max_batch=4, max_wait_ms=20.0, max_queue=4))
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)  # the worker holds [0] and waits at the gate
        waiting = [asyncio.ensure_future(batcher.submit(x)) for x in (1, 2, 3, 4)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="queue full"):
            await batcher.submit(5)
        gate.set()
        assert (await first)[0] == 0
        answers = await asyncio.gather(*waiting)
        assert [a[0] for a in answers] == [2, 4, 6, 8] and {a[1]["batch_size"] for a in answers} == {4}
        with pytest.raises(RuntimeError, match="bad batch"):
            await batcher.submit(-1)
        assert (await batcher.submit(7))[0] == 14  # the next batch is served
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(8, deadline_ms=0.0)
        batcher.close()

    asyncio.run(scenario())
    assert [1, 2, 3, 4] in seen


@pytest.mark.parametrize(
    "values, message",
    [({"max_batch": 0}, "max_batch must be a whole number >= 1"), ({"max_wait_ms": -1.0}, "max_wait_ms must be")],
)
def test_bad_batching_settings_name_what_is_allowed(values, message):
    with pytest.raises(ValueError, match=message):
        BatcherConfig(**values)


def test_the_serve_command_refuses_a_missing_checkpoint_in_one_line():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "vla.serve", "checkpoint=/nonexistent.pt"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        "error: checkpoint=/nonexistent.pt: no such checkpoint file or run directory"
    ]


def test_the_load_generator_drives_real_env_processes_through_the_server():
    from vla.evaluation.closed_loop import policy_env_kwargs
    from vla.serve.load import load_row

    runner = tiny_runner()
    service = PolicyService(runner, BatcherConfig(max_batch=8, max_wait_ms=2.0), ServeLimits(256))
    with serve_in_background(service) as url:
        row = load_row(url, service, "VLASandbox/Reach-v0", 2, 2.0, policy_env_kwargs(runner.policy))
    assert row["robots"] == 2 and row["actions_per_s"] > 0 and row["refused"] == 0
    assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] and row["mean_batch"] >= 1
