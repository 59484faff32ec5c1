"""The reliability campaign: generated bad input on every public surface, SIGKILLs at random
moments, and a full disk. Nothing may be lost, nothing may hang.

    python eval/reliability.py                         # all three parts (about 30 min on 2 cores)
    python eval/reliability.py --parts kills --scripts bc --kills 20
    python eval/reliability.py --parts fuzz --examples 300

fuzz   the property tests of tests/reliability/ under the ``campaign`` Hypothesis profile
       (``--examples`` per test; CI runs the same tests on a small fixed-seed slice), with the
       generated cases counted per surface.
kills  runs train/collect.py, train/bc.py and train/ppo.py on tiny settings, SIGKILLs the
       whole process group at a random moment (a share of the kills aimed at the instant a
       checkpoint or episode file is being written), resumes by running the same command
       again, and checks after every kill and at the end:
         collect  only complete episodes on disk (each file's SHA-256 checks), and the final
                  set equals an uninterrupted run's, file for file;
         bc       every checkpoint on disk loads, and the losses of every step equal the
                  uninterrupted run's (steps re-done after a resume included);
         ppo      every checkpoint on disk loads, and each resume starts from the last
                  checkpoint on disk: the same file (its SHA-256), step and update count.
full-disk  collect, bc and checkpoint writes into a 2 MB tmpfs (root only) or under a file-size
       limit: one ``error:`` line, the previous checkpoint and every complete episode intact.

Writes ``<out>/report.json`` and prints a table per part. A campaign, not a test: the
behaviour it checks is also in tests/ on small fixed cases.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py

from envs.dataset import check_episode, episode_files, read_arrays
from vla.checkpoint import CheckpointError, read_checkpoint

REPO = Path(__file__).resolve().parents[1]

SCRIPTS = ("collect", "bc", "ppo")
PARTS = ("fuzz", "kills", "full-disk")
TINY = {  # the tests' tiny model (tests/conftest.py): trains in seconds on 2 cores
    "image_size": 32, "patch_size": 8, "vision_pool": 1, "vision_layers": 1, "width": 32, "layers": 1, "heads": 2,
    "text_encoder": "scratch", "keypoints": 0, "keypoint_sentence": False, "aux_weight": 0.0,
    "sentence_token": False, "word_tokens": True, "decoding": "autoregressive", "label_sigma": 0.0,
}  # fmt: skip
TINY_MODEL = [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in TINY.items()]
COLLECT = ["tasks=[reach,lift]", "episodes_per_task=8", "image_size=32", "workers=2", "video=false", "progress=false"]
BC = [
    "trainer.steps=200",
    "trainer.checkpoint_every=4",
    "trainer.log_every=1",
    "trainer.batch_size=8",
    "trainer.warmup_steps=2",
    "trainer.progress=false",
    "trainer.cache_keypoints=false",
    "eval.every_steps=0",
    "eval.final_episodes=1",
    "eval.splits=[train]",
    "eval.language_swap=false",
    "eval.num_envs=1",
    "eval.video_episodes=0",
    "data.tasks=[reach,lift]",
    "data.num_workers=1",
    "data.val_fraction=0.25",
    *TINY_MODEL,
]
PPO = [
    "env.num_envs=2",
    "env.vec_env=dummy",
    "ppo.n_steps=8",
    "ppo.batch_size=8",
    "ppo.n_epochs=2",
    "ppo.critic_warmup_steps=16",
    "eval.every_steps=32",
    "eval.episodes=1",
    "eval.num_envs=1",
    "checkpoint_every=8",
    "threads=1",
    "ppo.total_timesteps=160",
]


@dataclass
class KillReport:
    script: str
    kills: int = 0
    mid_write: int = 0  # kills while a temporary checkpoint/episode file existed
    resumes: int = 0
    rounds: int = 0
    checks: int = 0  # invariants checked after kills and at the ends of rounds
    failures: list[str] = field(default_factory=list)


def environment() -> dict[str, str]:
    return {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start(command: list[str], log: Path, limit_bytes: int | None = None) -> subprocess.Popen:
    """A script in its own process group (its workers die with it), output to ``log``."""

    def limit() -> None:
        if limit_bytes is not None:  # writes past this size fail with EFBIG (Python ignores SIGXFSZ)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    handle = log.open("ab")
    return subprocess.Popen(
        [sys.executable, *command],
        cwd=REPO,
        env=environment(),
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=limit,
    )


def temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp")] if folder.exists() else []


def kill_at_random(
    proc: subprocess.Popen, rng: random.Random, longest: float, watch: Path, spare: bool = False
) -> tuple[bool, bool]:
    """SIGKILL ``proc``'s group at a random moment in (0.5 s, ``longest``); one kill in three
    waits for a temporary file under ``watch`` (a write in progress) and kills at once.
    ``spare``: the kill budget is spent, let it finish. Returns (killed, a temporary file
    existed at the kill)."""
    if spare:
        try:
            proc.wait(timeout=900)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.returncode = -999  # reported as a hang
        return False, False
    aim_at_write = rng.random() < 1 / 3
    stale = set(temporary_files(watch))  # left by an earlier kill: not a write of this run

    def writing() -> bool:
        return bool(set(temporary_files(watch)) - stale)

    deadline = time.monotonic() + (longest if aim_at_write else rng.uniform(0.5, longest))
    while time.monotonic() < deadline and proc.poll() is None:
        if aim_at_write and writing():
            break
        time.sleep(0.0005 if aim_at_write else 0.01)
    if proc.poll() is not None:
        return False, False
    mid_write = writing()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return True, mid_write


def run_to_end(command: list[str], log: Path, timeout: float = 900) -> float:
    began = time.monotonic()
    proc = start(command, log)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise RuntimeError(f"{' '.join(command[:2])} hung for {timeout} s (log: {log})") from None
    if code != 0:
        raise RuntimeError(f"{' '.join(command[:2])} failed with exit code {code} (log: {log})")
    return time.monotonic() - began


# --- collect -------------------------------------------------------------------------------
def episode_digests(root: Path) -> dict[str, str]:
    """Each committed episode file's name and SHA-256; raises if any is incomplete or damaged."""
    found = {}
    for path in episode_files(root):
        with h5py.File(path, "r") as f:
            check_episode(f, read_arrays(f))
            found[str(path.relative_to(root))] = str(f.attrs["sha256"])
    return found


