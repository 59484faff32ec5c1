"""Actions per second and milliseconds per batch against batch size, from eval/bench_inference.py
JSON files (their ``throughput`` rows), in one PNG drawn with Pillow (log-log axes).

    python eval/plot_throughput.py bench.json [more.json ...] --out docs/images/throughput.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]
PANEL, MARGIN = (560, 420), (80, 50, 20, 60)  # one panel; left, top, right, bottom


def read_series(paths: list[Path]) -> tuple[dict[str, list[dict]], str]:
    series: dict[str, list[dict]] = {}
    device = ""
    for path in paths:
        report = json.loads(path.read_text())
        device = report.get("device", device)
        for row in report.get("throughput", []):
            series.setdefault(f"{row['dtype']} {row['mode']}", []).append(row)
    if not series:
        raise SystemExit(f"error: no throughput rows in {', '.join(map(str, paths))}")
    return {k: sorted(v, key=lambda r: r["batch"]) for k, v in series.items()}, device


def panel(draw: ImageDraw.ImageDraw, x0: int, series: dict[str, list[dict]], key: str, label: str) -> None:
    left, top, right, bottom = MARGIN
    width, height = PANEL[0] - left - right, PANEL[1] - top - bottom
    batches = [r["batch"] for rows in series.values() for r in rows]
    values = [r[key] for rows in series.values() for r in rows]
    bx = (math.log10(min(batches)), math.log10(max(batches)))
    vy = (math.floor(math.log10(min(values))), math.ceil(math.log10(max(values))))

    def xy(batch: float, value: float) -> tuple[float, float]:
        fx = (math.log10(batch) - bx[0]) / max(bx[1] - bx[0], 1e-9)
        fy = (math.log10(value) - vy[0]) / max(vy[1] - vy[0], 1e-9)
        return x0 + left + width * fx, top + height * (1 - fy)

    draw.rectangle([x0 + left, top, x0 + left + width, top + height], outline="black")
    for power in range(vy[0], vy[1] + 1):
        y = xy(min(batches), 10**power)[1]
        draw.line([x0 + left - 5, y, x0 + left, y], fill="black")
        draw.text((x0 + 8, y - 6), f"1e{power}", fill="black")
    for batch in sorted(set(batches)):
        x = xy(batch, 10 ** vy[0])[0]
        draw.line([x, top + height, x, top + height + 5], fill="black")
        draw.text((x - 12, top + height + 10), str(batch), fill="black")
    draw.text((x0 + left + width / 2 - 30, PANEL[1] - 28), "batch size", fill="black")
    draw.text((x0 + left, top - 22), label, fill="black")
    for k, (name, rows) in enumerate(series.items()):
        points = [xy(r["batch"], r[key]) for r in rows]
        colour = COLOURS[k % len(COLOURS)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.line([x0 + left + 10, top + 12 + 16 * k, x0 + left + 35, top + 12 + 16 * k], fill=colour, width=3)
        draw.text((x0 + left + 40, top + 6 + 16 * k), name, fill="black")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/images/throughput.png"))
    args = parser.parse_args()
    series, device = read_series(args.reports)
    image = Image.new("RGB", (2 * PANEL[0], PANEL[1]), "white")
    draw = ImageDraw.Draw(image)
    panel(draw, 0, series, "actions_per_s", f"actions/s, parallel decoding ({device})")
    panel(draw, PANEL[0], series, "ms_per_batch", "ms per batch (latency of one call)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
