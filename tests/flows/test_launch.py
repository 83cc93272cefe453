"""Multi-process training (torchrun / DDP, params.common.torchrun_nproc): 2 CPU processes (gloo) on tiny models.

Pretraining in 2 processes makes one MLflow run and one saved model, and its loss curve matches the single-process
run with the same global batch (same samples per step; only dropout's random masks differ per process) within
LOSS_TOLERANCE. Fine-tuning in 2 processes registers one version from one run.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline.core.config import parse_params
from tests.fixtures.models import copy_pretrain_inputs, tiny_pretrain_params, write_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# |loss(2 processes) - loss(1 process)| per logged step, relative: dropout masks differ, the batches do not
LOSS_TOLERANCE = 0.05
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker_env(monkeypatch):
    """torchrun's workers import this checkout's flows/ and pipeline/ from a tmp working directory."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # MLflow exports them: each run has its own store
        monkeypatch.delenv(key, raising=False)


def _pretrain(root: Path, base: dict, nproc: int) -> tuple[dict, list[dict]]:
    from flows.pretrain import pretrain

    raw = tiny_pretrain_params(root, base, max_steps=12, eval_steps=6, save_steps=6, batch_size=8)
    raw["common"]["torchrun_nproc"] = nproc
    write_params(root, raw)  # the torchrun workers read ./params.yaml like any stage
    with contextlib.chdir(root):
        metrics = pretrain("gpt", parse_params(raw))
    with open(root / "data" / "pretrain" / "gpt" / "plots" / "loss.csv", newline="") as f:
        return metrics, list(csv.DictReader(f))


def test_pretraining_in_two_processes_matches_one_and_logs_once(
    tmp_path, pretrain_inputs, default_params_dict, worker_env
):
    import mlflow
    from mlflow import MlflowClient

    curves = {}
    for nproc in (0, 2):
        root = tmp_path / f"nproc{nproc}"
        copy_pretrain_inputs(pretrain_inputs, root)
        metrics, curves[nproc] = _pretrain(root, default_params_dict, nproc)
        assert metrics["steps"] == 12
    one, two = curves[0], curves[2]
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):
        assert abs(float(a["loss"]) - float(b["loss"])) <= LOSS_TOLERANCE * float(a["loss"]), (a, b)

    root = tmp_path / "nproc2"
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient()
    [run] = client.search_runs([client.get_experiment_by_name("pretraining").experiment_id])
    assert run.data.params["processes"] == "2" and run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == len(two)  # logged once, not twice
    assert list((root / "data" / "pretrain" / "gpt" / "model").glob("*.safetensors"))
    assert not (root / "checkpoints" / "pretrain-gpt").exists()


def test_fine_tuning_in_two_processes_registers_one_version(
    tmp_path, pretrained_models, memorization_rows_by_task, default_params_dict, worker_env
):
    from mlflow import MlflowClient

    from flows.train import train
    from tests.fixtures.finetune import finetune_params, memorization_split, write_prepared

    root = tmp_path / "repo"
    root.mkdir()
    for family, model_dir in pretrained_models.items():
        shutil.copytree(model_dir.parent, root / "data" / "pretrain" / family)
    write_prepared(root, "emotion", memorization_split("gpt", "emotion", memorization_rows_by_task["emotion"]))
    raw = finetune_params(root, copy.deepcopy(default_params_dict), "gpt", "emotion")
    raw["common"]["torchrun_nproc"] = 2
    write_params(root, raw)
    with contextlib.chdir(root):
        summary = train("gpt", "emotion", parse_params(raw))
    assert summary["registered_version"] == "1"
    assert json.loads((root / "data" / "models" / "gpt-emotion" / "metrics.json").read_text()) == summary
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient()
    [run] = client.search_runs([client.get_experiment_by_name("task-emotion").experiment_id])
    assert run.info.run_id == summary["mlflow_run_id"]
    assert [str(v.version) for v in client.search_model_versions("name='emotion-gpt'")] == ["1"]
    assert not (root / "checkpoints").exists() or not any((root / "checkpoints").iterdir())
