"""Retrains started together on one repository: one runs, one refuses at once, one waits its turn.

Real processes (`python -m flows.retrain`), a real Prefect server and real DVC on a tiny repository. After
all three: dvc.lock is valid YAML, describes the outputs on disk (`dvc status` is clean), and the outputs of
the single run that reproduced are consistent with each other.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import yaml

from flows.retrain import EXIT_BUSY, LOCK_FILE
from pipeline.core.locking import read_holder
from tests.fixtures.orchestration import dvc_status

pytestmark = pytest.mark.integration


class Retrain:
    """`python -m flows.retrain` in the background, its output collected line by line."""

    def __init__(self, repo, env, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.retrain", "--repo-dir", str(repo), *args],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, condition, what: str, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            exited = self.proc.poll() is not None and not condition()
            assert not exited, f"exited ({self.proc.returncode}) before {what}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {what} in {timeout_s} s:\n{self.output}"
            time.sleep(0.2)

    def finish(self, timeout_s: float = 300) -> int:
        code = self.proc.wait(timeout=timeout_s)
        self.reader.join(timeout=10)
        return code


def test_second_retrain_refuses_and_third_waits_while_one_runs(prefect_env, tiny_repo, tmp_path):
    release = tmp_path / "release-stage"
    env = {**prefect_env, "TINY_STAGE_RELEASE": str(release)}  # the first run's stage waits for this file
    lock_path = tiny_repo / LOCK_FILE
    first = Retrain(tiny_repo, env, "--lock-timeout", "0")
    first.wait_for(lambda: read_holder(lock_path) is not None, "retrain lock taken")
    holder = read_holder(lock_path)

    refused = Retrain(tiny_repo, env, "--lock-timeout", "0")
    waiting = Retrain(tiny_repo, env, "--lock-timeout", "300")
    assert refused.finish() == EXIT_BUSY, refused.output
    waiting.wait_for(lambda: "Waiting up to 300 s" in waiting.output, "wait for the lock")
    release.touch()
    assert first.finish() == 0, first.output
    assert waiting.finish() == 0, waiting.output

    assert "re-ran 2 stage(s)" in first.output
    assert "NOT RUN" in refused.output and f"pid {holder['pid']}" in refused.output
    assert "lock_timeout_seconds" in refused.output and "dvc repro" not in refused.output
    assert "Nothing changed" in waiting.output and "dvc repro" not in waiting.output

    lock = yaml.safe_load((tiny_repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"count", "compare"}
    assert dvc_status(tiny_repo, env) == {}
    counts = json.loads((tiny_repo / "data/out/counts.json").read_text())
    board = json.loads((tiny_repo / "reports/comparison.json").read_text())
    assert board["emotion"]["tiny"]["run_by_pid"] == counts["pid"]  # one run's outputs, not a mix
    assert read_holder(lock_path) is None
