"""The demonstration dataset on disk: one HDF5 file per episode, plus an index.

Layout of a dataset directory (see docs/data_format.md for the full description)::

    <root>/
      episodes/<task>/<task>-s<seed>.h5   one successful episode each, robomimic-like:
          /obs/image          (T, H, W, 3) uint8   scene camera, observation *before* action t
          /obs/wrist_image    (T, H, W, 3) uint8   only if the wrist camera was recorded
          /obs/proprio        (T, 9) float32       see envs.PROPRIO_NAMES (8 in datasets from before 2026-12-03:
                                                   no gripper opening velocity)
          /actions            (T, 7) float32       the expert's action label for obs t
          /executed_actions   (T, 7) float32       what was sent to the env (label + noise)
          /rewards            (T,) float32         dense reward after action t
          /key_positions      (T, 6) float32       privileged: target and destination centres (m)
                                                   at obs t (Task.key_positions; training aid only;
                                                   ``sample`` adds their image coordinates, key_uv)
          /dones              (T,) bool            True on the last step
          attrs: task, env_id, instruction, split, task_spec (JSON), seed, success,
                 num_samples, expert_noise
      attempts.jsonl                      one JSON line per finished attempt (the resume ledger)
      index.h5                            the robomimic-style view of the whole dataset:
          /data/demo_<k>      external links to the episode files' root groups
          /data attrs         total (samples), num_episodes, env_config (JSON)
          /index              per-episode table: path, task, seed, num_samples, instruction
          /meta/action_stats  mean, std, min, max, q01, q99 of the action labels, per element

Crash safety: an episode file is written under a temporary name in the same directory
and then renamed (atomic on POSIX), so a reader never sees half an episode; the index is
rebuilt the same way. Everything in ``index.h5`` can be rebuilt from the episode files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from envs.camera import key_image_coordinates
from envs.instructions import TRAINING_SPLITS, make_instruction
from envs.rewrites import check_share, training_rewrite
from envs.tasks import resolve_tasks
from envs.vocabulary import check_name

INDEX_FILE = "index.h5"
EPISODES_DIR = "episodes"
ATTEMPTS_FILE = "attempts.jsonl"
TMP_SUFFIX = ".tmp"


# How h5py reports a damaged file: a bad signature, a broken B-tree or link, a failed checksum.
DAMAGE = (OSError, KeyError, ValueError, RuntimeError, TypeError, AttributeError)


class DatasetError(ValueError):
    """A damaged dataset file, named with what to do about it."""


@contextlib.contextmanager
def readable(path: Path, root: Path | None = None) -> Iterator[None]:
    """Turn a damaged episode file's low-level error (truncated, a failed checksum, a missing
    field) into one line naming the file and the fix."""
    try:
        yield
    except DAMAGE as error:
        if isinstance(error, DatasetError):
            raise
        reason = (str(error).splitlines() or [type(error).__name__])[0][:160]
        fix = f"delete it and run `python train/collect.py output={root}` to collect a replacement" if root else ""
        raise DatasetError(f"{path} is damaged ({reason}){'; ' + fix if fix else ''}") from None


@dataclass(frozen=True)
class EpisodeRecord:
    """Everything one episode file holds, in memory (used by the writer and the tests)."""

    task: str
    env_id: str
    seed: int
    instruction: str
    split: str
    task_spec: dict[str, Any]
    images: np.ndarray
    proprio: np.ndarray
    actions: np.ndarray
    executed_actions: np.ndarray
    rewards: np.ndarray
    success: bool
    expert_noise: float = 0.0
    wrist_images: np.ndarray | None = None
    key_positions: np.ndarray | None = None


def episode_path(root: Path, task: str, seed: int) -> Path:
    return Path(root) / EPISODES_DIR / task / f"{task}-s{seed}.h5"


def _atomic_h5(final_path: Path):
    """A temporary file next to ``final_path``; rename it over ``final_path`` to commit."""
    final_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=final_path.name + ".", suffix=TMP_SUFFIX, dir=final_path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; datasets are meant to be shared
    return Path(tmp)


@contextlib.contextmanager
def _h5_file(tmp: Path) -> Iterator[h5py.File]:
    """An HDF5 file built in memory, then written to ``tmp`` in one plain write and synced.

    HDF5's own writer reports a full disk as a bare "File write failed"; a plain write raises
    the OSError with its errno (ENOSPC), which the scripts turn into one clear line. A write
    that fails part-way leaves no temporary file behind."""
    buffer = io.BytesIO()
    try:
        with h5py.File(buffer, "w") as f:
            yield f
        with tmp.open("wb") as out:
            out.write(buffer.getbuffer())
            out.flush()
            os.fsync(out.fileno())
    except OSError as error:  # name the file the user will look for, not its temporary
        tmp.unlink(missing_ok=True)
        final = tmp.parent / tmp.name.split(".")[0]
        raise OSError(error.errno, error.strerror, f"{final}.h5") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_episode_tmp(root: Path, record: EpisodeRecord) -> Path:
    """Write ``record`` to a temporary file beside its final place; return that path.

    Call ``commit_episode`` to publish it. Splitting the two lets one process (the
    collection's main process) decide which finished episodes to keep.
    """
    n = len(record.actions)
    for name, array in (("images", record.images), ("proprio", record.proprio), ("rewards", record.rewards)):
        if len(array) != n:
            raise ValueError(f"episode {record.task}/{record.seed}: {name} has {len(array)} steps, actions {n}")
    tmp = _atomic_h5(episode_path(root, record.task, record.seed))
    with _h5_file(tmp) as f:
        obs = f.create_group("obs")
        # Chunk per step so random access to one frame reads one small chunk.
        image_chunks = (1, *record.images.shape[1:])
        # Every array carries Fletcher-32 checksums: a flipped byte on disk is a read error, not
        # silently different pixels or actions.
        checked = {"fletcher32": True}
        obs.create_dataset("image", data=record.images, chunks=image_chunks, compression="lzf", **checked)
        if record.wrist_images is not None:
            obs.create_dataset(
                "wrist_image", data=record.wrist_images, chunks=image_chunks, compression="lzf", **checked
            )
        obs.create_dataset("proprio", data=record.proprio.astype(np.float32), **checked)
        f.create_dataset("actions", data=record.actions.astype(np.float32), **checked)
        f.create_dataset("executed_actions", data=record.executed_actions.astype(np.float32), **checked)
        if record.key_positions is not None:
            f.create_dataset("key_positions", data=record.key_positions.astype(np.float32), **checked)
        f.create_dataset("rewards", data=record.rewards.astype(np.float32), **checked)
        dones = np.zeros(n, dtype=bool)
        dones[-1] = True
        f.create_dataset("dones", data=dones, **checked)
        f.attrs.update(
            task=record.task,
            env_id=record.env_id,
            instruction=record.instruction,
            split=record.split,
            task_spec=json.dumps(record.task_spec, sort_keys=True),
            seed=record.seed,
            success=record.success,
            num_samples=n,
            expert_noise=record.expert_noise,
        )
        f.attrs["sha256"] = episode_digest(read_arrays(f), f.attrs)
    return tmp


def read_arrays(f: h5py.File) -> dict[str, np.ndarray]:
    """Every array of an episode file by its path (``obs/image``, ``actions``, ...)."""
    names: list[str] = []
    f.visit(lambda name: names.append(name) if isinstance(f[name], h5py.Dataset) else None)
    return {name: f[name][()] for name in names}


def episode_digest(arrays: dict[str, np.ndarray], attrs: h5py.AttributeManager) -> str:
    """SHA-256 over an episode file's arrays and attributes (the ``sha256`` attribute aside).
    Chunk checksums guard each chunk's bytes; this also catches a damaged chunk table that
    points a frame at another frame's (valid) chunk, and a damaged attribute (the instruction)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    for key in sorted(k for k in attrs if k != "sha256"):
        digest.update(f"{key}={attrs[key]!r};".encode())
    return digest.hexdigest()


def check_episode(f: h5py.File, arrays: dict[str, np.ndarray]) -> None:
    """Raise ValueError if an episode's content no longer matches the digest it was written
    with. Files from before digests (no checksummed arrays either) pass unchecked."""
    keys = list(f.attrs)  # raises on a damaged attribute table (``attrs.get`` would say None)
    if "sha256" not in keys:
        if f["actions"].fletcher32:  # written with a digest that is now unreadable
            raise ValueError("its SHA-256 attribute is missing")
        return
    if episode_digest(arrays, f.attrs) != _str(f.attrs["sha256"]):
        raise ValueError("its content does not match its SHA-256")


def commit_episode(tmp: Path) -> Path:
    """Atomically publish a temporary episode file under its final name."""
    final = Path(str(tmp)[: -len(TMP_SUFFIX)].rsplit(".", 1)[0])
    os.replace(tmp, final)
    return final


def write_episode(root: Path, record: EpisodeRecord) -> Path:
    return commit_episode(write_episode_tmp(root, record))


def remove_stale_tmp_files(root: Path) -> int:
    """Delete temporary files left by a killed writer; returns how many."""
    stale = list((Path(root) / EPISODES_DIR).rglob(f"*{TMP_SUFFIX}")) + list(Path(root).glob(f"*{TMP_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def episode_files(root: Path) -> list[Path]:
    """Committed episode files, in a stable order (task, then seed)."""
    files = (Path(root) / EPISODES_DIR).glob("*/*.h5")

    def key(p: Path) -> tuple[str, int]:
        return p.parent.name, int(p.stem.rsplit("-s", 1)[1])

    return sorted(files, key=key)


# --- the index ---------------------------------------------------------------------------
def build_index(root: Path, env_config: dict[str, Any] | None = None) -> Path:
    """(Re)write ``index.h5`` from the committed episode files, atomically."""
    root = Path(root)
    files = episode_files(root)
    rows, actions = [], []
    for path in files:
        with readable(path, root), h5py.File(path, "r") as f:
            rows.append(
                (
                    str(path.relative_to(root)),
                    str(f.attrs["task"]),
                    int(f.attrs["seed"]),
                    int(f.attrs["num_samples"]),
                    str(f.attrs["instruction"]),
                )
            )
            actions.append(f["actions"][:])
    index_path = root / INDEX_FILE
    if env_config is None:  # keep the env settings: from the old index, else the collection's record
        env_config = _recorded_env_config(root)
    tmp = _atomic_h5(index_path)
    with _h5_file(tmp) as f:
        data = f.create_group("data")
        for k, (rel, *_rest) in enumerate(rows):
            data[f"demo_{k}"] = h5py.ExternalLink(rel, "/")
        data.attrs.update(
            total=sum(r[3] for r in rows), num_episodes=len(rows), env_config=json.dumps(env_config or {})
        )
        table = np.array(
            rows,
            dtype=[
                ("path", h5py.string_dtype()),
                ("task", h5py.string_dtype()),
                ("seed", np.int64),
                ("num_samples", np.int64),
                ("instruction", h5py.string_dtype()),
            ],
        )
        f.create_dataset("index", data=table)
        stats = f.create_group("meta/action_stats")
        for name, value in action_statistics(np.concatenate(actions) if actions else np.zeros((0, 7))).items():
            stats.create_dataset(name, data=value)
    os.replace(tmp, index_path)
    return index_path


def _recorded_env_config(root: Path) -> dict[str, Any]:
    try:
        with h5py.File(root / INDEX_FILE, "r") as old:
            return json.loads(old["data"].attrs.get("env_config", "{}"))
    except DAMAGE:  # missing or damaged: collect_config.json holds them too
        meta = root / "collect_config.json"
        return json.loads(meta.read_text()) if meta.exists() else {}


def action_statistics(actions: np.ndarray) -> dict[str, np.ndarray]:
    """Per-element statistics used for normalisation and quantile binning (1st-99th pct)."""
    if len(actions) == 0:
        zeros = np.zeros(actions.shape[1], dtype=np.float32)
        return {k: zeros for k in ("mean", "std", "min", "max", "q01", "q99")}
    return {
        "mean": actions.mean(0).astype(np.float32),
        "std": actions.std(0).astype(np.float32),
        "min": actions.min(0).astype(np.float32),
        "max": actions.max(0).astype(np.float32),
        "q01": np.quantile(actions, 0.01, axis=0).astype(np.float32),
        "q99": np.quantile(actions, 0.99, axis=0).astype(np.float32),
    }


# --- the lazy reader ---------------------------------------------------------------------
@dataclass(frozen=True)
class EpisodeInfo:
    path: str
    task: str
    seed: int
    num_samples: int
    instruction: str


class DemoDataset:
    """Lazy, read-only access to a dataset directory: nothing but the index table is read
    at construction; frames are read from the episode files on demand.

    Open HDF5 handles are cached per process (an LRU of ``max_open_files``) and dropped
    after a fork, so a torch DataLoader's worker processes each open their own.
    """

    def __init__(self, root: str | Path, max_open_files: int = 64):
        self.root = Path(root)
        index_path = self.root / INDEX_FILE
        if not index_path.exists():
            if not self.root.exists():
                raise FileNotFoundError(
                    f"no dataset at {self.root}: collect one with `python train/collect.py output={self.root}`"
                )
            if not episode_files(self.root):
                raise FileNotFoundError(
                    f"{self.root} holds no episodes; run `python train/collect.py output={self.root}`"
                )
            build_index(self.root)
        self.episodes, self.action_stats, self.env_config = self._read_index(index_path)
        on_disk = [str(p.relative_to(self.root)) for p in episode_files(self.root)]
        if self.episodes is None or [e.path for e in self.episodes] != on_disk:
            # The index disagrees with the episode files (or is damaged): they are the truth,
            # and everything in it can be rebuilt from them.
            build_index(self.root)
            self.episodes, self.action_stats, self.env_config = self._read_index(index_path)
            if self.episodes is None:
                raise DatasetError(f"{index_path} cannot be rebuilt; delete it and open the dataset again")
        lengths = np.array([e.num_samples for e in self.episodes], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(lengths)])
        self._max_open = max_open_files
        self._handles: OrderedDict[str, h5py.File] = OrderedDict()
        self._pid = os.getpid()
        self._memory: dict[str, np.ndarray] | None = None
        self._task_specs: list[dict[str, Any]] | None = None
        self._reword_seed: int | None = None
        self._reword_split = "augmented"
        self._rewrite: tuple[int, float] | None = None  # (seed, share) of rewrite_instructions

    @staticmethod
    def _read_index(index_path: Path) -> tuple[list[EpisodeInfo] | None, dict[str, np.ndarray], dict[str, Any]]:
        """The index's episodes, action statistics and env config; episodes None if it is damaged."""
        try:
            with h5py.File(index_path, "r") as f:
                table = f["index"][:]
                stats = {k: v[:] for k, v in f["meta/action_stats"].items()}
                env_config = json.loads(f["data"].attrs["env_config"])
            episodes = [
                EpisodeInfo(
                    _str(r["path"]), _str(r["task"]), int(r["seed"]), int(r["num_samples"]), _str(r["instruction"])
                )
                for r in table
            ]
        except DAMAGE:
            return None, {}, {}
        return episodes, stats, env_config

    def reword_instructions(self, seed: int, split: str = "augmented") -> DemoDataset:
        """From now on every sample's instruction is a fresh wording of its episode's task
        from ``split`` (instruction augmentation: ``augmented`` or ``augmented_large``). Each
        sample index keeps one wording, drawn from ``seed`` and the index, so the samples of
        one episode read differently while a resumed run and every DataLoader worker see the
        same words."""
        check_name("instruction split to re-word with", split, [s for s in TRAINING_SPLITS if s != "train"])
        self._load_task_specs()
        self._reword_seed, self._reword_split = seed, split
        return self

    def task_spec(self, episode: int) -> dict[str, Any]:
        """The task spec episode ``episode`` was recorded with (its instruction names it)."""
        return self._load_task_specs()[episode]

    def _load_task_specs(self) -> list[dict[str, Any]]:
        if self._task_specs is None:  # preload reads them on its pass; otherwise one pass here
            self._task_specs = [json.loads(self._file(e).attrs["task_spec"]) for e in range(self.num_episodes)]
        return self._task_specs

    def rewrite_instructions(self, seed: int, share: float) -> DemoDataset:
        """From now on that ``share`` of the samples reads its instruction as people type it
        (``envs.rewrites.training_rewrite``: politeness, typos, word order, synonyms of the
        training lexicon, never the robustness suite's). Each sample index keeps one wording."""
        check_share(share)
        self._load_task_specs()
        self._rewrite = (seed, float(share)) if share > 0 else None
        return self

    def preload(self, progress: bool = True) -> DemoDataset:
        """Read every step's images, proprio and action into RAM (about 12 KB a step and
        camera at 64 px).

        Random access over hundreds of small HDF5 files costs a file open per sample, which
        starves a 2-core trainer; after a preload, DataLoader workers forked from this
        process share the arrays copy-on-write.
        """
        from envs.progress import progress as progress_bar

        parts: dict[str, list[np.ndarray]] = {}
        task_specs, from_files = [], []
        for path in progress_bar([e.path for e in self.episodes], desc="load demos", disable=not progress, leave=False):
            with readable(self.root / path, self.root), h5py.File(self.root / path, "r") as f:
                arrays = read_arrays(f)
                check_episode(f, arrays)
                task_specs.append(json.loads(f.attrs["task_spec"]))
                a = f.attrs
                from_files.append(
                    EpisodeInfo(path, _str(a["task"]), int(a["seed"]), len(arrays["actions"]), _str(a["instruction"]))
                )
                for key in f["obs"]:
                    parts.setdefault(key, []).append(arrays[f"obs/{key}"])
                parts.setdefault("action", []).append(arrays["actions"])
                if "key_positions" in f:
                    parts.setdefault("key_positions", []).append(arrays["key_positions"])
        widths = {p.shape[1] for p in parts.get("proprio", [])}
        if len(widths) > 1:  # episodes from before and after the gripper velocity was recorded
            raise ValueError(
                f"{self.root} mixes episodes with {sorted(widths)} proprio elements: collect it again in one go"
            )
        if len(parts.get("key_positions", [])) != len(self.episodes):  # older files lack them
            parts.pop("key_positions", None)
        if from_files != self.episodes:  # the (checksum-free) index was damaged: the files are the truth
            self.episodes = from_files
            self._starts = np.concatenate([[0], np.cumsum([e.num_samples for e in from_files])])
            with contextlib.suppress(OSError):  # mend it on disk where we may write
                build_index(self.root)
        self._memory = {k: np.concatenate(v) for k, v in parts.items()}
        self._task_specs = task_specs
        if "key_positions" in self._memory:
            self._memory["key_uv"] = key_image_coordinates(self._memory["key_positions"])
        return self

    def __len__(self) -> int:
        """Number of (observation, action) samples over all episodes."""
        return int(self._starts[-1])

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def proprio_width(self) -> int:
        """Proprio elements per step (the leading ``envs.PROPRIO_NAMES``; older datasets hold fewer)."""
        if self._memory is not None:
            return int(self._memory["proprio"].shape[1])
        return int(self._file(0)["obs/proprio"].shape[1])

    def locate(self, index: int) -> tuple[int, int]:
        """(episode number, step within it) of a global sample index."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range [0, {len(self)})")
        episode = int(np.searchsorted(self._starts, index, side="right") - 1)
        return episode, index - int(self._starts[episode])

    def sample(self, index: int) -> dict[str, Any]:
        """One step: image(s), proprio, action label, instruction, task."""
        episode, t = self.locate(index)
        if self._memory is not None:
            item = {k: v[index] for k, v in self._memory.items()}
        else:
            with readable(self.root / self.episodes[episode].path, self.root):
                f = self._file(episode)
                item = {k: f["obs"][k][t] for k in f["obs"]}
                item["action"] = f["actions"][t]
                if "key_positions" in f:
                    item["key_positions"] = f["key_positions"][t]
            if "key_positions" in item:
                item["key_uv"] = key_image_coordinates(item["key_positions"])
        instruction = self.episodes[episode].instruction
        if self._reword_seed is not None:
            rng = np.random.default_rng([self._reword_seed, index])
            instruction = make_instruction(self._task_specs[episode], self._reword_split, rng)
        if self._rewrite is not None:
            seed, share = self._rewrite
            instruction = training_rewrite(instruction, self._task_specs[episode], share, seed, index)
        item.update(
            instruction=instruction,
            task=self.episodes[episode].task,
            episode=episode,
            step=t,
        )
        return item

    def actions_from(self, index: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The action labels of ``count`` steps from sample ``index`` on, within its episode:
        (count, 7) actions and a (count,) bool mask, False past the episode's last step (the
        rows there repeat the last action as filler; the mask keeps them out of the loss)."""
        episode, t = self.locate(index)
        available = min(count, self.episodes[episode].num_samples - t)
        if self._memory is not None:
            actions = self._memory["action"][index : index + available]
        else:
            actions = self._file(episode)["actions"][t : t + available]
        padded = np.concatenate([actions, np.repeat(actions[-1:], count - available, axis=0)])
        return padded, np.arange(count) < available

    def proprio_statistics(self, indices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-element mean and std of proprio over ``indices`` (all samples by default)."""
        if self._memory is not None:
            proprio = self._memory["proprio"]
        else:
            proprio = np.concatenate([self._file(e)["obs/proprio"][:] for e in range(self.num_episodes)])
        if indices is not None:
            proprio = proprio[indices]
        return proprio.mean(0), proprio.std(0)

    def episode(self, episode: int) -> dict[str, Any]:
        """A whole episode's arrays and attributes."""
        f = self._file(episode)
        out: dict[str, Any] = {k: f[f"obs/{k}"][:] for k in f["obs"]}
        for key in ("actions", "executed_actions", "rewards", "dones"):
            out[key] = f[key][:]
        attrs = dict(f.attrs)
        attrs["task_spec"] = json.loads(attrs["task_spec"])
        out["attrs"] = {k: v.item() if hasattr(v, "item") else v for k, v in attrs.items()}
        return out

    def _file(self, episode: int) -> h5py.File:
        if os.getpid() != self._pid:  # forked: never share HDF5 handles across processes
            self._handles = OrderedDict()
            self._pid = os.getpid()
        path = self.episodes[episode].path
        handle = self._handles.pop(path, None)
        if handle is None:
            handle = h5py.File(self.root / path, "r")
            if len(self._handles) >= self._max_open:
                _, oldest = self._handles.popitem(last=False)
                oldest.close()
        self._handles[path] = handle
        return handle

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def split_demos(demos: DemoDataset, tasks: list[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation sample indices (whole episodes go to one side), restricted to
    the episodes of ``tasks``; the validation demos give open-loop token accuracy (V3).

    Every task asked for must have episodes: a dataset directory collected for other tasks
    (e.g. reach only, at the five-task suite's path) would otherwise train a "multi-task"
    policy on one task without a word, and its zero success on the rest would look like
    a learning failure."""
    wanted = resolve_tasks(tasks)
    held = sorted({e.task for e in demos.episodes})
    missing = [t for t in wanted if t not in held]
    if missing:
        raise ValueError(
            f"the dataset at {demos.root} holds no episodes of {missing} (it holds {held}); collect them "
            f"with `python train/collect.py output=<new dir> tasks=[{','.join(wanted)}]` and point data.path "
            "there, or drop them from data.tasks"
        )
    episode_of_sample = np.repeat(np.arange(demos.num_episodes), [e.num_samples for e in demos.episodes])
    rng = np.random.default_rng(seed)
    n_val = int(round(demos.num_episodes * val_fraction))
    val_episodes = set(rng.choice(demos.num_episodes, size=n_val, replace=False).tolist()) if n_val else set()
    is_val = np.array([e in val_episodes for e in episode_of_sample])
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    episode_in_tasks = np.array([e.task in wanted for e in demos.episodes])  # per episode, not per sample
    in_tasks = episode_in_tasks[episode_of_sample]
    return train_idx[in_tasks[train_idx]], val_idx[in_tasks[val_idx]]
