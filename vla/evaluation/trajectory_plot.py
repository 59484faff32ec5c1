"""The policy's end-effector path against the scripted expert's on the same seed, as one PNG:
the top view (x, y) and the height over time, the solved step marked. Drawn with Pillow, so
plotting needs no extra dependency (as eval/ppo_curves.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from vla.evaluation.inspection import Episode

POLICY_COLOUR, EXPERT_COLOUR = (31, 119, 180), (255, 127, 14)
TARGET_COLOUR, DESTINATION_COLOUR = (214, 39, 40), (44, 160, 44)
PANEL = (420, 340)  # pixels of each panel's plotting area
MARGIN = (56, 46, 20, 44)  # left, top, right, bottom


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]: steps of 1, 2 or 5 x 10^n."""
    span = max(high - low, 1e-9)
    raw = span / count
    step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    start = math.ceil(low / step) * step
    return [round(start + i * step, 10) for i in range(int((high - start) / step) + 1)]


class Axes:
    """A plotting area at ``origin`` mapping data (x, y) to pixels, with ticks and labels."""

    def __init__(self, draw: ImageDraw.ImageDraw, origin: tuple[int, int], limits: tuple[float, float, float, float]):
        self.draw, (self.left, self.top) = draw, origin
        self.x0, self.x1, self.y0, self.y1 = limits

    def __call__(self, x: float, y: float) -> tuple[float, float]:
        u = self.left + (x - self.x0) / (self.x1 - self.x0) * PANEL[0]
        v = self.top + (1 - (y - self.y0) / (self.y1 - self.y0)) * PANEL[1]
        return u, v

    def frame(self, title: str, xlabel: str, ylabel: str) -> None:
        d = self.draw
        d.rectangle([self.left, self.top, self.left + PANEL[0], self.top + PANEL[1]], outline=(0, 0, 0))
        for x in nice_ticks(self.x0, self.x1):
            u, _ = self(x, self.y0)
            d.line([u, self.top, u, self.top + PANEL[1]], fill=(230, 230, 230))
            d.text((u - 8, self.top + PANEL[1] + 4), f"{x:g}", fill=(0, 0, 0))
        for y in nice_ticks(self.y0, self.y1):
            _, v = self(self.x0, y)
            d.line([self.left, v, self.left + PANEL[0], v], fill=(230, 230, 230))
            d.text((self.left - 36, v - 6), f"{y:g}", fill=(0, 0, 0))
        d.text((self.left, self.top - 16), title, fill=(0, 0, 0))
        d.text((self.left + PANEL[0] // 2 - 3 * len(xlabel), self.top + PANEL[1] + 20), xlabel, fill=(0, 0, 0))
        d.text((self.left - 52, self.top - 30), ylabel, fill=(0, 0, 0))

    def line(self, points: np.ndarray, colour: tuple[int, int, int], width: int = 2) -> None:
        self.draw.line([self(x, y) for x, y in points], fill=colour, width=width, joint="curve")

    def marker(self, x: float, y: float, colour: tuple[int, int, int], shape: str = "dot", size: int = 5) -> None:
        u, v = self(x, y)
        box = [u - size, v - size, u + size, v + size]
        if shape == "ring":
            self.draw.ellipse(box, outline=colour, width=2)
        elif shape == "star":  # the solved step
            points = [
                (u + (size + 3) * (1 if i % 2 == 0 else 0.45) * math.sin(i * math.pi / 5),
                 v - (size + 3) * (1 if i % 2 == 0 else 0.45) * math.cos(i * math.pi / 5))
                for i in range(10)
            ]  # fmt: skip
            self.draw.polygon(points, fill=colour, outline=(0, 0, 0))
        else:
            self.draw.ellipse(box, fill=colour)


def _limits(values: np.ndarray, pad: float = 0.08) -> tuple[float, float]:
    low, high = float(values.min()), float(values.max())
    margin = max(high - low, 1.0) * pad
    return low - margin, high + margin


def plot_trajectories(episode: Episode) -> np.ndarray:
    """The figure (uint8 HWC): left the top view in cm with the target (red ring) and the
    destination (green ring), right the height in cm over steps; stars at the solved steps."""
    policy, expert = 100 * np.stack(episode.path), 100 * np.stack(episode.expert_path)
    keys = 100 * np.asarray(episode.key_positions, dtype=np.float64).reshape(2, 3)
    size = (2 * (MARGIN[0] + PANEL[0] + MARGIN[2]), MARGIN[1] + PANEL[1] + MARGIN[3] + 44)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    both = np.concatenate([policy, expert, keys])
    # equal scales on x and y: a top view must not stretch the table
    (x0, x1), (y0, y1) = _limits(both[:, 0]), _limits(both[:, 1])
    half = max(x1 - x0, (y1 - y0) * PANEL[0] / PANEL[1]) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    top = Axes(
        draw,
        (MARGIN[0], MARGIN[1]),
        (cx - half, cx + half, cy - half * PANEL[1] / PANEL[0], cy + half * PANEL[1] / PANEL[0]),
    )
    top.frame("top view (grip site)", "x (cm)", "y (cm)")
    steps = max(len(policy), len(expert)) - 1
    z0, z1 = _limits(np.concatenate([both[:, 2], [0.0]]))
    side = Axes(draw, (2 * MARGIN[0] + PANEL[0] + MARGIN[2], MARGIN[1]), (0, max(steps, 1), z0, z1))
    side.frame("height over time", "step", "z (cm)")
    for i, colour in enumerate((TARGET_COLOUR, DESTINATION_COLOUR)):
        top.marker(keys[i, 0], keys[i, 1], colour, "ring", size=9 - 3 * i)
    for path, colour, solved in (
        (expert, EXPERT_COLOUR, episode.expert_success_step),
        (policy, POLICY_COLOUR, episode.success_step),
    ):
        top.line(path[:, :2], colour)
        side.line(np.stack([np.arange(len(path)), path[:, 2]], 1), colour)
        top.marker(path[0, 0], path[0, 1], colour, "dot", 4)
        if solved is not None:
            top.marker(path[solved, 0], path[solved, 1], colour, "star")
            side.marker(solved, path[solved, 2], colour, "star")
    _legend(draw, episode, size)
    return np.asarray(image)


def _legend(draw: ImageDraw.ImageDraw, episode: Episode, size: tuple[int, int]) -> None:
    def outcome(step: int | None) -> str:
        return f"solved at step {step} (star)" if step is not None else "not solved"

    y = size[1] - 40
    entries = [
        (POLICY_COLOUR, f"policy: {outcome(episode.success_step)}"),
        (EXPERT_COLOUR, f"scripted expert, same seed: {outcome(episode.expert_success_step)}"),
    ]
    x = MARGIN[0]
    for colour, text in entries:
        draw.line([x, y + 6, x + 24, y + 6], fill=colour, width=3)
        draw.text((x + 30, y), text, fill=(0, 0, 0))
        x += 40 + 6 * len(text)
    draw.text(
        (MARGIN[0], y + 18),
        f"{episode.task} seed {episode.seed}: {episode.instruction}   (rings: target red, destination green)",
        fill=(0, 0, 0),
    )


def save_png(image: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, optimize=True)
    return path