def kill_collect(work: Path, kills: int, rng: random.Random) -> KillReport:
    report = KillReport("collect")
    reference = work / "collect_reference"
    longest = run_to_end(["train/collect.py", f"output={reference}", *COLLECT], work / "collect_reference.log")
    expected = episode_digests(reference)
    while report.kills < kills:
        report.rounds += 1
        output = work / f"collect_{report.rounds}"
        command = ["train/collect.py", f"output={output}", *COLLECT]
        log = work / f"collect_{report.rounds}.log"
        while True:
            proc = start(command, log)
            killed, mid_write = kill_at_random(proc, rng, longest, output, report.kills >= kills)
            if not killed:
                if proc.returncode != 0:
                    report.failures.append(f"round {report.rounds}: collect exited {proc.returncode} ({log})")
                break
            report.kills += 1
            report.mid_write += mid_write
            report.resumes += 1
            try:  # only complete episodes: every committed file checks
                have = episode_digests(output) if output.exists() else {}
                wrong = [name for name, digest in have.items() if expected.get(name) != digest]
                if wrong:
                    report.failures.append(f"round {report.rounds}: episodes differ from the reference: {wrong[:3]}")
            except Exception as error:  # a damaged or half-written episode file
                report.failures.append(f"round {report.rounds}: {type(error).__name__}: {error}")
            report.checks += 1
        final = episode_digests(output)
        report.checks += 1
        if final != expected:
            report.failures.append(f"round {report.rounds}: final episodes differ ({len(final)} vs {len(expected)})")
    return report


