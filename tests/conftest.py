"""Test-wide setup: offline, no telemetry, fixtures for params and the real data mirror.

Area fixtures live in tests/fixtures/<area>.py (registered below) so each area owns its own file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from pipeline.core.env import apply_quiet_env

apply_quiet_env(offline=True)
# Tests train tiny models: one torch/OpenMP thread each. On a shared, loaded 2-core machine two threads
# spin against each other and a tiny training step gets ~20x slower (also inherited by subprocesses).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("HT_PROFILE", None)  # tests choose their params profile themselves
# The checkout under test and most temp repos have uncommitted changes: registering from them is allowed here.
# tests/pipeline/tracking/test_lineage.py checks the refusal; the full-pipeline e2e test runs without it.
os.environ["HT_ALLOW_DIRTY"] = "1"

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.models",
    "tests.fixtures.finetune",
    "tests.fixtures.text2text",
    "tests.fixtures.orchestration",
    "tests.fixtures.compare",
    "tests.fixtures.dvc_repo",
    "tests.fixtures.tracking_server",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
MIRROR_DIR = (REPO_ROOT / ".." / "shared" / "datasets").resolve()


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_store(monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: left set, the next test's stages would write to the
    previous test's store instead of their params' one. A test that wants a server sets it again itself."""
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def mirror_dir() -> Path:
    assert MIRROR_DIR.is_dir(), f"the real data mirror is expected at {MIRROR_DIR} (../shared/datasets)"
    return MIRROR_DIR


@pytest.fixture(scope="session")
def default_params_dict() -> dict:
    """params.yaml as a plain dict; copy.deepcopy it before changing."""
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


@pytest.fixture
def in_tmp_repo(tmp_path, monkeypatch) -> Path:
    """cwd = an empty tmp folder standing in for the repo root (stage outputs land under it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
