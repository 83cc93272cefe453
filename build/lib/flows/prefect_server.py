"""One Prefect server for many flow runs: reuse the configured one, else start a local one for the duration.

Without PREFECT_API_URL every `python -m flows.<x>` process starts (and stops) its own temporary server,
which costs ~10-20 s per DVC stage on a small machine. `make run`, `make serve` and the retrain flow use
`prefect_api()` instead: PREFECT_API_URL when set (a shared or remote server), else a server already
answering on 127.0.0.1:<port>, else `prefect server start` on 127.0.0.1 in the background, stopped at the end.
The URL is exported in os.environ, so child processes (dvc repro -> stage flows) report to the same server.
Import Prefect only after entering `prefect_api()`: Prefect reads its settings when first imported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.processes import HOST, free_port, stop_process_group

log = logging.getLogger(__name__)

API_ENV = "PREFECT_API_URL"
DEFAULT_PORT = 4200
STARTUP_TIMEOUT_S = 180.0


def api_url_for(port: int) -> str:
    return f"http://{HOST}:{port}/api"


def healthy(api_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class LocalServer:
    """`prefect server start --host 127.0.0.1 --port PORT` as a child process (its own process group)."""

    def __init__(
        self,
        port: int | None = None,
        home: Path | None = None,
        env: dict[str, str] | None = None,
        ui: bool = True,
        services: bool = True,
    ):
        self.port = port or free_port()
        self.api_url = api_url_for(self.port)
        self.home, self.extra_env, self.ui, self.services = home, env or {}, ui, services
        self.process: subprocess.Popen | None = None
        fd, name = tempfile.mkstemp(prefix=f"prefect-server-{self.port}-", suffix=".log", dir=home)
        os.close(fd)
        self.log_path = Path(name)

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> LocalServer:
        env = {**os.environ, **self.extra_env}  # telemetry off: flows/__init__.py (pipeline.core.env)
        env.pop(API_ENV, None)
        # The UI's pages call the API at PREFECT_UI_API_URL, which otherwise stays http://127.0.0.1:4200/api
        # whatever --port says: on another port the UI would show "Can't connect to Server API".
        env["PREFECT_UI_API_URL"] = self.api_url
        env["PREFECT_UI_URL"] = self.api_url.removesuffix("/api")
        if self.home:
            env["PREFECT_HOME"] = str(self.home)
        cmd = [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--analytics-off",
            "--ui" if self.ui else "--no-ui",
        ]
        if not self.services:
            cmd.append("--no-services")
        started = time.monotonic()
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        while not healthy(self.api_url, timeout_s=1.0):
            if self.process.poll() is not None or time.monotonic() - started > timeout_s:
                tail = self.log_tail()
                self.stop(keep_log=True)
                raise RuntimeError(
                    f"the local Prefect server on {self.api_url} did not start within {timeout_s:.0f} s "
                    f"(log {self.log_path}):\n{tail}\nSet {API_ENV} to use a running server instead."
                )
            time.sleep(0.5)
        log.info("Prefect server up on %s in %.1f s (log %s)", self.api_url, time.monotonic() - started, self.log_path)
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 20.0, keep_log: bool = False) -> None:
        proc, self.process = self.process, None
        if not keep_log:
            self.log_path.unlink(missing_ok=True)
        if proc is None or proc.poll() is not None:
            return
        stop_process_group(proc, signal.SIGTERM, timeout_s)  # the group we created: the server and its children

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def prefect_api(port: int | None = None, reuse_port: int | None = DEFAULT_PORT, ui: bool = True) -> Iterator[str]:
    """Yield the API URL of a Prefect server and export it in PREFECT_API_URL for this process and its children.

    In order: PREFECT_API_URL when set; a server already answering on 127.0.0.1:`reuse_port`; else a local
    server started here on `port` (a free one when None) and stopped when the block ends.
    """
    configured = os.environ.get(API_ENV)
    if configured:
        if not healthy(configured, timeout_s=5):
            log.warning("%s=%s does not answer /health; flow runs will fail until it does", API_ENV, configured)
        yield configured
        return
    if reuse_port and healthy(api_url_for(reuse_port)):
        log.info("Using the Prefect server already running on %s", api_url_for(reuse_port))
        with _env(API_ENV, api_url_for(reuse_port)):
            yield api_url_for(reuse_port)
        return
    with _exit_on_sigterm(), LocalServer(port=port, ui=ui) as server, _env(API_ENV, server.api_url):
        yield server.api_url


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit (Python's default is to die on the spot), so the server is stopped too."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _env(key: str, value: str) -> Iterator[None]:
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
