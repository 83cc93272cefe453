"""Compare stage: leaderboard from real MLflow runs + metrics files, reports, MLflow parent run, DVC metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import mlflow
import pytest
from mlflow import MlflowClient

from pipeline.compare.leaderboard import NOT_RUN, OK, PARENT_TAG, CompareError, build_leaderboard, compare
from pipeline.compare.report import MAIN_PLOT, SCATTER_PLOT
from pipeline.core.config import TASKS
from pipeline.tracking.runs import COMPARE_EXPERIMENT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(rows, task, model):
    found = [r for r in rows if r.task == task and r.model == model]
    assert len(found) == 1, f"expected one row for {model} on {task}, got {len(found)}"
    return found[0]


def test_leaderboard_covers_every_task_and_model(compare_repo):
    rnn = compare_repo.add_run("emotion", "rnn", {"accuracy": 0.41, "macro_f1": 0.22}, train_time_s=30.0)
    bert = compare_repo.add_run("emotion", "bert", {"accuracy": 0.63, "macro_f1": 0.51}, param_count=3_200_000)
    ner = compare_repo.add_run("conll2003", "minilm", {"entity_f1": 0.71, "entity_precision": 0.7,
                                                       "entity_recall": 0.72, "token_accuracy": 0.9})

    rows = build_leaderboard(compare_repo.params)

    models = list(compare_repo.params.models)
    assert {(r.task, r.model) for r in rows} == {(t, m) for t in TASKS for m in models}
    assert len(rows) == len(TASKS) * len(models) == 20
    done = {(r.task, r.model) for r in rows if r.status == OK}
    assert done == {("emotion", "rnn"), ("emotion", "bert"), ("conll2003", "minilm")}
    assert all(r.status == NOT_RUN and r.main_value is None for r in rows if (r.task, r.model) not in done)
    b = _row(rows, "emotion", "bert")
    assert (b.main_value, b.test["macro_f1"], b.param_count) == (0.63, 0.51, 3_200_000)
    assert (b.mlflow_run_id, b.registered_version, b.family, b.weight_source) == (bert.run_id, "1", "bert", "pretrain")
    r = _row(rows, "emotion", "rnn")
    assert (r.train_time_s, r.mlflow_run_id) == (30.0, rnn.run_id)
    assert _row(rows, "conll2003", "minilm").test["entity_recall"] == 0.72 and ner.version == "1"
    assert not any(r.notes for r in rows if r.status == OK)


def test_leaderboard_fills_from_mlflow_and_flags_disagreement(compare_repo):
    logged = compare_repo.add_run("sst2", "gpt", {"accuracy": 0.70, "macro_f1": 0.69},
                                  file_test={"accuracy": 0.80})
    data = json.loads(logged.metrics_file.read_text())
    del data["registered_version"], data["param_count"]  # MLflow has them
    logged.metrics_file.write_text(json.dumps(data))
    gone = compare_repo.add_run("sst2", "rnn", {"accuracy": 0.5, "macro_f1": 0.4})
    MlflowClient().delete_run(gone.run_id)
    data = json.loads(gone.metrics_file.read_text())
    data["mlflow_run_id"] = "0" * 32  # a run this store never had
    gone.metrics_file.write_text(json.dumps(data))

    rows = build_leaderboard(compare_repo.params)

    gpt = _row(rows, "sst2", "gpt")
    assert gpt.main_value == 0.80, "metrics.json (the DVC metric) stays the source of the number"
    assert any("test_accuracy=0.7" in n and "0.8" in n for n in gpt.notes), gpt.notes
    assert gpt.test["macro_f1"] == 0.69 and gpt.param_count == 50_000 and gpt.registered_version == "1"
    assert any("not in this tracking store" in n for n in _row(rows, "sst2", "rnn").notes)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"task": "emotion", "model": "gpt", "test": {"macro_f1": 0.3}}), "test.accuracy"),
        (json.dumps({"task": "sst2", "model": "gpt", "test": {"accuracy": 0.3}}), "key 'task' is 'sst2'"),
        (json.dumps({"task": "emotion", "model": "gpt", "test": {"accuracy": "high"}}), "test.accuracy: expected"),
    ],
)
def test_bad_metrics_file_is_named(compare_repo, content, expected):
    path = compare_repo.root / "data/models/gpt-emotion/metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(CompareError, match="gpt-emotion/metrics.json") as err:
        build_leaderboard(compare_repo.params)
    assert expected in str(err.value)


def test_compare_writes_reports_and_links_mlflow_runs(compare_repo):
    scores = {"rnn": 0.35, "encdec": 0.42, "gpt": 0.55, "bert": 0.61, "minilm": 0.88}
    runs = {m: compare_repo.add_run("emotion", m, {"accuracy": a, "macro_f1": a - 0.1}, train_time_s=10 * (i + 1))
            for i, (m, a) in enumerate(scores.items())}
    compare_repo.add_run("multi30k", "encdec", {"bleu": 21.5, "chrf": 48.0})

    result = compare(compare_repo.params)

    reports = compare_repo.root / "reports"
    doc = json.loads((reports / "comparison.json").read_text())
    assert set(doc) == {*TASKS, "best", "champion"}
    for task in TASKS:
        assert set(doc[task]) == set(compare_repo.params.models)
    assert doc["emotion"]["minilm"]["accuracy"] == 0.88 and doc["emotion"]["minilm"]["param_count"] == 50_000
    assert doc["sst2"]["bert"] == {"status": NOT_RUN}
    assert doc["best"]["emotion"] == {"model": "minilm", "accuracy": 0.88}
    assert doc["best"]["multi30k"] == {"model": "encdec", "bleu": 21.5}
    assert "sst2" not in doc["best"]
    assert doc["champion"]["emotion"] == {"model": "minilm", "version": "1", "accuracy": 0.88}

    md = (reports / "comparison.md").read_text()
    assert md.count("| model | family |") == len(TASKS)
    assert "| emotion | accuracy | minilm | 0.8800 | emotion-minilm v1 |" in md
    assert "| sst2 | accuracy | not run |" in md
    assert f"`{runs['bert'].run_id}`" in md and "1 (champion)" in md
    emotion_section = md.split("## emotion")[1].split("## sst2")[0]
    order = [emotion_section.index(f"| {m} |") for m in ("minilm", "bert", "gpt", "encdec", "rnn")]
    assert order == sorted(order), "rows are ranked by the main metric"
    for plot in (MAIN_PLOT, SCATTER_PLOT):
        assert f"(plots/{plot})" in md
        data = (reports / "plots" / plot).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert not [p.name for p in reports.iterdir() if p.name.startswith(".")], "no temp files left behind"

    client = MlflowClient()
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.experiment_id == mlflow.get_experiment_by_name(COMPARE_EXPERIMENT).experiment_id
    assert set(parent.data.tags["compare.runs.emotion"].split(",")) == {r.run_id for r in runs.values()}
    assert parent.data.tags["compare.ui.emotion"].startswith("#/compare-runs?runs=[")
    assert parent.data.metrics["emotion.minilm.accuracy"] == 0.88
    assert "## emotion" in parent.data.tags["mlflow.note.content"]
    for r in runs.values():
        assert client.get_run(r.run_id).data.tags[PARENT_TAG] == parent.info.run_id
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"leaderboard.json", "comparison.md", "comparison.json", "plots"} <= artifacts
    table = json.loads(open(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id,
                                                                artifact_path="leaderboard.json")).read())
    assert len(table["data"]) == 20 and "test_accuracy" in table["columns"]


def test_dvc_metrics_show_reads_comparison_json(compare_repo, tmp_path_factory):
    compare_repo.add_run("emotion", "bert", {"accuracy": 0.61, "macro_f1": 0.5})
    compare(compare_repo.params)
    repo = tmp_path_factory.mktemp("dvcrepo")
    (repo / "reports").mkdir()
    shutil.copy(compare_repo.root / "reports/comparison.json", repo / "reports/comparison.json")
    (repo / "dvc.yaml").write_text(
        "stages:\n  compare:\n    cmd: python -m flows.compare\n    metrics:\n"
        "      - reports/comparison.json:\n          cache: false\n")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*dvc, "init", "-q"], cwd=repo, check=True)

    out = subprocess.run([*dvc, "metrics", "show", "--json"], cwd=repo, check=True, capture_output=True, text=True)

    shown = json.loads(out.stdout)[""]["data"]["reports/comparison.json"]["data"]
    assert shown["emotion"]["bert"]["accuracy"] == 0.61
    assert shown["emotion"]["gpt"] == {"status": NOT_RUN}
    assert shown["best"]["emotion"] == {"model": "bert", "accuracy": 0.61}


def test_compare_before_any_run_reports_every_combination_as_not_run(compare_repo):
    result = compare(compare_repo.params)

    assert result["best"] == {} and all(r["status"] == NOT_RUN for r in result["leaderboard"])
    doc = json.loads((compare_repo.root / "reports/comparison.json").read_text())
    assert all(doc[t][m] == {"status": NOT_RUN} for t in TASKS for m in compare_repo.params.models)
    assert doc["best"] == {} and doc["champion"] == {}
    md = (compare_repo.root / "reports/comparison.md").read_text()
    assert md.count(f"| {NOT_RUN} |") >= len(TASKS) * len(compare_repo.params.models)
    assert (compare_repo.root / "reports/plots" / MAIN_PLOT).read_bytes().startswith(PNG_MAGIC)


@pytest.mark.integration
def test_compare_retried_after_a_transient_error_resumes_its_parent_run(compare_repo, monkeypatch):
    """A compare that meets a dropped MLflow connection mid-logging and is run again (what the flow's retry
    does) ends with one FINISHED parent run and one champion promotion, not two."""
    from pipeline.compare.champion import read_history

    compare_repo.add_run("emotion", "bert", {"accuracy": 0.61, "macro_f1": 0.5})
    real_log_table, calls = mlflow.log_table, []

    def flaky_log_table(*args, **kwargs):  # the fault a test cannot cause for real: a dropped connection
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionResetError(104, "MLflow server reset the connection (injected fault)")
        return real_log_table(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_table", flaky_log_table)
    with pytest.raises(ConnectionResetError):
        compare(compare_repo.params)
    result = compare(compare_repo.params)

    parents = mlflow.search_runs(experiment_names=[COMPARE_EXPERIMENT], output_format="list")
    assert [r.info.run_id for r in parents] == [result["parent_run_id"]]
    assert parents[0].info.status == "FINISHED"
    promotions = [e for e in read_history(compare_repo.params, compare_repo.root) if e.get("event") == "promote"]
    assert len(promotions) == 1, promotions
