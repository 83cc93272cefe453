"""`make run`: reproduce the whole pipeline on params.yaml (+ a profile) and print where the results are.

    python -m flows.run_pipeline [--profile NAME] [--force] [TARGET ...]

The profile (profiles/<name>.yaml; `make run PROFILE=gpu` passes --profile gpu) is --profile, else HT_PROFILE,
else none: plain `make run` runs on params.yaml's defaults. params.effective.yaml is written for it (under the
retrain lock) before `dvc repro`, so the stages and dvc.lock see the profile's values.

One Prefect server for all stages (flows/prefect_server.py): PREFECT_API_URL when set, else the one `make
serve` runs on 127.0.0.1:4200, else a local `prefect server start` kept for the run and stopped at the end
(its history stays in PREFECT_HOME, so `make serve` shows these runs later). Then the retrain flow runs
`dvc repro` under the retrain lock: only out-of-date stages run, each a flow run of its own.

After a successful run the outputs go to the default DVC remote (`dvc push`; .dvc/config names a local folder,
~/.cache/hello-transformers/dvc-remote, by default): --no-push or HT_DVC_PUSH=0 skips it, and a failed push only
warns (the results are complete locally; `dvc push` later).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from flows.common import params_or_exit, setup_logging
from flows.prefect_server import DEFAULT_PORT, prefect_api
from pipeline.core.io import write_text
from pipeline.core.locking import LockBusy
from pipeline.core.profiles import PROFILE_ENV

EXIT_BUSY = 75
PUSH_ENV = "HT_DVC_PUSH"  # "0" (or false/no/off): no `dvc push` after a successful run
PUSH_INPUTS = ("dvc.lock", ".dvc/config", ".dvc/config.local")
PUSH_MARKER = Path(".dvc") / "tmp" / "last-push"  # push_state() of the last successful push
log = logging.getLogger("hello_transformers")


def ensure_dvc_repo(root: Path) -> None:
    if (root / ".dvc").is_dir():
        return
    scm = [] if (root / ".git").exists() else ["--no-scm"]
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", *scm], cwd=root, check=True)


def push_wanted(no_push: bool) -> bool:
    return not no_push and os.environ.get(PUSH_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def push_state(root: Path) -> str:
    """What a push sends, and where: a hash of dvc.lock (the outputs' md5s) and of the DVC config (the remote)."""
    digest = hashlib.sha256()
    for rel in PUSH_INPUTS:
        path = root / rel
        digest.update(rel.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"(none)") + b"\0")
    return digest.hexdigest()


