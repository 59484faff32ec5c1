"""The demo page's server: a Starlette app, run by uvicorn in ``python -m vla.demo``.

Routes: ``GET /`` the page (``static/index.html``, plain HTML and JavaScript), ``GET /static/*``,
``GET /api/info`` (tasks, drivers, limits), ``GET /health``, and ``/ws``: one WebSocket per
page. A page sends JSON commands (``reset``, ``step``, ``run``, ``pause``, each with the
settings of the form) and receives ``episode``, ``frame``, ``status`` and ``error`` messages.

What keeps the server responsive whatever a page does: each connection owns one episode at
a time and one worker thread for its env and policy calls (MuJoCo's GL contexts stay on the
thread that made them, and the event loop never waits on the simulator); every episode is
bounded (``max_steps``); at most ``max_sessions`` pages are connected; a page silent for
``idle_timeout_s`` is disconnected; bad input is answered with one ``error`` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from envs.tabletop_env import INSTRUCTION_CHARSET, MAX_INSTRUCTION_LENGTH
from envs.tasks import TASK_CLASSES
from vla.demo.episode import DRIVERS, DemoEpisode, EpisodeSettings
from vla.demo.requests import MAX_SEED, BadRequest, parse_message, parse_settings
from vla.inference import PolicyRunner

STATIC = resources.files("vla.demo") / "static"
MAX_MESSAGE_BYTES = 256 * 1024  # a larger WebSocket message closes the connection (uvicorn ws_max_size)
IDLE_CLOSE, BUSY_CLOSE = 4000, 1013  # close codes: idle too long (stay closed), too many pages (retry later)


@dataclass
class DemoLimits:
    frame_size: int = 256  # pixels of the streamed camera frame
    fps: float = 20.0  # steps per second at most while running; 0: as fast as they come
    max_steps: int = 200  # an episode ends here at the latest (a task's own limit may end it sooner)
    max_sessions: int = 4  # pages connected at once
    idle_timeout_s: float = 600.0  # a page silent this long is disconnected


class DemoService:
    """The policy, shared by every page (decoded one call at a time under a lock), and the pages' count."""

    def __init__(self, runner: PolicyRunner, limits: DemoLimits, name: str = ""):
        self.runner, self.limits, self.name = runner, limits, name
        self.policy_lock = threading.Lock()
        self.sessions = 0
        self._ids = itertools.count(1)

    async def page(self, request: Request) -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text())

    async def info(self, request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "checkpoint": self.name,
                "tasks": list(TASK_CLASSES),
                "drivers": list(DRIVERS),
                "max_seed": MAX_SEED,
                "max_instruction_length": MAX_INSTRUCTION_LENGTH,
                "instruction_charset": INSTRUCTION_CHARSET,
                "max_steps": self.limits.max_steps,
                "keypoints": self.runner.policy.keypoint_reader is not None,
            }
        )

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "checkpoint": self.name, "pages": self.sessions})

    async def websocket(self, websocket: WebSocket) -> None:
        await websocket.accept()
        if self.sessions >= self.limits.max_sessions:
            await websocket.send_json(
                {
                    "type": "error",
                    "message": f"the demo serves {self.limits.max_sessions} pages at once: try again later",
                }
            )
            await websocket.close(code=BUSY_CLOSE)
            return
        self.sessions += 1
        session = PageSession(self, websocket, f"page-{next(self._ids)}")
        try:
            await session.serve()
        finally:
            self.sessions -= 1
            await session.close()