# --- bc ------------------------------------------------------------------------------------
def losses(run_dir: Path) -> tuple[dict[int, float], list[str]]:
    """Loss per step, and the steps logged twice with different losses (a resume that diverged)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seen: dict[int, float] = {}
    differ = []
    for row in rows:
        if "loss" not in row:
            continue
        step, loss = row["step"], row["loss"]
        if step in seen and seen[step] != loss:
            differ.append(f"step {step}: {seen[step]} then {loss}")
        seen[step] = loss
    return seen, differ


def checkpoint_loads(path: Path) -> str | None:
    """None if the checkpoint at ``path`` (if any) reads and checks, else why not."""
    if not path.exists():
        return None
    try:
        read_checkpoint(path)
    except CheckpointError as error:
        return str(error)
    return None


def kill_bc(work: Path, kills: int, rng: random.Random, data: Path) -> KillReport:
    report = KillReport("bc")
    reference = work / "bc_reference"
    base = ["train/bc.py", f"data.path={data}", *BC]
    longest = run_to_end([*base, f"run_dir={reference}"], work / "bc_reference.log")
    expected, _ = losses(reference)
    while report.kills < kills:
        report.rounds += 1
        run_dir = work / f"bc_{report.rounds}"
        log = work / f"bc_{report.rounds}.log"
        while True:
            latest = run_dir / "checkpoints" / "latest.pt"
            command = [*base, f"resume={run_dir}"] if latest.exists() else [*base, f"run_dir={run_dir}"]
            proc = start(command, log)
            killed, mid_write = kill_at_random(proc, rng, longest, run_dir / "checkpoints", report.kills >= kills)
            if not killed:
                if proc.returncode != 0:
                    report.failures.append(f"round {report.rounds}: bc exited {proc.returncode} ({log})")
                break
            report.kills += 1
            report.mid_write += mid_write
            report.resumes += latest.exists()
            problem = checkpoint_loads(latest)
            if problem:
                report.failures.append(f"round {report.rounds}: latest.pt after a kill: {problem}")
            report.checks += 1
        got, differ = losses(run_dir)
        report.checks += 1
        if differ:
            report.failures.append(f"round {report.rounds}: a resumed step's loss changed: {differ[:2]}")
        if got != expected:
            wrong = [s for s in expected if got.get(s) != expected[s]]
            report.failures.append(f"round {report.rounds}: losses differ from the reference at steps {wrong[:5]}")
    return report


# --- ppo -----------------------------------------------------------------------------------
def kill_ppo(work: Path, kills: int, rng: random.Random, init: Path) -> KillReport:
    report = KillReport("ppo")
    base = ["train/ppo.py", f"init={init}", *PPO]
    longest = run_to_end([*base, f"run_dir={work / 'ppo_reference'}"], work / "ppo_reference.log")
    while report.kills < kills:
        report.rounds += 1
        run_dir = work / f"ppo_{report.rounds}"
        log = work / f"ppo_{report.rounds}.log"
        while True:
            latest = run_dir / "checkpoints" / "latest.pt"
            saved = read_checkpoint(latest) if latest.exists() else None
            command = [*base, f"resume={run_dir}"] if saved else [*base, f"run_dir={run_dir}"]
            log_start = log.stat().st_size if log.exists() else 0
            proc = start(command, log)
            killed, mid_write = kill_at_random(proc, rng, longest, run_dir / "checkpoints", report.kills >= kills)
            if saved is not None:  # did it start from exactly that file? (the resume line says)
                text = log.read_bytes()[log_start:].decode(errors="replace")
                want = f"at env step {saved['step']} from {saved['sha256'][:16]}"
                if "resumed" in text and want not in text:
                    report.failures.append(f"round {report.rounds}: resumed from another state than {want}")
                report.checks += "resumed" in text
            if not killed:
                if proc.returncode != 0:
                    report.failures.append(f"round {report.rounds}: ppo exited {proc.returncode} ({log})")
                break
            report.kills += 1
            report.mid_write += mid_write
            report.resumes += saved is not None
            problem = checkpoint_loads(latest)
            if problem:
                report.failures.append(f"round {report.rounds}: latest.pt after a kill: {problem}")
            report.checks += 1
        final = read_checkpoint(run_dir / "checkpoints" / "latest.pt")
        report.checks += 1
        if final["step"] < 160:
            report.failures.append(f"round {report.rounds}: ended at env step {final['step']}, not 160")
    return report


def tiny_policy_checkpoint(path: Path) -> Path:
    import torch

    from vla.checkpoint import save_checkpoint
    from vla.policy import PolicyConfig, VLAPolicy
    from vla.tokenizer import ActionTokenizer

    torch.manual_seed(0)
    return save_checkpoint(path, VLAPolicy(PolicyConfig.from_dict(TINY)), ActionTokenizer(256), step=0)


# --- full disk -----------------------------------------------------------------------------
@contextlib.contextmanager
def small_disk(path: Path, megabytes: int) -> Iterator[bool]:
    """A tmpfs of ``megabytes`` mounted at ``path`` (True), or a plain folder where mounting
    is not allowed (False: the caller then limits file sizes instead)."""
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)]
    mounted = subprocess.run(mount, capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], capture_output=True)


def last_error(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines()
    return next((line for line in reversed(lines) if line.startswith("error:")), lines[-1] if lines else "")


def full_disk(work: Path, data: Path) -> dict:
    """Each writer against a disk that fills up part-way: one error line, nothing lost."""
    results: dict = {}
    # collect: more episodes than a 2 MB disk holds
    with small_disk(work / "disk_collect", 2) as mounted:
        output = work / "disk_collect" / "demos"
        log = work / "full_collect.log"
        command = ["train/collect.py", f"output={output}", *COLLECT[:1], "episodes_per_task=400", *COLLECT[2:]]
        code = start(command, log, None if mounted else 20_000).wait(timeout=900)
        intact = episode_digests(output)  # raises if any committed episode is damaged
        line = last_error(log)
        results["collect"] = {
            "disk": "2 MB tmpfs (ENOSPC)" if mounted else "20 kB file-size limit (EFBIG)",
            "exit": code,
            "last_line": line,
            "complete_episodes": len(intact),
            "temporary_files_left": len(temporary_files(output)),
            "ok": code != 0 and line.startswith("error: could not write") and not temporary_files(output),
        }
    # bc: a checkpoint write that fails part-way; the previous checkpoint stays and resumes
    with small_disk(work / "disk_bc", 64) as mounted:
        run_dir = work / "disk_bc" / "bc"
        base = ["train/bc.py", f"data.path={data}", *BC]
        run_to_end([*base, "trainer.steps=4", f"run_dir={run_dir}"], work / "full_bc_first.log")
        latest = run_dir / "checkpoints" / "latest.pt"
        before = read_checkpoint(latest)
        ballast = work / "disk_bc" / "ballast"
        if mounted:  # leave less room than one more checkpoint needs
            ballast.write_bytes(b"\0" * max(0, shutil.disk_usage(work / "disk_bc").free - latest.stat().st_size // 2))
        log = work / "full_bc.log"
        code = start(
            [*base, "trainer.steps=8", f"resume={run_dir}"], log, None if mounted else latest.stat().st_size // 2
        ).wait(timeout=900)
        after = read_checkpoint(latest)
        line = last_error(log)
        leftovers = temporary_files(run_dir)
        ballast.unlink(missing_ok=True)
        resumed = start([*base, "trainer.steps=8", f"resume={run_dir}"], work / "full_bc_again.log").wait(timeout=900)
        results["bc"] = {
            "disk": "64 MB tmpfs filled to half a checkpoint (ENOSPC)" if mounted else "file-size limit (EFBIG)",
            "exit": code,
            "last_line": line,
            "latest_step_kept": after["step"],
            "temporary_files_left": len(leftovers),
            "resumed_after_space_freed": resumed == 0 and read_checkpoint(latest)["step"] == 8,
            "ok": code != 0
            and after["sha256"] == before["sha256"]
            and not leftovers
            and line.startswith("error: could not write")
            and resumed == 0,
        }
    return results


# --- fuzz ----------------------------------------------------------------------------------
def fuzz(work: Path, examples: int) -> dict:
    counts = work / "cases.json"
    counts.unlink(missing_ok=True)
    env = {
        **environment(),
        "VLA_HYPOTHESIS_PROFILE": "campaign",
        "VLA_CASES_FILE": str(counts),
        "VLA_CAMPAIGN_EXAMPLES": str(examples),
    }
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/reliability"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    tail = done.stdout.strip().splitlines()[-1:] or [""]
    cases = json.loads(counts.read_text()) if counts.exists() else {}
    return {
        "cases": cases,
        "total": sum(cases.values()),
        "pytest": tail[0],
        "exit": done.returncode,
        "seconds": round(time.monotonic() - began),
        "failures": done.stdout[-4000:] if done.returncode else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--scripts", nargs="+", choices=SCRIPTS, default=list(SCRIPTS))
    parser.add_argument("--kills", type=int, default=20, help="kills per script (at least)")
    parser.add_argument("--examples", type=int, default=120, help="generated cases per property test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "reliability")
    args = parser.parse_args()
    if args.kills < 1 or args.examples < 1:
        parser.error(f"--kills and --examples must be >= 1, got {args.kills} and {args.examples}")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="campaign-", dir=args.out))
    rng = random.Random(args.seed)
    previous = args.out / "report.json"  # parts run separately add up to one report
    report: dict = json.loads(previous.read_text()) if previous.exists() else {}
    report.update(date=time.strftime("%Y-%m-%d"), work=str(work))

    if "fuzz" in args.parts:
        report["fuzz"] = fuzz(work, args.examples)
        print(f"fuzz: {report['fuzz']['total']} generated cases {report['fuzz']['cases']}: {report['fuzz']['pytest']}")
    if {"kills", "full-disk"} & set(args.parts):
        data = work / "demos"
        run_to_end(["train/collect.py", f"output={data}", *COLLECT], work / "demos.log")
    if "kills" in args.parts:
        init = tiny_policy_checkpoint(work / "init.pt")
        report["kills"] = []
        for script in args.scripts:
            began = time.monotonic()
            if script == "collect":
                result = kill_collect(work, args.kills, rng)
            elif script == "bc":
                result = kill_bc(work, args.kills, rng, data)
            else:
                result = kill_ppo(work, args.kills, rng, init)
            report["kills"].append({**asdict(result), "seconds": round(time.monotonic() - began)})
            print(
                f"kills {script}: {result.kills} kills ({result.mid_write} mid-write), {result.resumes} resumes, "
                f"{result.rounds} rounds, {result.checks} checks, {len(result.failures)} failures"
            )
            for failure in result.failures:
                print(f"  FAIL {failure}")
    if "full-disk" in args.parts:
        report["full_disk"] = full_disk(work, data)
        for name, row in report["full_disk"].items():
            print(f"full disk {name}: {row}")
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    failed = (
        report.get("fuzz", {}).get("exit", 0) != 0
        or any(r["failures"] for r in report.get("kills", []))
        or not all(r.get("ok", True) for r in report.get("full_disk", {}).values() if isinstance(r, dict))
    )
    print(f"report: {args.out / 'report.json'}" + (" (FAILURES above)" if failed else " (all checks held)"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
