"""Retrain flow: reproduce what is out of date in dvc.yaml (through compare + champions), publish the leaderboard.

    python -m flows.retrain                      # the repository in the working directory
    python -m flows.retrain --repo-dir PATH [--force] [--lock-timeout SECONDS] [TARGET ...]

The params profile stays the one params.effective.yaml records (like a bare `dvc repro`); `make run` passes
`profile` to select one (flows.run_pipeline), written under the lock so a running retrain never sees it change.

1. Take the repository's retrain lock (.locks/retrain.lock, fcntl): a second retrain (or `make run`) on the
   same repository waits up to params.orchestration.lock_timeout_seconds, then fails with a message naming
   the holder. One run at a time means outputs are never interleaved; DVC's own repo lock guards dvc.lock.
2. `dvc status`: the stages out of date (changed data, code or params). None -> "nothing changed", no repro.
   First data-sources.yaml is refreshed (pipeline.data.sources), so a changed mirror file re-runs its ingest.
3. Otherwise `dvc repro` (only the out-of-date stages and what depends on them run; each is its own flow
   run, reporting to the same Prefect server), its output streamed into this flow run's logs. With
   params.orchestration.parallel_stages (or --jobs) N > 1, flows/parallel_repro.py runs N stages at once and
   records each in dvc.lock as it finishes (DVC's own `dvc repro` runs one at a time).
4. Compare and champion promotion are the last DVC stage (pipeline.compare.stage calls
   pipeline.compare.champion), so they run whenever a model's metrics changed. To re-apply the champion gate
   alone (e.g. after unblocking a version in the MLflow UI): `dvc repro --force --single-item compare`.
5. The leaderboard (reports/comparison.md/json) is published as Prefect artifacts `leaderboard[-table]`,
   also when nothing changed, so each retrain run shows the leaderboard it leaves in place.

Scheduled as a deployment by flows/serve.py (`make serve`).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.artifacts import publish_leaderboard
from flows.common import setup_logging
from flows.parallel_repro import dvc_status, reproduce_parallel
from pipeline.core.config import SELECTED, ParamsError, load_params
from pipeline.core.effective import write_effective_params
from pipeline.core.locking import LockBusy, repo_lock
from pipeline.core.profiles import EFFECTIVE_FILE, PROFILE_ENV
from pipeline.data.sources import SOURCES_FILE, refresh_sources
from pipeline.tracking.runs import FLOW_RUN_ENV, ensure_store

LOCK_FILE = Path(".locks") / "retrain.lock"
NOTHING_CHANGED = "nothing changed"
EXIT_BUSY = 75  # EX_TEMPFAIL: try again later


def _api_url() -> str | None:
    """The API URL this process reports to (also a temporary server's), for the stage processes to share."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        return url
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return str(client.api_url).rstrip("/")
    except Exception:  # no server at all: each stage falls back to its own temporary one
        return None


def stage_env() -> dict[str, str]:
    """Environment of `dvc` and the stages: this interpreter's tools first, no run ids of this flow run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT__") and k != FLOW_RUN_ENV}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    url = _api_url()
    if url:
        env["PREFECT_API_URL"] = url
    return env


def lock_entries(repo: Path) -> dict:
    path = repo / "dvc.lock"
    if not path.exists():
        return {}
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages", {}) or {}


@task(name="dvc-status", cache_policy=NO_CACHE, persist_result=False)
def stale_stages(repo: Path, targets: list[str], env: dict[str, str]) -> dict[str, list]:
    """Stages whose deps, params, command or outputs changed since dvc.lock (`dvc status --json`); with targets, their
    upstream stages too (`dvc repro` runs those): e.g. `params`, which turns a params.yaml edit into new values."""
    return dvc_status(repo, env, *(["--with-deps", *targets] if targets else []))


@task(name="dvc-repro", cache_policy=NO_CACHE, persist_result=False)
def reproduce(
    repo: Path,
    targets: list[str],
    force: bool,
    env: dict[str, str],
    jobs: int = 1,
    stale: set[str] | None = None,
    memory_budget_gib: float | None = None,
    stage_worker: bool = False,
) -> list[str]:
    """Run `dvc repro` (jobs > 1: flows.parallel_repro, that many stages at once), streaming its output into the
    flow-run logs; returns the stages it re-ran."""
    logger = get_run_logger()
    before = lock_entries(repo)
    if jobs > 1:
        logger.info("$ dvc repro %s with %d stages at a time (in %s)", " ".join(targets), jobs, repo)
        try:
            reproduce_parallel(
                repo,
                targets,
                force,
                jobs,
                env,
                set(stale or ()),
                lambda line: logger.info("%s", line),
                memory_budget_gib,
                stage_worker,
            )
        except Exception as err:
            raise RuntimeError(f"`dvc repro` failed in {repo}: {err}") from None
    else:
        repro_one_at_a_time(repo, targets, force, env, logger)
    after = lock_entries(repo)
    return sorted(name for name in after if after[name] != before.get(name))


def repro_one_at_a_time(repo: Path, targets: list[str], force: bool, env: dict[str, str], logger) -> None:
    """DVC's own `dvc repro`, its output streamed into the flow-run logs."""
    cmd = [sys.executable, "-m", "dvc", "repro", *(["--force"] if force else []), *targets]
    logger.info("$ %s  (in %s)", " ".join(["dvc", *cmd[3:]]), repo)
    tail: collections.deque[str] = collections.deque(maxlen=40)
    with subprocess.Popen(
        cmd,
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        stdin=subprocess.DEVNULL,
    ) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                logger.info("%s", line)
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"`dvc repro` failed in {repo} (exit {code}); last lines:\n" + "\n".join(tail))


