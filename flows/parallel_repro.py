"""`dvc repro` with N stages at a time: the out-of-date stages of dvc.yaml, run as DVC would, each recorded in
dvc.lock as soon as it finishes.

`dvc repro` runs one stage after another (it holds DVC's repository lock for the whole run), and a small model
trains barely faster on 2 threads than on one. So with params.orchestration.parallel_stages = N > 1 the retrain
flow (flows/retrain.py) runs the stages itself, in dvc.yaml's dependency order:

1. the stage graph (commands, outputs, upstream stages) comes from DVC's own index of dvc.yaml;
2. a stage starts once every stage it depends on is done, at most N at once, each process with
   OMP_NUM_THREADS = cores // N (unless set already); among the ready stages, the one that took longest last
   time (STAGE_TIMES_FILE) starts first, so a long stage does not end the run alone;
3. it runs only when out of date: in the first `dvc status`, or its upstream re-ran and `dvc status STAGE` now
   says so (as `dvc repro` skips a stage whose inputs came out unchanged); its non-persistent outputs are
   removed first, as `dvc repro` does;
4. when it succeeds, `dvc commit --force STAGE` records it in dvc.lock and the DVC cache (one commit at a time,
   under DVC's lock, after the freed slot got its next stage); so dvc.lock is always what `dvc repro` would
   have written for the stages done so far;
5. when one fails, nothing new starts, the running ones finish and are committed, and the run fails with the
   failed stage's last lines: what finished is kept, and the next run starts from there.

Each stage's output is streamed line by line, prefixed with its name (progress bars thinned to one line every
PROGRESS_EVERY_S), and kept whole in LOG_DIR/<stage>.log. The
'Running stage' / 'finished in' lines are the ones DVC prints (plus the time), so tools reading DVC's output work.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

LOG_DIR = Path(".dvc") / "tmp" / "stage-logs"
STAGE_TIMES_FILE = Path(".dvc") / "tmp" / "stage-times.json"
TAIL_LINES = 40
POLL_S = 0.2
PROGRESS_RE = re.compile(r"\d+%\|.*\|\s*\d+/\d+")  # a tqdm bar: " 39%|███▉      | 1173/3000 [01:03<01:37, ...]"
PROGRESS_EVERY_S = 10.0


@dataclass
class Stage:
    name: str
    cmd: str
    upstream: set[str]
    outs: list[str]  # non-persistent outputs, removed before the stage runs
    wdir: str = "."  # where its command runs, relative to the repository root


@dataclass
class Running:
    stage: Stage
    proc: subprocess.Popen
    started: float
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    reader: threading.Thread | None = None


class StageFailed(RuntimeError):
    pass


def stage_graph(repo: Path) -> dict[str, Stage]:
    """Every pipeline stage of the repository's dvc.yaml files (foreach expanded), with its upstream stages."""
    from dvc.repo import Repo

    root = repo.resolve()

    def address(stage) -> str:  # as `dvc status/commit` run in the root take it
        dvcfile = Path(stage.path).resolve().relative_to(root)
        return stage.name if dvcfile == Path("dvc.yaml") else f"{dvcfile}:{stage.name}"

    with Repo(str(root)) as dvc_repo:
        graph = dvc_repo.index.graph  # edge (a, b): stage a depends on an output of stage b
        stages = {}
        for stage in graph.nodes:
            if not getattr(stage, "cmd", None):  # a .dvc file's data, not a stage that runs
                continue
            upstream = {address(dep) for dep in graph.successors(stage) if getattr(dep, "cmd", None)}
            outs = [str(Path(out.fs_path).relative_to(root)) for out in stage.outs if not out.persist]
            wdir = str(Path(stage.wdir).resolve().relative_to(root))
            stages[address(stage)] = Stage(address(stage), stage.cmd, upstream, outs, wdir)
    return stages


def wanted_stages(stages: dict[str, Stage], targets: list[str]) -> list[str]:
    """The targets and everything upstream of them (all stages without targets), in dependency order."""
    unknown = [t for t in targets if t not in stages]
    if unknown:
        raise ValueError(f"no stage {', '.join(unknown)} in dvc.yaml (stages: {', '.join(sorted(stages))})")
    keep, todo = set(), list(targets or stages)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(stages[name].upstream)
    order, done = [], set()
    while len(order) < len(keep):  # Kahn's algorithm, in dvc.yaml's order among the ready ones
        ready = [n for n in stages if n in keep and n not in done and stages[n].upstream <= done]
        if not ready:
            raise ValueError(f"dvc.yaml has a cycle among {sorted(keep - done)}")
        order.extend(ready)
        done.update(ready)
    return order


