"""The demo page (vla/demo) in a real headless browser: Debian's chromium, driven by Playwright,
against the demo server on a loopback port with a tiny untrained checkpoint. A person's
instruction runs an episode whose frames stream in and which ends with a result; an empty,
a 10,000-character and a bad-character instruction, and a bad seed, each get a clear message
and the page goes on; the scripted expert runs an episode too. Plus the server's own
refusals over a plain WebSocket (no browser)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import REPO_ROOT, TINY_MODEL
from vla.checkpoint import save_checkpoint
from vla.demo.app import DemoLimits, DemoService, demo_in_background
from vla.demo.episode import EpisodeSettings
from vla.demo.requests import BadRequest, parse_message, parse_settings
from vla.inference import load_policy
from vla.policy import PolicyConfig, VLAPolicy
from vla.tokenizer import ActionTokenizer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MAX_STEPS = 30  # every episode here ends within this many steps (reach's own limit is 60)
TIMEOUT_MS = 30_000  # for any one thing the page must show


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    """A tiny untrained policy with a keypoint reader and an out-of-scope check (so the page
    shows keypoints, and may stop), loaded from a checkpoint file as the command line does."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("demo") / "tiny.pt"
    policy = VLAPolicy(PolicyConfig.from_dict({**TINY_MODEL, "keypoints": 2, "scope_check": True}))
    save_checkpoint(path, policy, ActionTokenizer(256))
    return load_policy(path)


@pytest.fixture(scope="module")
def demo_url(runner) -> str:
    """The demo server, in this process, on a free loopback port."""
    # real-time pacing (20 steps/s, the default): long enough to pause a run, 1.5 s an episode
    limits = DemoLimits(frame_size=96, fps=20.0, max_steps=MAX_STEPS, max_sessions=2, idle_timeout_s=60.0)
    with demo_in_background(DemoService(runner, limits, name="tiny.pt")) as url:
        yield url


