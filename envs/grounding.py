"""Grounding scenes: many rendered layouts labelled with where the instruction points.

RT-2 gets its sense of *which object is which, and where* from web-scale vision-language
pretraining before it ever sees a robot action. Our toy has no web data, but the simulator
can render as many labelled layouts as we like: each scene is a fresh episode start (random
task, objects, zones, and a widely spread arm pose that sometimes occludes them) with its
instruction and the image coordinates of the named target and of its destination. A few
hundred demos show only a few hundred layouts, far too few to learn to find "the blue
cylinder" on a new table (docs/results.md); ten thousand of these cost a minute to render.

Only ``train``-split (or ``augmented``) instructions are used, so held-out paraphrases
stay unseen, and the seeds (``GROUNDING_SEED_BASE`` +) are disjoint from collection and
evaluation seeds.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from envs.instructions import TRAINING_SPLITS, split_fingerprint
from envs.rewrites import OUT_OF_SCOPE_KINDS, out_of_scope, training_rewrite
from envs.vocabulary import OBJECT_SHAPES, object_name

GROUNDING_SEED_BASE = 50_000_000  # collection uses 0+, evaluation 20,000,000+ and 30,000,000+
GROUNDING_SEED_STRIDE = 1_000_000  # scene sets with different seeds never share a layout
GROUNDING_START_SPREAD = 0.5  # rad: arm starts spread over the workspace (occlusion, variety)
_CHUNK = 500  # scenes per worker task
# what a cached scene set hands back (``render_scenes`` documents each)
SCENE_KEYS = (
    "images", "instructions", "key_positions", "key_uv", "key_kinds", "target_sibling", "tasks", "specs", "objects"
)  # fmt: skip


def render_scenes(
    count: int,
    seed: int = 0,
    image_size: int = 64,
    workers: int = 2,
    progress: bool = True,
    split: str = "train",
    start: int = 0,
) -> dict[str, np.ndarray]:
    """``count`` scenes, cycling through the five tasks: ``images`` (N, H, W, 3) uint8,
    ``instructions`` (N,) str, ``key_positions`` (N, 6) metres, ``key_uv`` (N, 2, 2) image
    coordinates of the target and destination (``envs.camera``), ``tasks`` (N,) task names,
    ``key_kinds`` (N, 2) what each of the two names (``KEY_KINDS``: cube, cylinder, zone),
    ``target_sibling`` (N,) whether the target's same-colour sibling is on the table,
    ``specs`` (N,) each task spec as JSON, ``objects`` (N,) the objects on the table, comma-joined.

    ``split`` picks the instruction templates; the env draws the instruction after the
    layout, so the same ``seed`` gives the same scenes on either split, only worded anew
    (``heldout``: the paraphrases, to measure pointing on words grounding never saw).
    ``start`` skips that many scenes of the seed's sequence (e.g. re-word only its last ones)."""
    if count <= 0:
        raise ValueError(f"grounding scene count must be positive, got {count}")
    if workers <= 0:
        raise ValueError(f"workers must be positive, got {workers}")
    if start < 0 or start + count > GROUNDING_SEED_STRIDE:
        raise ValueError(f"at most {GROUNDING_SEED_STRIDE} grounding scenes per seed, got {start} + {count}")
    from envs.progress import progress as progress_bar

    offsets = list(range(0, count, _CHUNK))
    first_seed = GROUNDING_SEED_BASE + seed * GROUNDING_SEED_STRIDE + start
    seeds = [first_seed + o for o in offsets]
    sizes = [min(_CHUNK, count - o) for o in offsets]
    with ProcessPoolExecutor(min(workers, len(offsets)), mp_context=multiprocessing.get_context("spawn")) as pool:
        chunks = pool.map(_render_chunk, seeds, sizes, [image_size] * len(offsets), [split] * len(offsets))
        bar = progress_bar(
            chunks, total=len(offsets), desc="grounding scenes", unit="chunk", disable=not progress, leave=False
        )
        parts = list(bar)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def load_or_render_scenes(
    path: str | Path,
    count: int,
    seed: int = 0,
    image_size: int = 64,
    workers: int = 2,
    progress: bool = True,
    split: str = "train",
) -> dict[str, np.ndarray]:
    """The scenes cached at ``path`` (an .npz), rendered and saved there first if missing
    or made with other settings. Written to a temporary file and renamed: a crash never
    leaves half a cache behind. ``split``: a training split's wordings (never ``heldout``): grounding
    on ``heldout`` ones would leak the paraphrases the evaluation holds out."""
    if split not in TRAINING_SPLITS:
        splits = ", ".join(TRAINING_SPLITS)
        raise ValueError(f"grounding scenes are worded from a training split ({splits}), got {split!r}")
    path = Path(path)
    # the wording fingerprint: a split whose templates or nouns changed since the cache was
    # rendered must not hand grounding its old words
    wanted = {
        "count": count,
        "seed": seed,
        "image_size": image_size,
        "split": split,
        "wording": split_fingerprint(split),
    }
    if path.exists():
        with np.load(path) as cached:
            found = {k: int(cached[k]) for k in ("count", "seed", "image_size")}
            found["split"] = str(cached["split"]) if "split" in cached else "train"  # older caches
            found["wording"] = str(cached["wording"]) if "wording" in cached else None
            if found == wanted and all(k in cached for k in SCENE_KEYS):  # older caches lack some keys
                return {k: cached[k] for k in SCENE_KEYS}
    scenes = render_scenes(count, seed, image_size, workers, progress, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
    os.close(fd)
    numbers = {k: np.int64(wanted[k]) for k in ("count", "seed", "image_size")}
    np.savez(tmp, **scenes, **numbers, split=np.array(split), wording=np.array(wanted["wording"]))
    os.replace(tmp, path)
    return scenes


def _render_chunk(first_seed: int, count: int, image_size: int, split: str) -> dict[str, Any]:
    import gymnasium as gym

    from envs import TASKS
    from envs.camera import key_image_coordinates

    options = {"image_size": image_size, "start_spread": GROUNDING_START_SPREAD, "instruction_split": split}
    task_envs = [gym.make(t, **options).unwrapped for t in TASKS]
    images, instructions, key_positions, tasks, key_kinds, siblings, specs, objects = ([] for _ in range(8))
    for i in range(count):
        seed = first_seed + i
        env = task_envs[seed % len(task_envs)]
        obs, info = env.reset(seed=seed)
        images.append(obs["image"])
        instructions.append(obs["instruction"])
        key_positions.append(info["key_positions"])
        tasks.append(env.task.name)
        key_kinds.append(key_kinds_of(info["task_spec"]))
        siblings.append(has_sibling(info["task_spec"], env.scene_objects))
        specs.append(json.dumps(info["task_spec"]))
        objects.append(",".join(env.scene_objects))
    for env in task_envs:
        env.close()
    key_positions = np.stack(key_positions).astype(np.float32)
    return {
        "images": np.stack(images),
        "instructions": np.array(instructions),
        "key_positions": key_positions,
        "key_uv": key_image_coordinates(key_positions),
        "tasks": np.array(tasks),
        "key_kinds": np.array(key_kinds, dtype=np.int64),
        "target_sibling": np.array(siblings),
        "specs": np.array(specs),
        "objects": np.array(objects),
    }


def training_wordings(
    scenes: dict[str, np.ndarray], seed: int, rewrites: float, negatives: float, indices: Any
) -> tuple[list[str], np.ndarray]:
    """Each scene of ``indices`` worded for training the reader: with probability ``negatives``
    an out-of-scope instruction (``envs.rewrites.out_of_scope``, training lexicon), else with
    probability ``rewrites`` a training rewrite of its instruction, else as rendered. Returns
    the instructions and ``named`` (N, 2): whether each keypoint's answer is in view (false:
    the reader's abstain cell is the label). Fixed per scene and ``seed``."""
    if not (0.0 <= negatives <= 1.0 and 0.0 <= rewrites <= 1.0 and negatives + rewrites <= 1.0):
        shares = f"{rewrites}, {negatives}"
        raise ValueError(f"rewrites and negatives must be shares in [0, 1] summing to at most 1, got {shares}")
    instructions, named = [], []
    for i in indices:
        spec, text = json.loads(str(scenes["specs"][i])), str(scenes["instructions"][i])
        rng = np.random.default_rng([seed, int(i), 1])
        if rng.random() < negatives:
            kind = OUT_OF_SCOPE_KINDS[int(rng.integers(len(OUT_OF_SCOPE_KINDS)))]
            instructions.append(out_of_scope(spec, str(scenes["objects"][i]).split(","), kind, rng, "training"))
            # the destination (a zone or a base) is still there unless the task has none or the words say nothing
            destination = kind != "nonsense" and spec["task"] not in ("reach", "lift")
            named.append((False, destination))
            continue
        share = rewrites / (1.0 - negatives) if negatives < 1.0 else 0.0
        instructions.append(training_rewrite(text, spec, share, seed, (int(i), 2)))
        named.append((True, True))
    return instructions, np.array(named, dtype=bool).reshape(-1, 2)


def has_sibling(task_spec: dict[str, Any], scene_objects: list[str]) -> bool:
    """Whether the target's same-colour sibling (the red cylinder for the red cube) is on the
    table: there, and only there, the colour alone cannot tell which object is meant."""
    other = next(s for s in OBJECT_SHAPES if s != task_spec["target_shape"])
    return object_name(task_spec["target_colour"], other) in scene_objects


KEY_KINDS = ("cube", "cylinder", "zone")  # what a keypoint names, for grounding.kind_weight


def key_kinds_of(task_spec: dict[str, Any]) -> tuple[int, int]:
    """Indices into ``KEY_KINDS`` of what the target and the destination keypoints name (reach
    and lift: the destination is the target; stack: the base object; push, pick_place: the zone)."""
    target = KEY_KINDS.index(task_spec["target_shape"])
    if "zone_colour" in task_spec:
        return target, KEY_KINDS.index("zone")
    if "base_shape" in task_spec:
        return target, KEY_KINDS.index(task_spec["base_shape"])
    return target, target
