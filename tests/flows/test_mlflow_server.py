"""The pipeline against a team-style MLflow server (PostgreSQL backend store, proxied artifacts): train, compare,
champion promotion, registry lookups, loading through models:/, rollback. Real server, real database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.compare.champion import BLOCKED_TAG, CHAMPION_ALIAS, rollback
from pipeline.compare.stage import compare
from pipeline.tracking.runs import configure, task_experiment, tracking_uri
from pipeline.train.driver import train


@pytest.mark.integration
@pytest.mark.slow
def test_train_compare_promote_load_and_roll_back_on_a_postgres_mlflow_server(
    mlflow_server, mlflow_server_uri, t2t_repo, t2t_params
):
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    params = t2t_params("rnn", "emotion", epochs=1, learning_rate=0.005, batch_size=64, max_steps=8)
    assert params.common.mlflow_tracking_uri.startswith("sqlite:")
    assert tracking_uri(params) == mlflow_server_uri == configure(params)  # the env var wins over params

    summary = train("rnn", "emotion", params)
    assert summary["registered_version"] == "1"
    client = MlflowClient()
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts go through the server"
    assert client.get_experiment(run.info.experiment_id).name == task_experiment("emotion")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "plots"} <= artifacts
    stored = Path(mlflow_server.artifacts)
    assert list(stored.rglob("metrics.json")), "the server stored the artifacts in its destination folder"
    assert not (t2t_repo / "mlflow").exists(), "nothing went to the params' local SQLite store"

    result = compare(params)
    assert result["champions"]["emotion"]["models"]["emotion-rnn"]["champion_version"] == "1"
    board = json.loads((t2t_repo / "reports" / "comparison.json").read_text())
    assert board["emotion"]["rnn"]["accuracy"] == pytest.approx(summary["test"]["accuracy"])
    assert board["champion"]["emotion"]["model"] == "rnn"
    parent = client.get_run(result["parent_run_id"])
    assert parent.data.tags["compare.runs.emotion"] == summary["mlflow_run_id"]

    # registry lookups, and the champion loads from the server by alias
    assert client.get_registered_model("emotion-rnn").aliases == {CHAMPION_ALIAS: "1"}
    assert [v.version for v in client.search_model_versions("name='emotion-rnn'")] == ["1"]
    assert client.get_model_version_by_alias("emotion-rnn", CHAMPION_ALIAS).run_id == summary["mlflow_run_id"]
    champion = mlflow.pyfunc.load_model(f"models:/emotion-rnn@{CHAMPION_ALIAS}")
    texts = ["i feel wonderful today", "this makes me so angry"]
    labels = champion.predict(pd.DataFrame({"text": texts}))
    assert len(labels) == 2 and labels == champion.predict(texts)

    event = rollback("emotion-rnn", params)
    assert (event["old_version"], event["new_version"]) == ("1", None)
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("emotion-rnn", CHAMPION_ALIAS)
    assert BLOCKED_TAG in client.get_model_version("emotion-rnn", "1").tags
    again = compare(params)  # a rolled-back version is not promoted again
    assert again["champions"]["emotion"]["models"]["emotion-rnn"]["champion_version"] is None
    assert mlflow.pyfunc.load_model("models:/emotion-rnn/1").predict(texts) == labels


@pytest.mark.integration
def test_the_throwaway_cluster_listens_only_on_its_socket_and_trusts_only_its_user(mlflow_server):
    import stat

    import psycopg

    cluster = mlflow_server.cluster
    assert stat.S_IMODE(cluster.socket_dir.stat().st_mode) == 0o700
    assert "127.0.0.1" in mlflow_server.url
    with cluster._connect("mlflow") as conn:
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == ""  # no TCP at all
        conn.execute("CREATE ROLE intruder LOGIN")
    with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry"):
        psycopg.connect(host=str(cluster.socket_dir), port=cluster.port, user="intruder", dbname="mlflow")


@pytest.mark.integration
@pytest.mark.slow
def test_fine_tuning_logs_registers_and_serves_through_the_server(
    mlflow_server_uri, pretrained_repo, memorization_rows_by_task, default_params_dict
):
    """A pretrained transformer (the tiny GPT) fine-tuned against the server: its weights go through the proxied
    artifact store, and the registered version loads back from it and answers."""
    import mlflow
    from mlflow import MlflowClient

    from pipeline.core.config import parse_params
    from tests.fixtures.finetune import finetune_params, memorization_split, write_prepared

    rows = memorization_rows_by_task["emotion"]
    write_prepared(pretrained_repo, "emotion", memorization_split("gpt", "emotion", rows))
    params = parse_params(finetune_params(pretrained_repo, default_params_dict, "gpt", "emotion"))
    assert configure(params) == mlflow_server_uri
    summary = train("gpt", "emotion", params)
    version = MlflowClient().get_model_version("emotion-gpt", summary["registered_version"])
    assert MlflowClient().get_run(version.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    served = mlflow.pyfunc.load_model(f"models:/emotion-gpt/{summary['registered_version']}")
    predicted = served.predict(list(rows["text"]))
    names = rows.features["label"].names
    accuracy = sum(p["label"] == names[y] for p, y in zip(predicted, rows["label"])) / len(rows)
    assert accuracy == pytest.approx(summary["test"]["accuracy"])  # the same weights as scored
    assert not (pretrained_repo / "mlflow").exists(), "nothing went to the params' local SQLite store"
