"""Retrains started together on one repository: one runs, one refuses at once, one waits its turn.

Real processes (`python -m flows.retrain`), a real Prefect server and real DVC on a tiny repository. After
all three: dvc.lock is valid YAML, describes the outputs on disk (`dvc status` is clean), and the outputs of
the single run that reproduced are consistent with each other.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from flows.retrain import EXIT_BUSY, LOCK_FILE
from pipeline.locking import read_holder

pytestmark = pytest.mark.integration


def _retrain(repo, env, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.retrain", "--repo-dir", str(repo), *args], cwd=repo,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_second_retrain_refuses_and_third_waits_while_one_runs(prefect_env, tiny_repo):
    env = {**prefect_env, "TINY_STAGE_SLEEP": "4"}  # keep the first run inside its stage for a while
    first = _retrain(tiny_repo, env, "--lock-timeout", "0")
    deadline = time.monotonic() + 120
    while read_holder(tiny_repo / LOCK_FILE) is None:  # wait until the first one holds the lock
        assert first.poll() is None, first.communicate()[0]
        assert time.monotonic() < deadline, "the first retrain never took the lock"
        time.sleep(0.2)
    holder = read_holder(tiny_repo / LOCK_FILE)

    refused = _retrain(tiny_repo, env, "--lock-timeout", "0")
    waiting = _retrain(tiny_repo, env, "--lock-timeout", "300")
    refused_out, _ = refused.communicate(timeout=300)
    first_out, _ = first.communicate(timeout=300)
    waiting_out, _ = waiting.communicate(timeout=300)

    assert first.returncode == 0, first_out
    assert "re-ran 2 stage(s)" in first_out
    assert refused.returncode == EXIT_BUSY, refused_out
    assert "NOT RUN" in refused_out and f"pid {holder['pid']}" in refused_out and "lock_timeout_seconds" in refused_out
    assert "dvc repro" not in refused_out
    assert waiting.returncode == 0, waiting_out
    assert "Waiting up to 300 s" in waiting_out and "Nothing changed" in waiting_out

    lock = yaml.safe_load((tiny_repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"count", "compare"}
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=tiny_repo, env=env,
                            capture_output=True, text=True, check=True)
    assert json.loads(status.stdout) == {}
    counts = json.loads((tiny_repo / "data/out/counts.json").read_text())
    board = json.loads((tiny_repo / "reports/comparison.json").read_text())
    assert board["emotion"]["tiny"]["run_by_pid"] == counts["pid"]  # one run's outputs, not a mix
    assert read_holder(tiny_repo / LOCK_FILE) is None
