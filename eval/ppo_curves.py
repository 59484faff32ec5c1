"""Success vs environment steps of PPO runs, in one PNG (drawn with Pillow: no plotting dependency).

    python eval/ppo_curves.py "BC+PPO=outputs/ppo/bc_ppo" "PPO scratch=outputs/ppo/scratch" \
        "SB3 CNN=outputs/ppo/cnn" --out docs/images/ppo_curves.png

Each run directory's evals.jsonl (written by train/ppo.py) gives the points; the bars are
their 95% Wilson intervals.
"""

from __future__ import annotations

import argparse
import json
from itertools import pairwise
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207), (140, 86, 75)]
SIZE, MARGIN = (900, 560), (80, 40, 30, 70)  # left, top, right, bottom


def read_evals(run_dir: Path) -> list[dict]:
    path = run_dir / "evals.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no evals.jsonl in {run_dir} (a train/ppo.py run directory?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot(runs: dict[str, list[dict]], out: Path, title: str) -> Path:
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = MARGIN
    width, height = SIZE[0] - left - right, SIZE[1] - top - bottom
    max_step = max(max(r["step"] for r in rows) for rows in runs.values()) or 1
    top_rate = min(1.0, max(0.2, max(r["ci95"][1] for rows in runs.values() for r in rows) * 1.1))

    def xy(step: float, rate: float) -> tuple[float, float]:
        return left + width * step / max_step, top + height * (1 - rate / top_rate)

    draw.rectangle([left, top, left + width, top + height], outline="black")
    for i in range(6):  # ticks
        rate, step = top_rate * i / 5, max_step * i / 5
        y, x = xy(0, rate)[1], xy(step, 0)[0]
        draw.line([left - 5, y, left, y], fill="black")
        draw.text((left - 45, y - 6), f"{100 * rate:.0f}%", fill="black")
        draw.line([x, top + height, x, top + height + 5], fill="black")
        draw.text((x - 20, top + height + 10), f"{step / 1000:.{0 if max_step >= 10_000 else 1}f}k", fill="black")
    draw.text((left + width / 2 - 60, SIZE[1] - 30), "environment steps", fill="black")
    draw.text((10, top - 25), "success (95% Wilson CI)", fill="black")
    draw.text((left + 150, 10), title, fill="black")

    drawn: list[tuple[float, float]] = []
    for k, rows in enumerate(runs.values()):
        colour = COLOURS[k % len(COLOURS)]
        rows = sorted(rows, key=lambda r: r["step"])
        points = [xy(r["step"], r["success_rate"]) for r in rows]
        for r, (x, y) in zip(rows, points, strict=True):
            lo, hi = xy(r["step"], r["ci95"][0])[1], xy(r["step"], r["ci95"][1])[1]
            draw.line([x + 2 * k, lo, x + 2 * k, hi], fill=colour, width=1)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        drawn.extend(points)
        for (xa, ya), (xb, yb) in pairwise(points):  # the lines between them, sampled
            drawn.extend((xa + (xb - xa) * t / 20, ya + (yb - ya) * t / 20) for t in range(1, 20))
    draw_legend(draw, runs, drawn, (left, top, left + width, top + height))
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out


def legend_place(
    points: list[tuple[float, float]], box: tuple[float, float], frame: tuple[float, float, float, float]
) -> tuple[float, float]:
    """Top-left corner for a legend box of size ``box`` inside ``frame`` (x0, y0, x1, y1) that
    covers the fewest ``points``: 3 columns x 5 rows of places, top left first on ties."""
    box_w, box_h = box
    x0, y0, x1, y1 = frame
    xs = [x0 + 8, (x0 + x1 - box_w) / 2, x1 - 8 - box_w]
    ys = [y0 + 8 + (y1 - y0 - 16 - box_h) * i / 4 for i in range(5)]

    def hidden(place: tuple[float, float]) -> int:
        cx, cy = place
        return sum(cx <= x <= cx + box_w and cy <= y <= cy + box_h for x, y in points)

    return min(((x, y) for y in ys for x in xs), key=hidden)


def draw_legend(
    draw: ImageDraw.ImageDraw,
    runs: dict[str, list[dict]],
    points: list[tuple[float, float]],
    frame: tuple[float, float, float, float],
) -> None:
    """The legend on a white box, where it hides the fewest points of the curves."""
    labels = [f"{label} ({rows[-1]['episodes']} episodes per point)" for label, rows in runs.items()]
    box_w, box_h = 50 + 6 * max(len(text) for text in labels), 10 + 18 * len(labels)
    cx, cy = legend_place(points, (box_w, box_h), frame)
    draw.rectangle([cx, cy, cx + box_w, cy + box_h], fill="white", outline="grey")
    for k, text in enumerate(labels):
        y = cy + 14 + 18 * k
        draw.line([cx + 7, y, cx + 32, y], fill=COLOURS[k % len(COLOURS)], width=3)
        draw.text((cx + 37, y - 6), text, fill="black")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    parser.add_argument("--out", type=Path, default=Path("docs/images/ppo_curves.png"))
    parser.add_argument("--title", default="PPO: validation success vs env steps")
    args = parser.parse_args()
    runs = {}
    for item in args.runs:
        label, sep, path = item.rpartition("=")  # labels may hold "=", paths rarely do
        if not sep:
            raise SystemExit(f"error: expected LABEL=RUN_DIR, got {item!r}")
        try:
            runs[label] = read_evals(Path(path))
        except FileNotFoundError as error:
            raise SystemExit(f"error: {error}") from None
    print(plot(runs, args.out, args.title))


if __name__ == "__main__":
    main()
