"""The generate stage's command line (`python -m flows.generate`, as dvc.yaml runs it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from flows.generate import main
from tests.fixtures.models import copy_pretrain_inputs, tiny_pretrain_params, write_params
from tests.fixtures.orchestration import read_flow_run


def test_arguments_print_usage_before_prefect_starts(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    with pytest.raises(SystemExit, match=r"usage: python -m flows.generate\n\(got 'gpt'\)"):
        main(["gpt"])


@pytest.mark.slow
@pytest.mark.integration  # a real Prefect server and the stage in a child process, on a tiny pretrained GPT
def test_generate_flow_writes_outputs_and_tags_the_mlflow_run(
    tmp_path, repo_root, pretrain_inputs, pretrained_models, default_params_dict, prefect_env, prefect_api
):
    copy_pretrain_inputs(pretrain_inputs, tmp_path)
    shutil.copytree(pretrained_models["gpt"].parent, tmp_path / "data/pretrain/gpt")
    params = tiny_pretrain_params(tmp_path, default_params_dict)
    params["generate"].update(num_prompts=2, max_new_tokens=5)
    write_params(tmp_path, params)
    env = {**prefect_env, "PYTHONPATH": str(repo_root)}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [sys.executable, "-m", "flows.generate"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )

    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert len((tmp_path / "data/generate/samples.jsonl").read_text().splitlines()) == 2
    metrics = json.loads((tmp_path / "data/generate/metrics.json").read_text())
    assert metrics["registered_model"]["name"] == "generation-gpt"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("pretraining").experiment_id])
    assert run.info.run_name == "generate-gpt" and run.info.status == "FINISHED"
    flow_run = read_flow_run(run.data.tags["prefect.flow_run_id"])
    assert flow_run.name and flow_run.state.is_completed()
    assert not (tmp_path / "checkpoints").exists()
