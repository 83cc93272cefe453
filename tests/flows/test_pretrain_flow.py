"""The pretraining stage's command line (`python -m flows.pretrain <family>`, as dvc.yaml runs it)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow import MlflowClient

from flows.pretrain import main
from tests.fixtures.models import copy_pretrain_inputs, tiny_pretrain_params, write_params
from tests.fixtures.orchestration import read_flow_run


def test_unknown_family_prints_usage_before_prefect_starts(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    with pytest.raises(SystemExit, match=r"usage: python -m flows.pretrain FAMILY \(gpt\|bert\)\n\(got 'rnn'\)"):
        main(["rnn"])
    with pytest.raises(SystemExit, match="usage"):
        main([])


@pytest.mark.slow
@pytest.mark.integration  # a real Prefect server and a real (tiny) training run in a child process
def test_pretrain_flow_trains_and_tags_the_mlflow_run(
    tmp_path, repo_root, pretrain_inputs, default_params_dict, prefect_env, prefect_api
):
    copy_pretrain_inputs(pretrain_inputs, tmp_path)
    write_params(
        tmp_path, tiny_pretrain_params(tmp_path, default_params_dict, max_steps=10, eval_steps=5, save_steps=5)
    )
    env = {**prefect_env, "PYTHONPATH": str(repo_root)}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [sys.executable, "-m", "flows.pretrain", "gpt"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert (tmp_path / "data/pretrain/gpt/model/model.safetensors").exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("pretraining").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["model_family"] == "gpt"
    flow_run = read_flow_run(run.data.tags["prefect.flow_run_id"])
    assert flow_run.name and flow_run.state.is_completed()
