"""`make run`: reproduce the whole pipeline on params.yaml (+ a profile) and print where the results are.

    python -m flows.run_pipeline [--profile NAME] [--force] [TARGET ...]

The profile (profiles/<name>.yaml; `make run PROFILE=gpu` passes --profile gpu) is --profile, else HT_PROFILE,
else none: plain `make run` runs on params.yaml's defaults. params.effective.yaml is written for it (under the
retrain lock) before `dvc repro`, so the stages and dvc.lock see the profile's values.

One Prefect server for all stages (flows/prefect_server.py): PREFECT_API_URL when set, else the one `make
serve` runs on 127.0.0.1:4200, else a local `prefect server start` kept for the run and stopped at the end
(its history stays in PREFECT_HOME, so `make serve` shows these runs later). Then the retrain flow runs
`dvc repro` under the retrain lock: only out-of-date stages run, each a flow run of its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from flows.common import params_or_exit, setup_logging
from flows.prefect_server import DEFAULT_PORT, prefect_api
from pipeline.core.locking import LockBusy
from pipeline.core.profiles import PROFILE_ENV

EXIT_BUSY = 75


def ensure_dvc_repo(root: Path) -> None:
    if (root / ".dvc").is_dir():
        return
    scm = [] if (root / ".git").exists() else ["--no-scm"]
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", *scm], cwd=root, check=True)


def dvc_metrics(root: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show"], cwd=root, capture_output=True, text=True)
    return (result.stdout or result.stderr).rstrip()


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
        dvc_metrics(root),
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

            summary = retrain_flow(repo_dir=str(root), targets=args.targets, force=args.force, profile=profile)
            flush_prefect_queues()
    except LockBusy as err:
        print(f"\nNOT RUN: {err}", file=sys.stderr)
        raise SystemExit(EXIT_BUSY) from None
    except Exception as err:  # the flow runs' logs carry the traceback
        print(f"\nFAILED: {type(err).__name__}: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(results_text(summary, root, params))


if __name__ == "__main__":
    main(sys.argv[1:])
