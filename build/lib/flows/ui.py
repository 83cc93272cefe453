"""MLflow UI over the local store from params (`make ui`): binds 127.0.0.1 only.

    python -m flows.ui --port 5000

Serves params.common.mlflow_tracking_uri (made absolute) with params.common.mlflow_artifact_root for new
experiments. When MLFLOW_TRACKING_URI already names a server (http/https), that server is the UI: this
prints its address and exits.
"""

from __future__ import annotations

import argparse
import os
import sys

from flows.common import params_or_exit, setup_logging

HOST = "127.0.0.1"
# MLflow 3.17's UI opens experiments on its GenAI (traces) pages unless its sidebar switch says "Model training"
# (a browser setting; the experiments' mlflow.experimentKind tag is what older MLflow 3 UIs read). This query
# selects model training, and the browser keeps the choice.
UI_MODEL_TRAINING_QUERY = "workflowType=machine_learning"


def server_command(tracking_uri: str, artifact_root: str | None, port: int, workers: int = 1) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if artifact_root:
        cmd += ["--default-artifact-root", artifact_root]
    return cmd


def main(argv: list[str]) -> None:
    from pipeline.tracking.runs import artifact_root, tracking_uri

    parser = argparse.ArgumentParser(prog="python -m flows.ui", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    args = parser.parse_args(argv)
    setup_logging()
    params = params_or_exit()
    uri = tracking_uri(params)
    if uri.startswith(("http://", "https://")):
        print(f"MLFLOW_TRACKING_URI is the server {uri}: open it in a browser (nothing to start here).")
        return
    cmd = server_command(uri, artifact_root(params), args.port, args.workers)
    print(f"MLflow UI on http://{HOST}:{args.port} over {uri} (Ctrl-C stops it)", flush=True)
    print(f"Training runs: http://{HOST}:{args.port}/#/experiments?{UI_MODEL_TRAINING_QUERY}", flush=True)
    # MLflow's background job runner (GenAI judges/scorers) is not used here; it costs seconds and processes
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(cmd[0], cmd)  # the server replaces this process, so signals reach it directly


if __name__ == "__main__":
    main(sys.argv[1:])
