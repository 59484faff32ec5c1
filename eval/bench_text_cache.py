"""What the frozen text encoder's cache costs while a run meets new wordings (V7).

    python eval/bench_text_cache.py [--data data/all100] [--batches 200]

Feeds MiniLMEncoder the instruction batches a training run with re-worded instructions
(data.instructions=augmented) feeds it, and splits the time into MiniLM encoding of new
wordings (unavoidable once per wording) and everything else: the cache's upkeep and lookup.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.dataset import DemoDataset  # noqa: E402
from vla.language import MiniLMEncoder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/all100", help="a demo dataset (train/collect.py output)")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    demos = DemoDataset(args.data).preload(progress=False).reword_instructions(seed=0)
    texts = [demos.sample(i)["instruction"] for i in range(len(demos))]
    rng = np.random.default_rng(0)
    batches = [[texts[i] for i in rng.integers(0, len(texts), args.batch_size)] for _ in range(args.batches)]

    encoder = MiniLMEncoder()
    encode_seconds = 0.0
    encode = encoder._encode

    def timed_encode(*a, **kw):  # the encoder's own call, timed: the rest is the cache's
        nonlocal encode_seconds
        start = time.perf_counter()
        result = encode(*a, **kw)
        encode_seconds += time.perf_counter() - start
        return result

    encoder._encode = timed_encode
    start = time.perf_counter()
    for batch in batches:
        encoder(batch, torch.device("cpu"))
    total = time.perf_counter() - start
    print(
        f"{args.batches} batches of {args.batch_size}, {len(encoder._lengths)} wordings cached: "
        f"{total:.1f} s, MiniLM encoding {encode_seconds:.1f} s, cache upkeep and lookup {total - encode_seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
