"""Retries of tasks that touch the outside, and failures that must not be retried (real Prefect server).

The transient fault is injected (a task that raises ConnectionError on its first call): a flaky network is a
fault the tests cannot cause otherwise. The data-validation failure is real: the real validate flow on a
corrupted dataset.
"""

from __future__ import annotations

import copy
import json
import socket

import datasets
import pytest
from prefect import flow

from flows.common import external_task, is_transient
from pipeline.core.config import parse_params
from tests.fixtures.orchestration import artifacts_with_key, task_runs_of, wait_for_logs

CALLS: dict[str, int] = {}
PARAMS = {}


def fetch_once_flaky(name: str) -> str:
    """Stands in for a hub download: the first call meets a refused connection."""
    CALLS[name] = CALLS.get(name, 0) + 1
    if CALLS[name] == 1:
        raise ConnectionRefusedError(111, "Connection refused (injected fault)")
    return f"{name}@rev"


def fetch_broken(name: str) -> str:
    CALLS[name] = CALLS.get(name, 0) + 1
    raise ValueError(f"revision of {name} has no split 'train' (a bug, not the network)")


@flow(name="test-retry-transient")
def transient_flow() -> str:
    return external_task(fetch_once_flaky, "hub-download", PARAMS["params"])("emotion")


@flow(name="test-retry-permanent")
def permanent_flow() -> str:
    return external_task(fetch_broken, "hub-download", PARAMS["params"])("sst2")


@pytest.fixture
def fast_retry_params(default_params_dict):
    raw = copy.deepcopy(default_params_dict)
    raw["orchestration"].update(retries=2, retry_delay_seconds=0)
    PARAMS["params"] = parse_params(raw)
    CALLS.clear()
    yield PARAMS["params"]
    PARAMS.clear()