def wait_until_no_pages(demo_url: str, timeout_s: float = 30.0) -> None:
    """Pages the earlier tests closed are released by the server a moment later (under load, seconds)."""
    deadline = time.monotonic() + timeout_s
    while json.loads(urllib.request.urlopen(f"{demo_url}/health", timeout=10).read())["pages"] > 0:
        assert time.monotonic() < deadline, "the server still counts pages the earlier tests closed"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):  # .ci/run installs it: missing there is a broken CI, not a skip
            pytest.fail("chromium is missing on CI: .ci/run should have installed it (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, demo_url):
    wait_until_no_pages(demo_url)
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(demo_url)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('connected')")
    yield page
    page.close()


def run_episode(page, instruction: str, task: str = "reach", seed: str = "3", button: str = "#run") -> dict:
    """Fill the form, press ``button`` and wait for the episode's result; what the page shows."""
    page.select_option("#task", task)
    page.fill("#seed", seed)
    page.fill("#instruction", instruction)
    page.evaluate("document.getElementById('result').dataset.state = 'pending'")  # not the last episode's
    page.click(button)
    page.wait_for_function("['success', 'failure'].includes(document.getElementById('result').dataset.state)")
    shown = {
        key: page.inner_text(f"#{key}")
        for key in ("result", "step-count", "frames-received", "tokens", "keypoints", "episode-info", "error")
    }
    shown["frame"] = page.get_attribute("#frame", "src")
    shown["running"] = not page.is_disabled("#pause")
    return shown


def show_error(page, instruction: str, seed: str = "3") -> str:
    """Press Run with ``instruction``; the error line the page shows."""
    page.fill("#seed", seed)
    page.fill("#instruction", instruction)
    page.evaluate("document.getElementById('error').textContent = ''")
    page.click("#run")
    page.wait_for_function("document.getElementById('error').textContent.length > 0")
    return page.inner_text("#error")


def test_a_typed_instruction_runs_live_and_ends_with_a_result(page):
    first_frame = None
    page.select_option("#task", "reach")
    page.fill("#seed", "3")
    page.fill("#instruction", "touch the red cube")
    page.click("#reset")  # the first frame, before any step
    page.wait_for_function("document.getElementById('frame').src.startsWith('data:image/jpeg')")
    first_frame = page.get_attribute("#frame", "src")
    page.click("#step")
    page.click("#step")
    page.wait_for_function("document.getElementById('step-count').textContent === '2'")
    shown = run_episode(page, "touch the red cube")  # Run goes on from step 2 to the end
    steps = int(shown["step-count"])
    assert 2 < steps <= MAX_STEPS and shown["result"].startswith(("Success", "Failure")), shown
    assert int(shown["frames-received"]) == steps + 1, shown  # the reset's frame and one per step
    assert shown["frame"] != first_frame and shown["frame"].startswith("data:image/jpeg;base64,")
    assert len(shown["tokens"].split()) == 7 and all(t.isdigit() for t in shown["tokens"].split())
    assert shown["keypoints"].startswith("read (") and "true (" in shown["keypoints"]
    assert 'told "touch the red cube"' in shown["episode-info"] and not shown["running"]
    again = run_episode(page, "touch the red cube", seed="4")  # a new episode after the end
    assert again["result"].startswith(("Success", "Failure")) and "seed 4" in again["episode-info"]


def test_bad_instructions_get_a_clear_message_and_the_page_goes_on(page):
    page.select_option("#task", "reach")
    assert "empty" in show_error(page, "")
    assert "empty" in show_error(page, "   ")
    long = show_error(page, "x" * 10_000)
    assert "1..256 characters, got 10000" in long, long
    assert "too long" in page.inner_text("#char-count")
    odd = show_error(page, "touch the <red> cube")
    assert "outside the allowed set" in odd and "'<'" in odd, odd
    assert "seed 'abc' is not allowed" in show_error(page, "touch the red cube", seed="abc")
    assert not page.is_disabled("#run")  # nothing is left running after a refusal
    nonsense = run_episode(page, "blorp the zibble quickly")  # a policy that still runs
    assert nonsense["result"].startswith(("Success", "Failure")) and nonsense["error"] == ""


def test_the_scripted_expert_runs_the_same_scene(page):
    shown = run_episode(page, "", task="lift", seed="5", button="#expert")  # the expert needs no words
    assert shown["result"].startswith("Success"), shown
    assert "scripted expert" in shown["episode-info"] and int(shown["frames-received"]) > 2
    page.click("#suggest")  # the scene's own instruction, filled in for the policy
    page.wait_for_function("document.getElementById('instruction').value.length > 0")
    scene_words = page.input_value("#instruction")
    assert scene_words in shown["episode-info"]
    policy = run_episode(page, scene_words, task="lift", seed="5")  # Run now drives the policy, same scene
    assert f'the policy, told "{scene_words}"' in policy["episode-info"], policy


def test_pause_stops_a_run_and_run_goes_on(browser, demo_url):
    wait_until_no_pages(demo_url)
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(demo_url)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('connected')")
    page.fill("#instruction", "touch the red cube")
    page.click("#run")
    page.wait_for_function("Number(document.getElementById('step-count').textContent) >= 1")
    page.click("#pause")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('paused')")
    paused_at = int(page.inner_text("#step-count"))
    assert paused_at < MAX_STEPS and page.get_attribute("#result", "data-state") == "running"
    page.click("#run")  # goes on from where it paused, to the end
    page.wait_for_function("['success', 'failure'].includes(document.getElementById('result').dataset.state)")
    assert int(page.inner_text("#step-count")) > paused_at
    page.close()


def next_of(socket, kind: str) -> dict:
    """The next message of ``kind`` (status lines between are skipped)."""
    while True:
        message = json.loads(socket.recv(timeout=10))
        if message["type"] == kind:
            return message
        assert message["type"] == "status", message


def test_the_server_refuses_bad_messages_and_extra_pages(demo_url):
    from websockets.sync.client import connect

    wait_until_no_pages(demo_url)
    info = json.loads(urllib.request.urlopen(f"{demo_url}/api/info", timeout=10).read())
    assert "reach" in info["tasks"] and info["max_instruction_length"] == 256 and info["keypoints"]
    address = demo_url.replace("http", "ws") + "/ws"
    with connect(address) as first, connect(address) as second:
        for socket in (first, second):
            assert json.loads(socket.recv(timeout=10))["type"] == "status"
        first.send("{not json")
        assert json.loads(first.recv(timeout=10))["message"] == "the message is not valid JSON"
        first.send(json.dumps({"type": "jump"}))
        assert "unknown command 'jump'" in json.loads(first.recv(timeout=10))["message"]
        first.send(json.dumps({"type": "reset", "task": "juggle", "instruction": "hi"}))
        assert "task 'juggle' is not one of reach" in json.loads(first.recv(timeout=10))["message"]
        form = {"task": "reach", "seed": "007", "instruction": "touch the red cube"}
        first.send(json.dumps({"type": "reset", **form}))
        assert next_of(first, "episode")["seed"] == 7
        for step in (1, 2):  # "007" is seed 7: the same episode goes on
            first.send(json.dumps({"type": "step", **form}))
            assert next_of(first, "frame")["step"] == step
        with connect(address) as third:  # past max_sessions=2
            refusal = json.loads(third.recv(timeout=10))
            assert refusal["type"] == "error" and "2 pages at once" in refusal["message"]
    health = json.loads(urllib.request.urlopen(f"{demo_url}/health", timeout=10).read())
    assert health["status"] == "ok"


def test_a_silent_page_is_disconnected_and_a_giant_message_closes_only_its_socket(runner):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    service = DemoService(runner, DemoLimits(frame_size=32, idle_timeout_s=1.0))
    with demo_in_background(service) as url:
        with connect(url.replace("http", "ws") + "/ws") as silent:
            assert next_of(silent, "error")["message"] == "disconnected after 1 s without a command: reload the page"
            with pytest.raises(ConnectionClosed) as closed:
                silent.recv(timeout=10)
            assert closed.value.rcvd.code == 4000  # the page's cue not to reconnect by itself
        with connect(url.replace("http", "ws") + "/ws") as giant:
            giant.send(json.dumps({"type": "reset", "task": "reach", "instruction": "x" * 300_000}))
            with pytest.raises(ConnectionClosed) as closed:
                next_of(giant, "error")
            assert closed.value.rcvd.code == 1009  # too big: the server goes on
        with connect(url.replace("http", "ws") + "/ws") as after:
            assert next_of(after, "status")["text"].startswith("connected")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FIELDS = st.sampled_from(["reset", "step", "run", "pause", "jump", None, 3])


@settings(max_examples=300, deadline=None)
@given(
    raw=st.text(max_size=60) | JSON.map(json.dumps),
    form=st.fixed_dictionaries(
        {"type": FIELDS},
        optional={
            "task": st.sampled_from(["reach", "stack", "Reach", ""]) | JSON,
            "seed": JSON,
            "instruction": JSON,
            "driver": st.sampled_from(["policy", "expert", "human"]) | JSON,
        },
    ),
)
def test_any_message_is_a_command_or_one_clear_line(raw, form):
    """Generated messages: each is accepted or refused with a BadRequest line, never another error."""
    for text in (raw, json.dumps(form)):
        try:
            message = parse_message(text)
        except BadRequest as error:
            assert "\n" not in str(error) and len(str(error)) < 300
            continue
        try:
            settings = parse_settings(message)
        except BadRequest as error:
            assert "\n" not in str(error) and len(str(error)) < 300
            continue
        assert isinstance(settings, EpisodeSettings) and 0 <= settings.seed < 2**31


def test_the_command_line_answers_a_bad_value_in_one_line():
    command = [sys.executable, "-m", "vla.demo", "checkpoint=/no/such.pt"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "error: checkpoint=/no/such.pt: no such checkpoint file or run directory"
    )


def test_the_page_ships_with_the_package():
    static = Path(__file__).resolve().parents[1] / "vla" / "demo" / "static"
    assert {"index.html", "demo.js", "demo.css"} <= {p.name for p in static.iterdir()}