def threads_per_stage(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def stage_times(repo: Path) -> dict[str, float]:
    try:
        return json.loads((repo / STAGE_TIMES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def save_stage_times(repo: Path, times: dict[str, float]) -> None:
    path = repo / STAGE_TIMES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(times, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(path)


def _dvc(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)


def dvc_status(repo: Path, env: dict[str, str], *args: str) -> dict[str, list]:
    """`dvc status --json [ARGS]`: the out-of-date stages and what changed in each ({} when none)."""
    result = _dvc(repo, env, "status", "--json", *args)
    if result.returncode != 0:
        raise RuntimeError(f"`dvc status` failed in {repo} (exit {result.returncode}):\n{result.stderr.strip()}")
    text = result.stdout.strip()
    return json.loads(text[text.find("{") :]) if "{" in text else {}


def is_stale(repo: Path, env: dict[str, str], name: str) -> bool:
    return name in dvc_status(repo, env, name)


def commit(repo: Path, env: dict[str, str], name: str) -> None:
    result = _dvc(repo, env, "commit", "--force", name)
    if result.returncode != 0:
        raise RuntimeError(
            f"stage {name!r} ran, but `dvc commit --force {name}` failed (exit {result.returncode}): "
            f"{(result.stdout + result.stderr).strip()[-2000:]}\nRun `dvc commit {name}` (or `dvc repro {name}`)."
        )


def remove_outs(repo: Path, stage: Stage) -> None:
    for out in stage.outs:
        path = repo / out
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _stream(run: Running, emit: Callable[[str], None], log_file: Path) -> None:
    """Every line into the stage's log file; to `emit` with the stage's name, progress bars at most every
    PROGRESS_EVERY_S (each redraw is a line here, and two stages' bars would bury everything else)."""
    last_bar = -PROGRESS_EVERY_S
    with open(log_file, "w", encoding="utf-8") as sink:
        for line in run.proc.stdout:  # type: ignore[union-attr]
            sink.write(line)
            line = line.rstrip()
            if not line:
                continue
            if PROGRESS_RE.search(line):
                now = time.monotonic()
                if now - last_bar < PROGRESS_EVERY_S and "100%|" not in line:
                    continue
                last_bar = now
            else:
                run.tail.append(line)
            emit(f"[{run.stage.name}] {line}")


def start(repo: Path, stage: Stage, env: dict[str, str], emit: Callable[[str], None]) -> Running:
    remove_outs(repo, stage)
    emit(f"Running stage '{stage.name}':\n> {stage.cmd}")
    log_file = repo / LOG_DIR / f"{stage.name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        stage.cmd,
        shell=True,
        cwd=repo / stage.wdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
        start_new_session=True,  # its own process group: stopped as a whole on interrupt
    )
    run = Running(stage, proc, time.monotonic())
    run.reader = threading.Thread(target=_stream, args=(run, emit, log_file), daemon=True)
    run.reader.start()
    return run


def stop_all(running: dict[str, Running]) -> None:
    for run in running.values():
        if run.proc.poll() is None:
            os.killpg(run.proc.pid, signal.SIGTERM)
    for run in running.values():
        try:
            run.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(run.proc.pid, signal.SIGKILL)


def reproduce_parallel(
    repo: Path,
    targets: list[str],
    force: bool,
    jobs: int,
    env: dict[str, str],
    stale: set[str],
    emit: Callable[[str], None],
) -> list[str]:
    """Run the out-of-date stages (`stale`: the first `dvc status`; all with `force`) `jobs` at a time; returns
    the stages that ran. Raises StageFailed (after the running ones finished and were committed) on a failure."""
    stages = stage_graph(repo)
    order = wanted_stages(stages, targets)
    previous = stage_times(repo)
    priority = {name: (-previous.get(name, 0.0), i) for i, name in enumerate(order)}
    threads = threads_per_stage(jobs)
    stage_env = dict(env)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        stage_env.setdefault(var, str(threads))
    emit(f"Running up to {jobs} stages at a time, {stage_env['OMP_NUM_THREADS']} thread(s) each")
    done: set[str] = set()
    ran: list[str] = []
    running: dict[str, Running] = {}
    failed: Running | None = None
    times = dict(previous)
    try:
        finished_ok: list[str] = []  # ran, not yet committed
        while len(done) < len(order):
            if failed is None:
                ready = sorted(
                    (
                        n
                        for n in order
                        if n not in done and n not in running and n not in finished_ok and stages[n].upstream <= done
                    ),
                    key=priority.__getitem__,
                )
                for name in ready:
                    if len(running) >= jobs:
                        break
                    upstream_ran = any(up in ran for up in stages[name].upstream)
                    if force or name in stale or (upstream_ran and is_stale(repo, env, name)):
                        running[name] = start(repo, stages[name], stage_env, emit)
                    else:
                        emit(f"Stage '{name}' didn't change, skipping")
                        done.add(name)
            if finished_ok:  # committed once the free slots are refilled: DVC's ~1 s then idles no core
                for name in finished_ok:
                    commit(repo, env, name)
                    ran.append(name)
                    done.add(name)
                finished_ok.clear()
                continue  # their downstream stages may be ready now
            if not running:
                if failed is not None:
                    break
                continue
            finished = [n for n, r in running.items() if r.proc.poll() is not None]
            if not finished:
                time.sleep(POLL_S)
                continue
            for name in finished:
                run = running.pop(name)
                run.reader.join()  # type: ignore[union-attr]
                took = time.monotonic() - run.started
                if run.proc.returncode != 0:
                    emit(f"Stage '{name}' failed (exit {run.proc.returncode}) after {took:.1f} s")
                    failed = failed or run
                    continue
                times[name] = round(took, 1)
                emit(f"Stage '{name}' finished in {took:.1f} s")
                finished_ok.append(name)
    finally:
        stop_all(running)
        save_stage_times(repo, times)
    if failed is not None:
        log = repo / LOG_DIR / f"{failed.stage.name}.log"
        raise StageFailed(
            f"stage {failed.stage.name!r} failed (exit {failed.proc.returncode}); the stages that finished are "
            f"recorded in dvc.lock. Its log: {log}; last lines:\n" + "\n".join(failed.tail)
        )
    return ran
