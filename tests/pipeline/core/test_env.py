"""The quiet environment (telemetry off, optionally offline): defaults that never override what is set."""

from __future__ import annotations

import os
import subprocess
import sys

from pipeline.core.env import OFFLINE_ENV, QUIET_ENV, apply_quiet_env, quiet_env
from tests.conftest import REPO_ROOT


def test_apply_sets_defaults_and_keeps_what_is_set():
    env = {"DO_NOT_TRACK": "0", "OTHER": "x"}
    apply_quiet_env(env=env)
    assert env == {**QUIET_ENV, "DO_NOT_TRACK": "0", "OTHER": "x"}
    assert not set(OFFLINE_ENV) & set(env)
    apply_quiet_env(offline=True, env=env)
    assert env["HF_HUB_OFFLINE"] == env["HF_DATASETS_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"


def test_the_test_session_runs_quiet_and_offline():  # tests/conftest.py applies it
    assert all(key in os.environ for key in quiet_env(offline=True))


def test_shell_export_lines_set_the_same_values():
    script = f'eval "$({sys.executable} -m pipeline.core.env --offline)" && env'
    out = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO_ROOT)},
    ).stdout
    shown = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert {k: shown.get(k) for k in quiet_env(offline=True)} == quiet_env(offline=True)
    bad = subprocess.run([sys.executable, "-m", "pipeline.core.env", "--nope"], capture_output=True, text=True)
    assert bad.returncode != 0 and "usage" in bad.stderr
