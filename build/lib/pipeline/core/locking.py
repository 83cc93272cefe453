"""An inter-process lock on a file (fcntl), so two pipeline runs on one repository never overlap.

    with repo_lock(Path(".locks/retrain.lock"), timeout_s=60, purpose="retrain"):
        ...  # dvc repro, compare, promotion

The lock is released by the kernel when its holder dies, so a killed run never leaves a stale lock. The file
holds a line about the current holder (pid, host, purpose, start time) so a refused caller can say who has it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

POLL_SECONDS = 0.5


class LockBusy(RuntimeError):
    """Another process holds the lock and did not release it within the timeout."""

    def __init__(self, path: Path, timeout_s: float, holder: dict | None):
        self.path, self.timeout_s, self.holder = path, timeout_s, holder or {}
        who = (
            f"{self.holder.get('purpose', 'a run')} (pid {self.holder.get('pid', '?')} on "
            f"{self.holder.get('host', '?')}, started {self.holder.get('started', '?')})"
            if self.holder
            else "another process"
        )
        waited = f"waited {timeout_s:g} s" if timeout_s else "did not wait"
        super().__init__(
            f"{path} is held by {who}; {waited}. Let it finish and run again, or raise "
            f"params.orchestration.lock_timeout_seconds to wait longer."
        )


def read_holder(path: Path) -> dict | None:
    try:
        text = path.read_text().strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def repo_lock(
    path: Path,
    timeout_s: float = 0,
    purpose: str = "pipeline run",
    on_wait: Callable[[dict | None], None] | None = None,
) -> Iterator[dict]:
    """Hold an exclusive lock on `path` (created with its folder); wait up to `timeout_s`, else LockBusy.

    `on_wait(holder)` is called once if the lock is busy and we are going to wait for it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockBusy(path, timeout_s, read_holder(path)) from None
                if on_wait is not None:
                    on_wait(read_holder(path))
                    on_wait = None
                time.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0.01)))
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": purpose,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        try:
            yield holder
        finally:
            os.ftruncate(fd, 0)  # no stale holder line once released
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