class PageSession:
    """One connected page: its episode, its worker thread, its running loop."""

    def __init__(self, service: DemoService, websocket: WebSocket, name: str):
        self.service, self.websocket, self.limits = service, websocket, service.limits
        self.worker = ThreadPoolExecutor(1, thread_name_prefix=f"demo-{name}")
        self.episode = DemoEpisode(
            service.runner, service.policy_lock, name, self.limits.frame_size, self.limits.max_steps
        )
        self.started = False  # an episode was reset at least once
        self.running: asyncio.Task[None] | None = None
        self.stop = False  # asks the running loop to end after its current step
        self.is_running = False  # the page's buttons follow it (every status and error says it)
        self.send_lock = asyncio.Lock()  # the loop and the command handler both send

    async def serve(self) -> None:
        await self.status("connected: pick a task, type an instruction, press Run")
        while True:
            try:
                message = await asyncio.wait_for(self.websocket.receive(), self.limits.idle_timeout_s)
            except asyncio.TimeoutError:
                idle = self.limits.idle_timeout_s
                await self.error(f"disconnected after {idle:g} s without a command: reload the page")
                await self.websocket.close(code=IDLE_CLOSE)  # the page does not reconnect by itself
                return
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            try:
                if text is None:
                    raise BadRequest("send commands as JSON text messages")
                await self.handle(parse_message(text))
            except BadRequest as error:
                await self.error(str(error))
            except (WebSocketDisconnect, RuntimeError, OSError):  # the page went away while we answered
                return
            except Exception as error:  # a defect, not the page's fault: say so and serve on
                await self.error(f"the demo failed on that command ({type(error).__name__}: {error}); try another")

    async def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "pause":
            await self.halt()
            await self.status(f"paused at step {self.episode.steps}: press Step or Run to go on")
            return
        if kind == "reset":
            await self.halt()
            await self.reset(message)
            await self.status("ready: press Step or Run")
            return
        if self.is_running:
            await self.status("already running: press Pause first")
            return
        settings = parse_settings(message)
        if not self.continues(settings, message.get("seed")):  # Step and Run act on what the form shows
            await self.reset(message)
        if kind == "step":
            await self.send(await self.call(self.episode.step))
            await self.status(f"step {self.episode.steps}" + (": episode over" if self.episode.done else ""))
        else:
            self.stop, self.is_running = False, True
            self.running = asyncio.create_task(self.run())

    def continues(self, settings: EpisodeSettings, seed: Any) -> bool:
        """Whether the form still describes the episode going on (an empty seed fits any scene)."""
        going = self.episode.settings
        if not self.started or self.episode.done or going is None:
            return False
        same_seed = seed is None or str(seed).strip() == "" or settings.seed == going.seed
        same_words = settings.driver == "expert" or settings.instruction == going.instruction
        return same_seed and same_words and (settings.task, settings.driver) == (going.task, going.driver)

    async def reset(self, message: dict[str, Any]) -> None:
        settings = parse_settings(message)
        await self.status(f"starting {settings.task} (seed {settings.seed}) with the {settings.driver}...")
        try:
            described = await self.call(self.episode.reset, settings)
        except ValueError as error:  # the env refuses the instruction, in its own words
            await self.status("not started: see the message below")
            raise BadRequest(f"not accepted: {error}") from None
        self.started = True
        await self.send(described)

    async def run(self) -> None:
        """Step until the episode ends or Pause, at most ``fps`` steps per second."""
        interval = 1.0 / self.limits.fps if self.limits.fps > 0 else 0.0
        try:
            await self.status(f"running with the {self.episode.settings.driver}...")
            while not self.episode.done and not self.stop:
                began = time.monotonic()
                await self.send(await self.call(self.episode.step))
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))  # yields to commands too
            self.is_running = False
            if self.episode.done:
                await self.status(f"episode over after {self.episode.steps} steps")
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the page went away mid-run; serve() sees the disconnect
        except Exception as error:  # the policy or the env failed: say so, end the episode, serve on
            self.episode.done, self.is_running = True, False
            await self.error(f"the episode failed at step {self.episode.steps}: {type(error).__name__}: {error}")
        finally:
            self.is_running = False

    async def halt(self) -> None:
        if self.running is not None:
            self.stop = True
            await self.running  # ends after its current step
            self.running = None

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.worker, function, *args)

    async def send(self, message: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.websocket.send_json(message)

    async def status(self, text: str) -> None:
        await self.send({"type": "status", "text": text, "running": self.is_running})

    async def error(self, text: str) -> None:
        with contextlib.suppress(Exception):  # the page may be gone already
            await self.send({"type": "error", "message": text, "running": self.is_running})

    async def close(self) -> None:
        if self.running is not None:
            self.stop = True
            self.running.cancel()
            with contextlib.suppress(BaseException):
                await self.running
        await asyncio.get_running_loop().run_in_executor(self.worker, self.episode.close)
        self.worker.shutdown(wait=False)


def make_app(service: DemoService) -> Starlette:
    routes = [
        Route("/", service.page, methods=["GET"]),
        Route("/api/info", service.info, methods=["GET"]),
        Route("/health", service.health, methods=["GET"]),
        WebSocketRoute("/ws", service.websocket),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    return Starlette(routes=routes)


def uvicorn_config(service: DemoService, host: str, port: int) -> Any:
    import uvicorn

    return uvicorn.Config(
        make_app(service),
        host=host,
        port=port,
        log_level="warning",
        ws="websockets-sansio",  # the WebSocket implementation (the demo extra: websockets)
        ws_max_size=MAX_MESSAGE_BYTES,
        limit_concurrency=service.limits.max_sessions + 32,  # pages plus their page and file requests
    )


@contextlib.contextmanager
def demo_in_background(service: DemoService, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run the demo server in a thread of this process (tests, screenshots); yields its URL."""
    from vla.serve.app import uvicorn_in_background

    with uvicorn_in_background(uvicorn_config(service, host, port), "demo server") as url:
        yield url