def stage_jobs(params, jobs: int | None) -> int:
    """Stages to run at once: `jobs`, else params.orchestration.parallel_stages; 1 under torchrun (DDP stages
    take every core themselves)."""
    wanted = jobs if jobs is not None else params.orchestration.parallel_stages
    if wanted > 1 and params.common.torchrun_nproc:
        get_run_logger().info("common.torchrun_nproc is set: one stage at a time (each takes every core)")
        return 1
    return max(1, wanted)


def champions(repo: Path) -> dict:
    """The task leaders the last compare wrote to reports/comparison.json ({} when there is none)."""
    try:
        board = json.loads((repo / "reports" / "comparison.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {task: f"{c.get('model')} v{c.get('version')}" for task, c in (board.get("champion") or {}).items()}


@flow(name="retrain")
def retrain_flow(
    repo_dir: str = ".",
    targets: list[str] | None = None,
    force: bool = False,
    lock_timeout_seconds: float | None = None,
    profile: str | None = None,
    jobs: int | None = None,
) -> dict:
    """Reproduce what is out of date (compare and champion promotion included), publish the leaderboard.

    profile: write params.effective.yaml for profiles/<profile>.yaml ('' = no profile) first; None keeps the
    selected one (HT_PROFILE, else the recorded one). jobs: stages at once (None: params.orchestration's
    parallel_stages)."""
    logger = get_run_logger()
    started = time.monotonic()
    repo = Path(repo_dir).expanduser().resolve()
    if not (repo / "dvc.yaml").is_file():
        raise FileNotFoundError(f"{repo}/dvc.yaml not found: repo_dir must be the root of the DVC repository")
    params = load_params(repo / "params.yaml", profile=SELECTED if profile is None else (profile or None))
    timeout = params.orchestration.lock_timeout_seconds if lock_timeout_seconds is None else lock_timeout_seconds
    targets = list(targets or [])

    def waiting(holder: dict | None) -> None:
        logger.info("Waiting up to %g s for %s, held by %s", timeout, LOCK_FILE, holder or "another process")

    with repo_lock(repo / LOCK_FILE, timeout, purpose=f"retrain (flow run {flow_run.id})", on_wait=waiting):
        env = stage_env()
        if profile is not None:
            write_effective_params(repo, profile or None)
            env.pop(PROFILE_ENV, None)  # the stages follow the profile the file now records
            logger.info("Params profile: %s (%s written)", profile or "none", EFFECTIVE_FILE)
        if SOURCES_FILE in (repo / "dvc.yaml").read_text(encoding="utf-8"):  # the ingest stages depend on it
            changed = refresh_sources(params, repo)
            if changed:
                logger.info("%s: the sources of %s changed", SOURCES_FILE, ", ".join(changed))
        stale = stale_stages(repo, targets, env)
        if stale or force:
            logger.info("Out of date: %s", ", ".join(sorted(stale)) or "(none; --force)")
            jobs = stage_jobs(params, jobs)
            if jobs > 1:
                ensure_store(params, repo)  # a new store's tables made once, before stages open it together
            orchestration = params.orchestration
            rerun = reproduce(
                repo, targets, force, env, jobs, set(stale), orchestration.memory_budget_gib, orchestration.stage_worker
            )
        else:
            logger.info(
                "%s: every stage of %s/dvc.yaml is up to date, nothing to reproduce", NOTHING_CHANGED.capitalize(), repo
            )
            rerun = []
        leaders = champions(repo)
        if leaders:
            logger.info("Champions (task leaders): %s", ", ".join(f"{t}: {m}" for t, m in leaders.items()))
        if rerun:
            note = f"re-ran {len(rerun)} stage(s)"
        else:  # out of date but nothing re-ran: DVC restored the outputs from its cache
            note = "outputs restored from the DVC cache, no stage re-ran" if stale else NOTHING_CHANGED
        published = publish_leaderboard(repo, note=note)
    summary = {
        "repo": str(repo),
        "out_of_date": sorted(stale),
        "rerun": rerun,
        "nothing_changed": not stale and not rerun,
        "leaders": leaders,
        "leaderboard": published["markdown"],
        "duration_s": round(time.monotonic() - started, 1),
    }
    logger.info("Retrain done in %.1f s: %s%s", summary["duration_s"], note, f" ({', '.join(rerun)})" if rerun else "")
    return summary


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flows.retrain", description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="*", help="dvc.yaml stages to reproduce (default: all)")
    parser.add_argument("--repo-dir", default=".", help="root of the DVC repository (default: .)")
    parser.add_argument("--force", action="store_true", help="re-run the stages even when up to date")
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=None,
        help="seconds to wait for a running retrain (default: params.orchestration)",
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="stages at once (default: params.orchestration.parallel_stages)"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    try:
        load_params(Path(args.repo_dir) / "params.yaml")  # bad params fail before Prefect starts
    except ParamsError as err:
        print(str(err), file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging()
    try:
        retrain_flow(
            repo_dir=args.repo_dir,
            targets=args.targets,
            force=args.force,
            lock_timeout_seconds=args.lock_timeout,
            jobs=args.jobs,
        )
    except LockBusy as err:
        print(f"\nNOT RUN: {err}", file=sys.stderr)
        raise SystemExit(EXIT_BUSY) from None
    except Exception as err:  # the flow run's logs carry the traceback
        print(f"\nFAILED: {type(err).__name__}: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main(sys.argv[1:])
