"""pipeline.core.locking: one holder at a time, waiting with a timeout, a clear refusal, no stale lock after a crash."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from pipeline.core.locking import LockBusy, read_holder, repo_lock


def test_second_holder_is_refused_with_the_holder_named(tmp_path):
    path = tmp_path / ".locks" / "retrain.lock"
    with repo_lock(path, purpose="retrain A") as holder:
        assert read_holder(path)["purpose"] == "retrain A"
        started = time.monotonic()
        with pytest.raises(LockBusy) as err, repo_lock(path, timeout_s=0.3, purpose="retrain B"):
            pytest.fail("two holders at once")
        assert time.monotonic() - started >= 0.3
    message = str(err.value)
    assert "retrain A" in message and f"pid {holder['pid']}" in message
    assert "lock_timeout_seconds" in message
    assert read_holder(path) is None  # released: no stale holder line
    with repo_lock(path, purpose="retrain C"):
        assert read_holder(path)["purpose"] == "retrain C"


def test_waiter_gets_the_lock_when_the_holder_releases(tmp_path):
    # Ordered by events, not sleeps: the holder takes the lock, the waiter starts waiting (on_wait), only
    # then does the holder let go.
    path = tmp_path / "retrain.lock"
    held, waiting, releasing = threading.Event(), threading.Event(), threading.Event()
    waits: list = []

    def hold():
        with repo_lock(path, purpose="first"):
            held.set()
            waiting.wait(timeout=30)
            releasing.set()  # set before the lock is let go: a waiter that gets it must see this set

    def on_wait(holder):
        waits.append(holder)
        waiting.set()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(timeout=30), "the holder thread never took the lock"
        with repo_lock(path, timeout_s=30, purpose="second", on_wait=on_wait):
            assert releasing.is_set()
    finally:
        waiting.set()
        thread.join(timeout=30)
    assert len(waits) == 1 and waits[0]["purpose"] == "first"


def test_lock_of_a_killed_process_is_free(tmp_path):
    path = tmp_path / "retrain.lock"
    code = (
        "import sys, time; from pathlib import Path; from pipeline.core.locking import repo_lock\n"
        f"with repo_lock(Path({str(path)!r}), purpose='doomed'):\n"
        "    print('locked', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockBusy), repo_lock(path, timeout_s=0):
            pass
    finally:
        proc.kill()
        proc.wait()
    with repo_lock(path, timeout_s=5, purpose="after crash") as holder:
        assert holder["purpose"] == "after crash"
