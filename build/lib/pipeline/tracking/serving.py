"""Serving registered models over HTTP with `mlflow models serve` (127.0.0.1 only, the local environment).

- `champion_uri(task)`: `models:/<task>@champion`, the task's best model across families (kept by
  pipeline.compare.champion); clients need not know which family won.
- `serve_command` / `serve_env`: the server's command line and environment (the store to resolve `models:/`
  from; this interpreter's bin/ first on PATH, since the server execs `uvicorn` from there).
- `running_server(...)`: start a server in its own process group, wait until /ping answers, stop every
  process of it on exit (used by the tests and the serving benchmark; `make serve-model` execs the command).
Requests and responses: POST /invocations with {"inputs": [texts]} or {"dataframe_records": [{"text": ...}]};
the answer is {"predictions": [...]} in the task kind's shape (pipeline.models.pyfunc).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.processes import HOST, free_port, stop_process_group

CHAMPION_ALIAS = "champion"
STARTUP_TIMEOUT_S = 180


class ServingError(RuntimeError):
    """The model server did not start or stopped; the message holds the end of its log."""


def champion_uri(task: str) -> str:
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
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": tracking, "MLFLOW_REGISTRY_URI": tracking}


def invoke(port: int, body: dict, timeout_s: float = 60) -> list:
    """POST a JSON body to /invocations; the predictions."""
    request = urllib.request.Request(
        f"http://{HOST}:{port}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())["predictions"]


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServingError(f"mlflow models serve exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/ping", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise ServingError(f"mlflow models serve not ready in {timeout_s:g} s:\n{self.tail()}")

    def stop(self) -> list[int]:
        """Stop the whole process group (the CLI and its uvicorn workers); returns their pids."""
        import psutil

        pids = [self.process.pid]
        with contextlib.suppress(psutil.NoSuchProcess):
            pids += [p.pid for p in psutil.Process(self.process.pid).children(recursive=True)]
        stop_process_group(self.process)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.2)
        for pid in pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return pids


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextlib.contextmanager
def running_server(model_uri: str, tracking: str, log: Path, wait: bool = True) -> Iterator[Server]:
    """A `mlflow models serve` of `model_uri` on a free port; ready (unless wait=False) inside, stopped after."""
    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        process = subprocess.Popen(
            serve_command(model_uri, port),
            env=serve_env(tracking),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches the uvicorn workers too
        )
    server = Server(process, port, log)
    try:
        if wait:
            server.wait_ready()
        yield server
    finally:
        server.stop()
