"""Generated malformed and oversized requests to the policy server (vla/serve): random bytes,
random JSON, a valid body with fields replaced or added, and bodies past the size limit.

Each gets a 4xx answer whose ``error`` is one line (or, where the body happens to be valid, an
action); the server answers a valid request after every case and never grows its queue."""

from __future__ import annotations

import http.client
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.reliability.cases import record_case
from tests.test_serve import good_body, observation, tiny_runner
from vla.serve.app import PolicyService, ServeLimits, serve_in_background
from vla.serve.batcher import BatcherConfig
from vla.serve.client import PolicyClient

LIMIT_KB = 64


@pytest.fixture(scope="module")
def url():
    service = PolicyService(
        tiny_runner(), BatcherConfig(max_batch=8, max_wait_ms=2.0, max_queue=16), ServeLimits(LIMIT_KB)
    )
    with serve_in_background(service) as address:
        yield address


def post(url: str, body: bytes) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=20)
    connection.request("POST", "/act", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    answer = response.read()
    connection.close()
    return response.status, answer


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["instruction", "proprio", "image", "image_shape", "wrist_image", "session", "reset", "deadline_ms", "extra"]


@st.composite
def bodies(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "field", "oversized"]))
    if kind == "bytes":
        return draw(st.binary(max_size=2000))
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    if kind == "oversized":
        return json.dumps(good_body(instruction="a" * draw(st.integers(LIMIT_KB * 1024, LIMIT_KB * 1024 * 3)))).encode()
    body = good_body()
    for _ in range(draw(st.integers(1, 3))):
        body[draw(st.sampled_from(FIELDS))] = draw(JSON)
    return json.dumps(body).encode()


@given(body=bodies())
def test_any_request(url, body):
    record_case("server")
    status, answer = post(url, body)
    parsed = json.loads(answer)
    if status == 200:
        assert len(parsed["action"]) == 7 and np.all(np.isfinite(parsed["action"]))
    else:
        assert status in (400, 413, 422), (status, parsed)
        assert isinstance(parsed["error"], str) and "\n" not in parsed["error"] and len(parsed["error"]) < 600
    assert PolicyClient(url).act(observation(1)).shape == (7,)