def push_outputs(root: Path) -> bool:
    """`dvc push` the cached outputs to the default remote; True when pushed (or already pushed: dvc.lock and
    the DVC config unchanged since the last successful push, recorded in PUSH_MARKER; this skips two DVC
    start-ups and the remote check, ~2 s of a `make run` with nothing changed). Never raises: a missing remote is
    logged, a failed push (remote unreachable, no credentials) warns."""
    state, marker = push_state(root), root / PUSH_MARKER
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == state:
        log.info("dvc push: nothing new since the last push (dvc.lock and the DVC remote config unchanged)")
        return True
    dvc = [sys.executable, "-m", "dvc"]
    try:
        remote = subprocess.run([*dvc, "remote", "default"], cwd=root, capture_output=True, text=True, timeout=120)
        name = remote.stdout.strip()
        if remote.returncode or not name:
            log.info("No default DVC remote (dvc remote add -d NAME URL): nothing pushed")
            return False
        log.info("dvc push to the DVC remote %r ...", name)
        result = subprocess.run([*dvc, "push"], cwd=root, capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("dvc push did not finish (%s): the results are complete locally; run `dvc push` later", err)
        return False
    if result.returncode:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        log.warning(
            "dvc push to the DVC remote %r failed (exit %d): the results are complete locally; fix the remote "
            "(dvc remote list) and run `dvc push` later. Last lines:\n%s",
            name,
            result.returncode,
            tail,
        )
        return False
    log.info("dvc push: %s", (result.stdout.strip().splitlines() or ["done"])[-1])
    write_text(marker, state + "\n")
    return True


def best_per_task(root: Path) -> list[str]:
    """Each task's best test score and its champion, from the leaderboard's reports/comparison.json (the file
    `dvc metrics show` reads, without its one-column-per-metric table)."""
    path = root / "reports" / "comparison.json"
    try:
        board = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    lines = [f"  {'task':<10}  {'best on test':<28}  champion (registered)"]
    for task, best in (board.get("best") or {}).items():
        metric, value = next(((k, v) for k, v in best.items() if k != "model"), ("-", float("nan")))
        champ = (board.get("champion") or {}).get(task) or {}
        champion = f"{champ['model']} v{champ['version']}" if champ.get("model") else "-"
        score = f"{metric} {value:.4g} ({best.get('model')})"
        lines.append(f"  {task:<10}  {score:<28}  {champion}")
    return lines


def results_text(summary: dict, root: Path, params) -> str:
    report = root / "reports" / "comparison.md"
    uri = params.common.mlflow_tracking_uri
    lines = [
        "",
        "=" * 72,
        f"Pipeline done in {summary['duration_s']} s: "
        + (f"re-ran {', '.join(summary['rerun'])}" if summary["rerun"] else "nothing changed (all stages up to date)"),
        f"  Leaderboard : {report if report.exists() else '(not written yet)'}  (+ comparison.json, plots/)",
        f"  MLflow UI   : make ui   -> http://127.0.0.1:5000   (store {uri})",
        f"  Prefect UI  : make serve -> http://127.0.0.1:{DEFAULT_PORT}   (these flow runs + the scheduled retrain)",
        "  DVC metrics : dvc metrics show   (dvc plots show for the curves)",
        f"  Params      : params.effective.yaml, profile {params.profile or 'none'}   (dvc params diff: vs git)",
        "",
        *best_per_task(root),
    ]
    return "\n".join(lines)


def flush_prefect_queues(timeout: float = 10) -> None:
    """Send queued flow-run logs and events while the server is still up.

    Without this, a server started for this run is stopped first and Prefect's exit hook keeps retrying
    the dead API for over a minute ("Error logging to API: All connection attempts failed").
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout)
        except Exception as err:  # best effort: never fail a finished pipeline over its logs
            logging.getLogger(__name__).debug("could not flush %s: %s", worker.__name__, err)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.run_pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="*", help="dvc.yaml stages (default: all)")
    parser.add_argument("--force", action="store_true", help="re-run the stages even when up to date")
    parser.add_argument(
        "--jobs", type=int, default=None, help="stages at once (default: params.orchestration.parallel_stages)"
    )
    parser.add_argument("--no-push", action="store_true", help=f"no `dvc push` afterwards (also: {PUSH_ENV}=0)")
    parser.add_argument(
        "--profile",
        default=None,
        help=f"profiles/<name>.yaml to apply; '' for none (default: {PROFILE_ENV}, else none)",
    )
    args = parser.parse_args(argv)
    profile = args.profile if args.profile is not None else os.environ.get(PROFILE_ENV, "")
    if profile:  # this process and the stages it starts all see the same profile
        os.environ[PROFILE_ENV] = profile
    else:
        os.environ.pop(PROFILE_ENV, None)
    params = params_or_exit(profile or None)  # bad params or profile fail before Prefect starts
    setup_logging()
    root = Path.cwd()
    ensure_dvc_repo(root)
    try:
        with prefect_api(port=None, reuse_port=DEFAULT_PORT):
            from flows.retrain import retrain_flow

            summary = retrain_flow(
                repo_dir=str(root), targets=args.targets, force=args.force, profile=profile, jobs=args.jobs
            )
            flush_prefect_queues()
    except LockBusy as err:
        print(f"\nNOT RUN: {err}", file=sys.stderr)
        raise SystemExit(EXIT_BUSY) from None
    except Exception as err:  # the flow runs' logs carry the traceback
        print(f"\nFAILED: {type(err).__name__}: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    if push_wanted(args.no_push):
        push_outputs(root)
    print(results_text(summary, root, params))


if __name__ == "__main__":
    main(sys.argv[1:])
