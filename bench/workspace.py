"""Repo copies for the pipeline-level benchmarks, and running commands in them with per-stage timing and memory.

A *workspace* is a folder holding the repo's files and, once a pipeline ran in it, its outputs (data/, mlflow/,
dvc.lock). The benchmarks never run `dvc repro` for real in the developer's checkout: they measure a finished
run read-only there (no-op repro only after `dvc status` says nothing would run) or work in a copy.

Layout of a copy: <workdir>/repo (the files) and <workdir>/shared -> the real ../shared next to the source repo,
so params.yaml's `ingest.mirror_dir: ../shared/datasets` resolves unchanged (the params stay the defaults).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import REPO_ROOT, read_result
from pipeline.core.env import quiet_env
from pipeline.core.processes import tree_memory

log = logging.getLogger("bench")

DEFAULT_WORKDIR = Path(os.environ.get("HT_BENCH_WORKDIR", "/tmp/ht-bench"))
# DVC's stage lines, also when a flow re-logs them with a prefix (flows.retrain streams dvc into Prefect logs).
RUNNING_RE = re.compile(r"(?:^|\s)Running stage '([^']+)':")
SKIPPED_RE = re.compile(r"(?:^|\s)Stage '([^']+)' didn't change, skipping")
# flows/parallel_repro.py (stages at once): each stage's end is its own line, not the next stage's start
ENDED_RE = re.compile(r"(?:^|\s)Stage '([^']+)' (?:finished in|failed \(exit)(?:.*\(peak memory ([\d.]+) GiB\))?")
CONCURRENT_RE = re.compile(r"Running up to (\d+) stages at a time")
# Variables that would point a copy at the developer's stores (or params profile) instead of its own.
ISOLATE_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "HT_PROFILE", "PREFECT_API_URL")


def venv_bin(root: Path = REPO_ROOT) -> Path:
    return root / ".venv" / "bin"


def bench_env(extra: dict[str, str] | None = None, isolate: bool = True) -> dict[str, str]:
    """The environment `make` gives the pipeline: the repo's venv first on PATH, telemetry off, unbuffered output."""
    env = dict(os.environ)
    if isolate:
        for key in ISOLATE_ENV:
            env.pop(key, None)
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    env.update(quiet_env(offline=True), PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


# ---------------------------------------------------------------- copies
def repo_files(src: Path) -> list[str]:
    """Tracked and untracked-but-not-ignored files of the repo (what a fresh clone plus the work in progress has)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=src,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted({f for f in out.split("\0") if f and (src / f).is_file()})


def clone_repo(src: Path, workdir: Path, outputs: bool = False) -> Path:
    """Copy the repo's files to <workdir>/repo (a fresh git repo with one commit) and link <workdir>/shared.

    outputs=True also brings a finished run's outputs: data/ and the DVC cache (without which `dvc status`
    says "not in cache") as hard links (stages replace outputs by rename, never in place, so the source stays
    intact), dvc.lock and reports/ as real copies (they are changed in place).

    The MLflow store (mlflow/: database, artifacts, champion history) is never copied: a copy starts with an
    empty store of its own, created by MLflow on the first run logged there, so runs in the copy can never
    write into the source's store or artifact folder. (The compare stage in a copy therefore sees only the
    runs logged in that copy; the other rows' notes say their runs are not in this tracking store.)
    """
    src = src.resolve()
    dst = workdir / "repo"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for rel in repo_files(src):
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, target)
    shared = workdir / "shared"
    real_shared = (src / ".." / "shared").resolve()
    if not shared.exists() and real_shared.exists():
        shared.symlink_to(real_shared, target_is_directory=True)
    if outputs:
        for rel in ("data", ".dvc/cache"):
            if (src / rel).is_dir():
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                linked = subprocess.run(["cp", "-al", str(src / rel), str(dst / rel)], capture_output=True)
                if linked.returncode != 0:  # another filesystem (e.g. /tmp on tmpfs): a real copy
                    shutil.rmtree(dst / rel, ignore_errors=True)
                    subprocess.run(["cp", "-a", str(src / rel), str(dst / rel)], check=True)
        for rel in ("dvc.lock", "reports"):
            if (src / rel).is_file():
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / rel, dst / rel)
            elif (src / rel).is_dir():
                shutil.copytree(src / rel, dst / rel, dirs_exist_ok=True)
    git = ["git", "-c", "user.email=bench@example.invalid", "-c", "user.name=bench"]
    subprocess.run(git + ["init", "-q"], cwd=dst, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dst, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "bench workspace"], cwd=dst, check=True)
    return dst


def break_links(folder: Path) -> None:
    """Replace hard-linked files under `folder` by private copies (before a stage may rewrite them)."""
    for path in [p for p in folder.rglob("*") if p.is_file() and p.stat().st_nlink > 1]:
        tmp = path.with_name(path.name + ".bench-copy")
        shutil.copy2(path, tmp)
        tmp.replace(path)


# ---------------------------------------------------------------- finding a finished run
def dvc_status(root: Path, timeout: float = 600) -> dict | None:
    """`dvc status --json` of a workspace ({} = up to date); None when it cannot tell."""
    try:
        out = subprocess.run(
            ["dvc", "status", "--json"], cwd=root, env=bench_env(), capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("dvc status in %s failed: %s", root, err)
        return None
    if out.returncode != 0:
        log.warning("dvc status in %s exited %s: %s", root, out.returncode, out.stderr.strip()[-500:])
        return None
    try:
        return json.loads(out.stdout or "{}")
    except json.JSONDecodeError:
        return None


def has_finished_run(root: Path) -> bool:
    """Cheap check before the expensive `dvc status`: a lock file with the compare stage and its report."""
    lock = root / "dvc.lock"
    return lock.is_file() and "compare:" in lock.read_text(encoding="utf-8") and (root / "reports").is_dir()


def candidate_workspaces(explicit: Path | None) -> list[Path]:
    """Where a finished run may be: --workspace, the copy the last `--full` run left, the repo itself (and last,
    the copy of a smoke-size `--full` run)."""
    out: list[Path] = []
    if explicit:
        out.append(Path(explicit))
    recorded = read_result("whole_pipeline")
    recorded_ws = Path(recorded["workspace"]) if recorded and recorded.get("workspace") else None
    smoke = bool(recorded and recorded.get("smoke"))
    if recorded_ws and not smoke:
        out.append(recorded_ws)
    out.append(REPO_ROOT)
    if recorded_ws and smoke:  # a smoke-size run only when there is no real one
        out.append(recorded_ws)
    seen, unique = set(), []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def find_finished_workspace(explicit: Path | None, check_status: bool = True) -> tuple[Path | None, str]:
    """The first candidate with a complete, up-to-date run; else None and why not (for the summary)."""
    reasons = []
    for root in candidate_workspaces(explicit):
        if not has_finished_run(root):
            reasons.append(f"{root}: no finished run (dvc.lock without compare)")
            continue
        if check_status:
            status = dvc_status(root)
            if status is None:
                reasons.append(f"{root}: dvc status failed")
                continue
            if status:
                reasons.append(f"{root}: {len(status)} stage(s) out of date")
                continue
        return root, ""
    return None, "; ".join(reasons)


NOT_RUN_HINT = "not measured: run `make run` (or `make bench FULL=1`) first"


# ---------------------------------------------------------------- running with per-stage timing and memory
@dataclass
class StageTiming:
    name: str
    start_s: float
    wall_s: float = 0.0
    peak_rss_gib: float = 0.0  # the whole tree's, sampled while the stage ran (stages beside it included)
    own_peak_rss_gib: float | None = None  # the stage's own process tree (flows/parallel_repro.py, sampled)


@dataclass
class TrackedRun:
    cmd: list[str]
    rc: int
    wall_s: float
    peak_rss_gib: float
    stages: list[StageTiming] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)
    jobs: int = 1  # stages at once (flows/parallel_repro.py's first line), 1 for `dvc repro`

    @property
    def ran(self) -> list[str]:
        return [s.name for s in self.stages]

    def to_dict(self) -> dict:
        return {
            "cmd": self.cmd,
            "rc": self.rc,
            "wall_s": round(self.wall_s, 3),
            "peak_rss_gib": round(self.peak_rss_gib, 3),
            "stages": [
                {
                    "name": s.name,
                    "start_s": round(s.start_s, 3),
                    "wall_s": round(s.wall_s, 3),
                    "peak_rss_gib": round(s.peak_rss_gib, 3),
                    "own_peak_rss_gib": s.own_peak_rss_gib,
                }
                for s in self.stages
            ],
            "skipped": self.skipped,
            "jobs": self.jobs,
            "log_tail": self.tail[-40:],
        }


@contextlib.contextmanager
def read_only_view(root: Path, subfolders: tuple[str, ...] = ("prepared", "pretrain", "tokenizers")) -> Iterator[Path]:
    """A temporary working directory whose data/<sub> link to a finished run's (read only), the process inside it
    for the block: the pipeline's code reads its inputs there and writes checkpoints and stores into the temporary
    folder, never into the run."""
    with tempfile.TemporaryDirectory(prefix="ht-bench-view-") as tmp:
        work = Path(tmp)
        (work / "data").mkdir()
        for sub in subfolders:
            (work / "data" / sub).symlink_to((root / "data" / sub).resolve())
        with contextlib.chdir(work):
            yield work


def run_tracked(
    cmd: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    sample_every: float = 0.5,
    log_file: Path | None = None,
) -> TrackedRun:
    """Run a command, timestamp DVC's 'Running stage' lines, sample the process tree's RSS.

    Each stage lasts from its 'Running stage' line to its 'finished in' line when the run prints one (stages
    run at once: flows/parallel_repro.py), else to the next 'Running stage' line (`dvc repro`) or the end; its
    peak is the largest tree RSS sampled meanwhile (the whole tree: DVC, the stage's python, a Prefect server
    if one runs, and the stages running beside it).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env or bench_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    run = TrackedRun(cmd=cmd, rc=-1, wall_s=0.0, peak_rss_gib=0.0)
    lock = threading.Lock()
    done = threading.Event()
    open_stages: dict[str, StageTiming] = {}

    def sample() -> None:
        while not done.is_set():
            gib = tree_memory(proc.pid) / 2**30
            with lock:
                run.peak_rss_gib = max(run.peak_rss_gib, gib)
                for stage in open_stages.values():
                    stage.peak_rss_gib = max(stage.peak_rss_gib, gib)
            done.wait(sample_every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sink = open(log_file, "w", encoding="utf-8") if log_file else None  # noqa: SIM115 (closed in finally)
    deadline = t0 + timeout if timeout else None
    concurrent = False  # set by flows/parallel_repro.py's first line
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            now = time.perf_counter() - t0
            if sink:
                sink.write(f"[{now:8.1f}s] {line}")
            line = line.rstrip("\n")
            run.tail = (run.tail + [line])[-200:]
            if m := RUNNING_RE.search(line):
                with lock:
                    if not concurrent:  # `dvc repro`: the previous stage ended here
                        for stage in open_stages.values():
                            stage.wall_s = now - stage.start_s
                        open_stages.clear()
                    stage = StageTiming(m.group(1), now)
                    run.stages.append(stage)
                    open_stages[stage.name] = stage
                log.info("[%7.1fs] stage %s", now, m.group(1))
            elif m := CONCURRENT_RE.search(line):
                concurrent, run.jobs = True, int(m.group(1))
            elif m := ENDED_RE.search(line):
                with lock:
                    if stage := open_stages.pop(m.group(1), None):
                        stage.wall_s = now - stage.start_s
                        stage.own_peak_rss_gib = float(m.group(2)) if m.group(2) else None
            elif m := SKIPPED_RE.search(line):
                run.skipped.append(m.group(1))
            if deadline and time.perf_counter() > deadline:
                proc.kill()
                run.tail.append(f"(killed after {timeout:.0f} s)")
                break
        run.rc = proc.wait()
    finally:
        done.set()
        sampler.join()
        if sink:
            sink.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run.wall_s = time.perf_counter() - t0
    for stage in open_stages.values():
        stage.wall_s = run.wall_s - stage.start_s
    return run


def measurement_copy(explicit: Path | None, name: str) -> tuple[Path | None, Path | None, str]:
    """A private, up-to-date copy of a finished run to run DVC in: (source, copy, "") or (None, None, why).

    The copy's first `dvc status` also fills its hash cache, so what is timed afterwards is a warm DVC.
    """
    src, why = find_finished_workspace(explicit)
    if src is None:
        return None, None, why
    t0 = time.perf_counter()
    copy = clone_repo(src, DEFAULT_WORKDIR / name, outputs=True)
    status = dvc_status(copy)
    log.info("%s: copied %s to %s and checked it (%.1f s)", name, src, copy, time.perf_counter() - t0)
    if status is None:
        return src, None, f"dvc status failed in the copy {copy}"
    if status:
        return src, None, f"the copy {copy} is not up to date ({sorted(status)[:5]}...): the source changed meanwhile?"
    return src, copy, ""
