"""The compare stage's command line (`python -m flows.compare`, as dvc.yaml runs it) and the rollback command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from pipeline.compare.champion import CHAMPION_ALIAS, update_champions


def _cli(repo, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.compare", *args], cwd=repo.root, capture_output=True, text=True, timeout=600
    )


@pytest.mark.integration  # each command starts Prefect's ephemeral API server
def test_compare_stage_and_rollback_commands(compare_repo):
    compare_repo.add_run("emotion", "bert", {"accuracy": 0.60, "macro_f1": 0.5})
    update_champions(compare_repo.params, tasks=("emotion",))
    compare_repo.add_run("emotion", "bert", {"accuracy": 0.70, "macro_f1": 0.6})  # the stage should promote v2

    stage = _cli(compare_repo)

    assert stage.returncode == 0, stage.stderr[-3000:]
    doc = json.loads((compare_repo.root / "reports/comparison.json").read_text())
    assert doc["best"]["emotion"] == {"model": "bert", "accuracy": 0.70}
    assert doc["champion"]["emotion"] == {"model": "bert", "version": "2", "accuracy": 0.70}
    assert (compare_repo.root / "reports/plots/main_metric.png").exists()
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("emotion-bert", CHAMPION_ALIAS).version) == "2"

    rolled = _cli(compare_repo, "rollback", "emotion")

    assert rolled.returncode == 0, rolled.stderr[-3000:]
    assert "emotion-bert: alias 'champion' moved back from version 2 to 1" in rolled.stdout + rolled.stderr
    assert str(client.get_model_version_by_alias("emotion-bert", CHAMPION_ALIAS).version) == "1"
    history = _cli(compare_repo, "history", "emotion-bert")
    events = [e for e in map(json.loads, history.stdout.splitlines()) if e["event"] != "leader"]
    assert [(e["event"], e["new_version"]) for e in events] == [("promote", "1"), ("promote", "2"), ("rollback", "1")]

    bad = _cli(compare_repo, "rollback", "emotion-t5")
    assert bad.returncode == 2 and "neither a task nor a registered model" in bad.stderr
