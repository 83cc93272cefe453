"""Serve a task's champion over HTTP (`make serve-model TASK=emotion [PORT=5001]`): binds 127.0.0.1 only.

    python -m flows.serve_model emotion --port 5001

Runs `mlflow models serve -m models:/<task>@champion --env-manager local` against the configured store
(MLFLOW_TRACKING_URI, else params.common.mlflow_tracking_uri made absolute). `<task>@champion` is the task's
best model across families (pipeline.compare.champion), so clients need not know which family won. Requests
and responses: see pipeline.models.pyfunc (POST /invocations with {"inputs": ["text", ...]} or
{"dataframe_records": [{"text": ...}]}; the answer is {"predictions": [...]}).
"""

from __future__ import annotations

import argparse
import os
import sys

from flows.common import params_or_exit, setup_logging

HOST = "127.0.0.1"
DEFAULT_PORT = 5001


def champion_uri(task: str) -> str:
    from pipeline.compare.champion import CHAMPION_ALIAS

    return f"models:/{task}@{CHAMPION_ALIAS}"


def serve_command(model_uri: str, port: int, workers: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        HOST,
        "-p",
        str(port),
        "-w",
        str(workers),
    ]


def serve_env(tracking: str) -> dict[str, str]:
    """The environment of the server process: the store to resolve `models:/` from, and this interpreter's bin/
    first on PATH (the server execs `uvicorn` from there, also when the venv is not activated)."""
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": tracking, "MLFLOW_REGISTRY_URI": tracking}


def check_champion(task: str, tracking: str) -> str | None:
    """None when `<task>@champion` exists in the store, else why not (and what to run)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipeline.compare.champion import CHAMPION_ALIAS

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
