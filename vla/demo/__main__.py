"""``python -m vla.demo checkpoint=<run dir or .pt>``: the interactive demo page (configs/demo.yaml)."""

from __future__ import annotations

import re

from omegaconf import DictConfig

from vla.app.cli import hydra_entry
from vla.checkpoint import check_checkpoint_path
from vla.demo.app import DemoLimits
from vla.inference import parse_scope_threshold

FRAME_SIZES = (16, 512)  # the env's image size range (envs/tabletop_env.py)
MAX_STEPS = 10_000
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def limits(cfg: DictConfig) -> DemoLimits:
    return DemoLimits(
        int(cfg.frame_size), float(cfg.fps), int(cfg.max_steps), int(cfg.max_sessions), float(cfg.idle_timeout_s)
    )


def check_config(cfg: DictConfig) -> None:
    check_checkpoint_path(cfg.checkpoint)
    if not isinstance(cfg.port, int) or not 0 <= cfg.port <= 65535:
        raise ValueError(f"port must be a whole number in 0..65535, got {cfg.port!r}")
    if not DEVICE.fullmatch(str(cfg.device)):
        raise ValueError(f"device={cfg.device}: allowed are auto, cpu, cuda or cuda:<index>")
    if not FRAME_SIZES[0] <= cfg.frame_size <= FRAME_SIZES[1]:
        raise ValueError(f"frame_size={cfg.frame_size}: allowed are {FRAME_SIZES[0]}..{FRAME_SIZES[1]} pixels")
    if not 1 <= cfg.max_steps <= MAX_STEPS:
        raise ValueError(f"max_steps={cfg.max_steps}: allowed are 1..{MAX_STEPS}")
    if cfg.max_sessions < 1:
        raise ValueError(f"max_sessions={cfg.max_sessions}: at least 1 page must be allowed")
    if not cfg.idle_timeout_s > 0:
        raise ValueError(f"idle_timeout_s={cfg.idle_timeout_s}: must be more than 0 seconds")
    parse_scope_threshold(cfg.scope_threshold)
    limits(cfg)


def demo(cfg: DictConfig) -> None:
    import uvicorn

    from vla.demo.app import DemoService, uvicorn_config
    from vla.inference import load_policy
    from vla.training.runtime import resolve_device

    threshold = parse_scope_threshold(cfg.scope_threshold)
    runner = load_policy(cfg.checkpoint, device=resolve_device(cfg.device), scope_threshold=threshold)
    service = DemoService(runner, limits(cfg), name=str(cfg.checkpoint))
    print(f"demo of {cfg.checkpoint}: open http://{cfg.host}:{cfg.port} in a browser (Ctrl-C stops it)")
    uvicorn.Server(uvicorn_config(service, cfg.host, int(cfg.port))).run()


if __name__ == "__main__":
    hydra_entry("demo", demo, check_config)
