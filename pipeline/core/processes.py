"""Local server processes (Prefect, MLflow, PostgreSQL, `mlflow models serve`): a free port on 127.0.0.1, and stopping
the process group a server was started in (start_new_session=True), so its own children go with it; and the
resident memory of a process tree (a stage run at once with others, a benchmarked run)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess

HOST = "127.0.0.1"  # servers bind here only


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants now (processes that vanish mid-count are skipped; 0 when
    the process itself is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
    """Send `sig` to the group `proc` leads, wait `timeout_s` for it, then SIGKILL the group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
