"""The fine-tuning stage's command line (`python -m flows.train MODEL TASK`, as dvc.yaml runs it):
killed after its first checkpoint, a rerun resumes it and ends in the same MLflow run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from flows.train import main
from tests.fixtures.finetune import finetune_params, memorization_split, write_prepared
from tests.fixtures.models import write_params

EPOCHS = 10


def test_unknown_model_or_task_prints_usage_before_prefect_starts(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    with pytest.raises(SystemExit, match=r"usage: python -m flows.train MODEL \(.*minilm.*\) TASK \(.*multi30k.*\)"):
        main(["nope", "emotion"])
    with pytest.raises(SystemExit, match="usage"):
        main(["gpt"])


def _written(state_file) -> bool:
    """trainer_state.json is created empty, then written: only a whole one marks a complete checkpoint."""
    try:
        return bool(json.loads(state_file.read_text()))
    except (OSError, ValueError):
        return False


def _wait_for_checkpoint(proc: subprocess.Popen, folder, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any(_written(p) for p in folder.glob("checkpoint-*/trainer_state.json")):
            return
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint in {folder} (exit code {proc.poll()})")


@pytest.mark.slow
@pytest.mark.integration  # a real Prefect server, real training runs in child processes, SIGKILL
def test_killed_finetune_resumes_from_its_checkpoint_in_the_same_mlflow_run(
    pretrained_repo, repo_root, memorization_rows_by_task, default_params_dict, prefect_env
):
    root, model, task = pretrained_repo, "gpt", "emotion"
    write_prepared(root, task, memorization_split(model, task, memorization_rows_by_task[task]))
    write_params(root, finetune_params(root, default_params_dict, model, task, epochs=EPOCHS))
    env = {**prefect_env, "PYTHONPATH": str(repo_root), "HT_LOG_LEVEL": "INFO"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "flows.train", model, task]
    folder = root / "checkpoints" / f"finetune-{model}-{task}"

    first = subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _wait_for_checkpoint(first, folder)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # no cleanup, no `finally`, like a power cut
        first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    store = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    experiment = client.get_experiment_by_name(f"task-{task}").experiment_id
    [killed] = client.search_runs([experiment])
    assert killed.info.status == "RUNNING"
    assert not (root / "data" / "models" / f"{model}-{task}").exists()

    second = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)

    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert "resuming from checkpoints/finetune-gpt-emotion/checkpoint-" in log
    assert f"Resuming MLflow run {killed.info.run_id}" in log
    [run] = client.search_runs([experiment])  # exactly one run: the killed one, finished
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    metrics = json.loads((root / "data" / "models" / f"{model}-{task}" / "metrics.json").read_text())
    assert metrics["mlflow_run_id"] == run.info.run_id
    assert metrics["test"]["accuracy"] >= 0.8  # memorised, as an uninterrupted run does
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
    assert steps == set(range(0, EPOCHS + 1))  # 0: the untrained model, evaluated by the killed run only
    assert len(client.search_model_versions(f"name='{task}-{model}'")) == 1
    assert not folder.exists()
