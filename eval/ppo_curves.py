"""Success vs environment steps of PPO runs, in one PNG (drawn with Pillow: no plotting dependency).

    python eval/ppo_curves.py "BC+PPO=outputs/ppo/bc_ppo" "PPO scratch=outputs/ppo/scratch" \
        "SB3 CNN=outputs/ppo/cnn" --out docs/images/ppo_curves.png

Each run directory's evals.jsonl (written by train/ppo.py) gives the points; the bars are
their 95% Wilson intervals.
"""

from __future__ import annotations

import argparse
import json
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

    for k, (label, rows) in enumerate(runs.items()):
        colour = COLOURS[k % len(COLOURS)]
        rows = sorted(rows, key=lambda r: r["step"])
        points = [xy(r["step"], r["success_rate"]) for r in rows]
        for r, (x, y) in zip(rows, points, strict=True):
            lo, hi = xy(r["step"], r["ci95"][0])[1], xy(r["step"], r["ci95"][1])[1]
            draw.line([x + 2 * k, lo, x + 2 * k, hi], fill=colour, width=1)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        draw.line([left + 15, top + 15 + 18 * k, left + 40, top + 15 + 18 * k], fill=colour, width=3)
        episodes = rows[-1]["episodes"]
        draw.text((left + 45, top + 9 + 18 * k), f"{label} ({episodes} episodes per point)", fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    parser.add_argument("--out", type=Path, default=Path("docs/images/ppo_curves.png"))
    parser.add_argument("--title", default="Reach: success vs env steps")
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
