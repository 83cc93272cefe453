"""The compare stage: reports, champions and the MLflow parent run linked with the training runs; DVC metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from pipeline.compare.leaderboard import NOT_RUN
from pipeline.compare.report import MAIN_PLOT, SCATTER_PLOT
from pipeline.compare.stage import PARENT_TAG, compare
from pipeline.core.config import TASKS
from pipeline.tracking.runs import COMPARE_EXPERIMENT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_compare_writes_reports_and_links_mlflow_runs(compare_repo):
    scores = {"rnn": 0.35, "encdec": 0.42, "gpt": 0.55, "bert": 0.61, "minilm": 0.88}
    runs = {
        m: compare_repo.add_run("emotion", m, {"accuracy": a, "macro_f1": a - 0.1}, train_time_s=10 * (i + 1))
        for i, (m, a) in enumerate(scores.items())
    }
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
    downloaded = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="leaderboard.json")
    table = json.loads(Path(downloaded).read_text())
    assert len(table["data"]) == len(TASKS) * len(compare_repo.params.models) and "test_accuracy" in table["columns"]


def test_dvc_metrics_show_reads_comparison_json(compare_repo, tmp_path_factory):
    compare_repo.add_run("emotion", "bert", {"accuracy": 0.61, "macro_f1": 0.5})
    compare(compare_repo.params)
    repo = tmp_path_factory.mktemp("dvcrepo")
    (repo / "reports").mkdir()
    shutil.copy(compare_repo.root / "reports/comparison.json", repo / "reports/comparison.json")
    (repo / "dvc.yaml").write_text(
        "stages:\n  compare:\n    cmd: python -m flows.compare\n    metrics:\n"
        "      - reports/comparison.json:\n          cache: false\n"
    )
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
