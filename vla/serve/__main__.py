"""``python -m vla.serve checkpoint=<run dir or .pt>``: serve a policy over HTTP (configs/serve.yaml)."""

from __future__ import annotations

from omegaconf import DictConfig

from vla.app.cli import hydra_entry
from vla.checkpoint import check_checkpoint_path
from vla.inference import parse_scope_threshold
from vla.serve.app import PolicyService, ServeLimits, make_app
from vla.serve.batcher import BatcherConfig


def check_config(cfg: DictConfig) -> None:
    check_checkpoint_path(cfg.checkpoint)
    batching(cfg)
    if not isinstance(cfg.port, int) or not 0 <= cfg.port <= 65535:
        raise ValueError(f"port must be a whole number in 0..65535, got {cfg.port!r}")
    if not isinstance(cfg.max_body_kb, int) or cfg.max_body_kb < 1:
        raise ValueError(f"max_body_kb must be a whole number >= 1, got {cfg.max_body_kb!r}")
    parse_scope_threshold(cfg.scope_threshold)


def batching(cfg: DictConfig) -> BatcherConfig:
    return BatcherConfig(int(cfg.max_batch), float(cfg.max_wait_ms), int(cfg.max_queue), float(cfg.deadline_ms))


def serve(cfg: DictConfig) -> None:
    import uvicorn

    from vla.inference import load_policy
    from vla.training.runtime import resolve_device

    threshold = parse_scope_threshold(cfg.scope_threshold)
    runner = load_policy(cfg.checkpoint, device=resolve_device(cfg.device), scope_threshold=threshold)
    service = PolicyService(runner, batching(cfg), ServeLimits(int(cfg.max_body_kb)), name=str(cfg.checkpoint))
    print(f"serving {cfg.checkpoint} on http://{cfg.host}:{cfg.port}  (POST /act, GET /health, GET /metrics)")
    # uvicorn's own limit answers 503 to connections past the queue's size and a margin
    uvicorn.run(
        make_app(service),
        host=cfg.host,
        port=int(cfg.port),
        log_level="warning",
        limit_concurrency=int(cfg.max_queue) + 64,
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    hydra_entry("serve", serve, check_config)
