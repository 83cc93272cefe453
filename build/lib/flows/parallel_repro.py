"""`dvc repro` with N stages at a time: the out-of-date stages of dvc.yaml, run as DVC would, each recorded in
dvc.lock as soon as it finishes.

`dvc repro` runs one stage after another (it holds DVC's repository lock for the whole run), and a small model
trains barely faster on 2 threads than on one. So with params.orchestration.parallel_stages = N > 1 the retrain
flow (flows/retrain.py) runs the stages itself, in dvc.yaml's dependency order:

1. the stage graph (commands, outputs, upstream stages) comes from DVC's own index of dvc.yaml;
2. a stage starts once every stage it depends on is done, at most N at once, each process with
   OMP_NUM_THREADS = cores // N (unless set already); among the ready stages, the one that took longest last
   time starts first, so a long stage does not end the run alone; and a stage starts beside others only while
   their peak memories last time (STAGE_HISTORY_FILE, per params profile) sum to at most the memory budget
   (params.orchestration.memory_budget_gib), else it waits for a free slot that keeps the sum under it (a stage
   alone always runs; one never run before counts as 0);
3. it runs only when out of date: in the first `dvc status`, or its upstream re-ran and `dvc status STAGE` now
   says so (as `dvc repro` skips a stage whose inputs came out unchanged); its non-persistent outputs are
   removed first, as `dvc repro` does;
4. when it succeeds, `dvc commit --force STAGE` records it in dvc.lock and the DVC cache (one commit at a time,
   under DVC's lock, after the freed slot got its next stage); so dvc.lock is always what `dvc repro` would
   have written for the stages done so far;
5. when one fails, nothing new starts, the running ones finish and are committed, and the run fails with the
   failed stage's last lines: what finished is kept, and the next run starts from there.

Each stage's wall time and peak memory (its process tree's PSS, sampled every SAMPLE_EVERY_S) are recorded in
STAGE_HISTORY_FILE for the next run. Each stage's output is streamed line by line, prefixed with its name
(progress bars thinned to one line every PROGRESS_EVERY_S), and kept whole in LOG_DIR/<stage>.log. The
'Running stage' / 'finished in' lines are the ones DVC prints (plus the time and peak memory), so tools reading
DVC's output work.
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from flows.stage_worker import ForkedStage, StageWorker
from pipeline.core.processes import tree_memory

LOG_DIR = Path(".dvc") / "tmp" / "stage-logs"
STAGE_HISTORY_FILE = Path(".dvc") / "tmp" / "stage-history.json"  # {profile: {stage: {wall_s, peak_rss_gib}}}
NO_PROFILE = "none"
TAIL_LINES = 40
POLL_S = 0.2
SAMPLE_EVERY_S = 0.5  # a stage's memory: reading a large process's PSS costs the kernel a few ms
FIRST_SAMPLE_AFTER_S = 0.05  # then doubled up to SAMPLE_EVERY_S
PROGRESS_RE = re.compile(r"\d+%\|.*\|\s*\d+/\d+")  # a tqdm bar: " 39%|███▉      | 1173/3000 [01:03<01:37, ...]"
PROGRESS_EVERY_S = 10.0
# A warm worker costs its own imports (~10 s of CPU beside the first stages): worth it from this many stages on.
WORKER_MIN_STAGES = 4


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
    proc: subprocess.Popen | ForkedStage
    started: float
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    reader: threading.Thread | None = None
    peak_rss_gib: float = 0.0  # the largest memory (PSS) of its process tree sampled so far
    done: threading.Event = field(default_factory=threading.Event)
    sampler: threading.Thread | None = None

    def sample_memory(self) -> None:
        """Its process tree's memory (pipeline.core.processes.tree_memory) every SAMPLE_EVERY_S until it ends, from
        its own thread: the orchestrating loop blocks for seconds in `dvc status`/`dvc commit`, longer than a short
        stage lives. Sampled, not the kernel's ru_maxrss: a child's ru_maxrss starts from its parent's resident set
        at fork (here the orchestrating Python process, or the stage worker). The first samples come quicker
        (0.05, 0.1, 0.2 s ...), so a stage that fails within a second still leaves a peak."""
        wait = FIRST_SAMPLE_AFTER_S
        while True:
            gib = round(tree_memory(self.proc.pid) / 2**30, 3)
            self.peak_rss_gib = max(self.peak_rss_gib, gib)
            if self.done.wait(wait):
                return
            wait = min(2 * wait, SAMPLE_EVERY_S)

    def exited(self) -> bool:
        if self.proc.poll() is None:
            return False
        self.done.set()
        if self.sampler is not None:
            self.sampler.join()
        return True


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


def stage_history(repo: Path, profile: str | None) -> dict[str, dict[str, float]]:
    """What each stage took last time under this params profile: {stage: {"wall_s", "peak_rss_gib"}}."""
    try:
        recorded = json.loads((repo / STAGE_HISTORY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return recorded.get(profile or NO_PROFILE, {}) if isinstance(recorded, dict) else {}


def save_stage_history(repo: Path, profile: str | None, history: dict[str, dict[str, float]]) -> None:
    path = repo / STAGE_HISTORY_FILE
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = {}
    recorded[profile or NO_PROFILE] = history
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(recorded, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(path)


def fits_memory(name: str, running: Iterable[str], history: dict[str, dict], budget_gib: float | None) -> bool:
    """Whether `name` may start beside the `running` stages: their recorded peaks plus its own stay within the
    budget (no budget, nothing running, or no record of `name`: yes)."""
    running = list(running)
    if budget_gib is None or not running:
        return True
    peak = {n: float(history.get(n, {}).get("peak_rss_gib") or 0.0) for n in [name, *running]}
    return sum(peak.values()) <= budget_gib


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


def start(
    repo: Path, stage: Stage, env: dict[str, str], emit: Callable[[str], None], worker: StageWorker | None = None
) -> Running:
    """Start the stage: in a child of the warm `worker` when it can take it, else as a subprocess (shell)."""
    remove_outs(repo, stage)
    emit(f"Running stage '{stage.name}':\n> {stage.cmd}")
    log_file = repo / LOG_DIR / f"{stage.name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    proc = worker.start(stage.cmd, repo / stage.wdir) if worker is not None else None
    proc = proc or subprocess.Popen(
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
    run.sampler = threading.Thread(target=run.sample_memory, daemon=True)
    run.sampler.start()
    return run


def stop_all(running: dict[str, Running]) -> None:
    for run in running.values():
        run.done.set()
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
    memory_budget_gib: float | None = None,
    stage_worker: bool = False,
) -> list[str]:
    """Run the out-of-date stages (`stale`: the first `dvc status`; all with `force`) `jobs` at a time, side by side
    only within `memory_budget_gib` of their recorded peaks; returns the stages that ran. Raises StageFailed (after
    the running ones finished and were committed) on a failure. With `stage_worker`, a run of at least
    WORKER_MIN_STAGES stages starts them from a warm worker (flows/stage_worker.py) once it is up."""
    from pipeline.core.profiles import recorded_profile

    stages = stage_graph(repo)
    order = wanted_stages(stages, targets)
    profile = recorded_profile(repo)
    previous = stage_history(repo, profile)
    priority = {name: (-float(previous.get(name, {}).get("wall_s") or 0.0), i) for i, name in enumerate(order)}
    threads = threads_per_stage(jobs)
    stage_env = dict(env)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        stage_env.setdefault(var, str(threads))
    budget = f", side by side within {memory_budget_gib:g} GiB" if memory_budget_gib else ""
    emit(f"Running up to {jobs} stages at a time, {stage_env['OMP_NUM_THREADS']} thread(s) each{budget}")
    done: set[str] = set()
    ran: list[str] = []
    running: dict[str, Running] = {}
    failed: Running | None = None
    history = dict(previous)
    worker = None
    if stage_worker and len(order if force else stale & set(order)) >= WORKER_MIN_STAGES:
        worker = StageWorker(repo, stage_env)
        emit("Starting a warm stage worker (the stages' imports once); stages start from it once it is up")
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
                    if not fits_memory(name, running, previous, memory_budget_gib):
                        continue  # a smaller ready stage may fit; this one waits until the others finish
                    upstream_ran = any(up in ran for up in stages[name].upstream)
                    if force or name in stale or (upstream_ran and is_stale(repo, env, name)):
                        running[name] = start(repo, stages[name], stage_env, emit, worker)
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
            finished = [n for n, r in running.items() if r.exited()]
            if not finished:
                time.sleep(POLL_S)
                continue
            for name in finished:
                run = running.pop(name)
                run.reader.join()  # type: ignore[union-attr]
                took = time.monotonic() - run.started
                if run.proc.returncode != 0:
                    emit(
                        f"Stage '{name}' failed (exit {run.proc.returncode}) after {took:.1f} s "
                        f"(peak memory {run.peak_rss_gib:.2f} GiB)"
                    )
                    # its peak so far: a stage killed for memory (exit -9) will not be paired the same way again
                    last = previous.get(name, {})
                    history[name] = {
                        "wall_s": last.get("wall_s", round(took, 1)),
                        "peak_rss_gib": max(run.peak_rss_gib, float(last.get("peak_rss_gib") or 0.0)),
                    }
                    failed = failed or run
                    continue
                history[name] = {"wall_s": round(took, 1), "peak_rss_gib": run.peak_rss_gib}
                emit(f"Stage '{name}' finished in {took:.1f} s (peak memory {run.peak_rss_gib:.2f} GiB)")
                finished_ok.append(name)
            save_stage_history(repo, profile, history)  # now: a run killed later still leaves what it learnt
    finally:
        stop_all(running)
        if worker is not None:
            worker.stop()
        save_stage_history(repo, profile, history)
    if failed is not None:
        log = repo / LOG_DIR / f"{failed.stage.name}.log"
        raise StageFailed(
            f"stage {failed.stage.name!r} failed (exit {failed.proc.returncode}); the stages that finished are "
            f"recorded in dvc.lock. Its log: {log}; last lines:\n" + "\n".join(failed.tail)
        )
    return ran
