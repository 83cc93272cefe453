"""Serve a task's champion over HTTP (`make serve-model TASK=emotion [PORT=5001]`): binds 127.0.0.1 only.

    python -m flows.serve_model emotion --port 5001

Runs `mlflow models serve -m models:/<task>@champion --env-manager local` against the configured store
(MLFLOW_TRACKING_URI, else params.common.mlflow_tracking_uri made absolute); see pipeline.tracking.serving.
`<task>@champion` is the task's best model across families (pipeline.compare.champion). Requests and
responses: POST /invocations with {"inputs": ["text", ...]} or {"dataframe_records": [{"text": ...}]}; the
answer is {"predictions": [...]} in the task kind's shape (pipeline.models.pyfunc).
"""

from __future__ import annotations

import argparse
import os
import sys

from flows.common import params_or_exit, setup_logging

DEFAULT_PORT = 5001


def check_champion(task: str, tracking: str) -> str | None:
    """None when `<task>@champion` exists in the store, else why not (and what to run)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipeline.tracking.serving import CHAMPION_ALIAS, champion_uri

    try:
        MlflowClient(tracking_uri=tracking, registry_uri=tracking).get_model_version_by_alias(task, CHAMPION_ALIAS)
    except MlflowException as err:
        return (
            f"no {champion_uri(task)} in {tracking} ({err.error_code}): run the pipeline (`make run`) so the compare "
            "stage picks a champion"
        )
    return None


def main(argv: list[str]) -> None:
    from pipeline.core.config import TASKS
    from pipeline.tracking.runs import tracking_uri
    from pipeline.tracking.serving import HOST, champion_uri, serve_command, serve_env

    parser = argparse.ArgumentParser(prog="python -m flows.serve_model", description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=TASKS, help="the task whose champion to serve")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on {HOST} (default {DEFAULT_PORT})")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    args = parser.parse_args(argv)
    setup_logging()
    tracking = tracking_uri(params_or_exit())
    problem = check_champion(args.task, tracking)
    if problem:
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    cmd = serve_command(champion_uri(args.task), args.port, args.workers)
    print(f"Serving {champion_uri(args.task)} from {tracking} on http://{HOST}:{args.port}/invocations", flush=True)
    os.execve(cmd[0], cmd, serve_env(tracking))  # the server replaces this process, so signals reach it directly


if __name__ == "__main__":
    main(sys.argv[1:])