def test_is_transient_tells_network_errors_from_bugs():
    import httpx2
    import requests
    from huggingface_hub.errors import OfflineModeIsEnabled
    from mlflow.exceptions import MlflowException, RestException

    assert is_transient(ConnectionResetError(104, "reset"))
    assert is_transient(TimeoutError("read timed out"))
    assert is_transient(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"))
    assert is_transient(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}))
    assert is_transient(RestException({"error_code": "429", "message": "slow down"}))
    try:  # MLflow wraps the requests error without `from`: found through __context__
        try:
            raise ConnectionRefusedError(111, "refused")
        except ConnectionRefusedError:
            # MLflow's own wrapping, without `from`, is what is tested
            raise MlflowException("API request to http://mlflow:5000 failed with exception ...")  # noqa: B904
    except MlflowException as wrapped:
        assert is_transient(wrapped)
    assert is_transient(requests.exceptions.ConnectionError("Max retries exceeded"))
    assert is_transient(httpx2.ConnectError("connection refused"))  # what huggingface_hub raises
    assert is_transient(httpx2.HTTPStatusError("busy", request=None, response=httpx2.Response(503)))
    assert not is_transient(httpx2.HTTPStatusError("gone", request=None, response=httpx2.Response(404)))
    assert not is_transient(requests.exceptions.SSLError("certificate verify failed"))
    assert not is_transient(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such run"}))
    assert not is_transient(MlflowException("bad param"))
    assert not is_transient(ValueError("bad data"))
    assert not is_transient(FileNotFoundError(2, "No such file"))
    assert not is_transient(OfflineModeIsEnabled("HF_HUB_OFFLINE=1"))  # a ConnectionError no retry fixes


@pytest.mark.integration
def test_transient_failure_is_retried_and_the_flow_completes(prefect_api, fast_retry_params):
    state = transient_flow(return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == "emotion@rev"
    assert CALLS["emotion"] == 2
    (task_run,) = task_runs_of(state.state_details.flow_run_id)
    assert task_run.name.startswith("hub-download") and task_run.run_count == 2
    logs = wait_for_logs(state.state_details.flow_run_id, "transient, retrying")
    assert "ConnectionRefusedError" in logs and "transient, retrying" in logs


@pytest.mark.integration
def test_non_transient_failure_is_not_retried(prefect_api, fast_retry_params):
    state = permanent_flow(return_state=True)
    assert state.is_failed()
    assert CALLS["sst2"] == 1
    logs = wait_for_logs(state.state_details.flow_run_id, "not transient")
    assert "not transient, no retry" in logs and "no split 'train'" in logs


@pytest.mark.integration
def test_retried_stage_resumes_its_mlflow_run_instead_of_duplicating_it(prefect_api, default_params_dict, tmp_path):
    import mlflow

    from pipeline.tracking import runs as tracking

    raw = copy.deepcopy(default_params_dict)
    raw["orchestration"].update(retries=2, retry_delay_seconds=0)
    raw["common"]["mlflow_tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw["common"]["mlflow_artifact_root"] = str(tmp_path / "artifacts")
    params = parse_params(raw)
    tries: list[str] = []

    def train_and_log() -> str:
        with tracking.stage_run(
            params, "task-emotion", "bert-emotion", tmp_path / "state", {"model": "bert"}, root=tmp_path
        ) as run:
            tries.append(run.info.run_id)
            mlflow.log_metric("train_loss", 1.0 / len(tries), step=len(tries))
            if len(tries) == 1:
                raise ConnectionResetError(104, "MLflow server reset the connection (injected fault)")
            return run.info.run_id

    @flow(name="test-retry-mlflow")
    def stage_flow() -> str:
        return external_task(train_and_log, "train-and-log", params)()

    state = stage_flow(return_state=True)
    assert state.is_completed(), state.message
    assert len(tries) == 2 and tries[0] == tries[1]  # the retry resumed the same run
    runs = mlflow.search_runs(experiment_names=["task-emotion"], output_format="list")
    assert [r.info.run_id for r in runs] == [tries[0]]
    assert runs[0].info.status == "FINISHED"
    assert [m.value for m in mlflow.MlflowClient().get_metric_history(tries[0], "train_loss")] == [1.0, 0.5]


def _corrupted_emotion(root):
    """data/raw/emotion with the canonical schema but broken rows: too short, too long, leaked into test."""
    from pipeline.data.readers import FEATURES

    good = ["i feel great today", "this is a sad story", "what a surprise that was", "i am so angry now"]
    splits = {
        "train": good + ["x", "y" * 900],
        "validation": good[:2] + ["leaked test sentence here"],
        "test": good[2:] + ["leaked test sentence here"],
    }
    dsdict = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"text": texts, "label": [i % 6 for i in range(len(texts))]}, features=FEATURES["emotion"]
            )
            for split, texts in splits.items()
        }
    )
    dsdict.save_to_disk(str(root / "data" / "raw" / "emotion"))


@pytest.mark.integration
def test_data_validation_failure_fails_the_flow_with_the_gx_summary_in_its_logs(
    prefect_api, in_tmp_repo, default_params_dict, repo_root
):
    from flows.data import validate_flow

    (in_tmp_repo / "params.yaml").write_text((repo_root / "params.yaml").read_text())
    _corrupted_emotion(in_tmp_repo)

    state = validate_flow("emotion", return_state=True)

    assert state.is_failed()
    assert "DataValidationError" in state.message
    flow_run_id = state.state_details.flow_run_id
    logs = wait_for_logs(flow_run_id, "Data validation failed for dataset 'emotion'")
    assert "Data validation failed for dataset 'emotion'" in logs
    # the broken expectation, its column and an offending row are named
    assert "expect_column_value_lengths_to_be_between on column 'text'" in logs and '"text": "x"' in logs
    report = json.loads((in_tmp_repo / "data" / "validation" / "emotion.json").read_text())
    assert report["success"] is False
    (summary,) = [a for a in artifacts_with_key("validation-emotion") if a.flow_run_id == flow_run_id]
    assert "FAILED" in summary.data and "Data validation failed" in summary.data
    (table,) = [a for a in artifacts_with_key("validation-emotion-results") if a.flow_run_id == flow_run_id]
    assert any(row["success"] is False for row in json.loads(table.data))
