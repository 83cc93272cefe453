"""Local server processes (Prefect, MLflow, PostgreSQL, `mlflow models serve`): a free port on 127.0.0.1, and stopping
the process group a server was started in (start_new_session=True), so its own children go with it; and the
memory of a process tree (a stage run at once with others, a benchmarked run)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess

HOST = "127.0.0.1"  # servers bind here only


def tree_memory(pid: int) -> int:
    """Memory of a process and all its descendants now, in bytes: the sum of their proportional set sizes (PSS:
    each page shared by k processes counts 1/k in each), so processes forked from one parent (flows/stage_worker.py)
    are not counted with their shared pages again and again; resident set sizes where the kernel gives no PSS.
    Processes that vanish mid-count are skipped; 0 when the process itself is gone. Reading a large process's PSS
    takes the kernel a few ms: sample it about once a second, not in a tight loop."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error, OSError):
            total += _pss(proc.pid) or proc.memory_info().rss
    return total


def _pss(pid: int) -> int | None:
    """Proportional set size in bytes (Linux /proc/PID/smaps_rollup), None where there is none."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


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
