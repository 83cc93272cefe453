"""The MLflow UI, as `make ui` serves it, shows every model of a task side by side (headless Chromium).

Builds a store with real runs of all 5 models on emotion plus the compare stage's parent run, starts
`python -m flows.ui` (an `mlflow server` on 127.0.0.1) over it, and checks four views in the browser:
the task's experiment as it opens by default (its runs, as a model-training experiment: tag mlflow.experimentKind,
not MLflow 3's GenAI overview), the runs table with metric columns, the run comparison the compare stage links to,
and the compare stage's parent run. Screenshots: reports/mlflow_ui_{experiment,compare,comparison_run}.png.
"""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest
from mlflow import MlflowClient

from flows.ui import UI_MODEL_TRAINING_QUERY
from pipeline.compare.stage import compare
from pipeline.core.processes import free_port
from pipeline.tracking.runs import COMPARE_EXPERIMENT, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, task_experiment
from tests.fixtures.browser import assert_server_gone, chromium_page, stop_group, wait_http_ok

pytestmark = pytest.mark.integration

TASK = "emotion"
# three decimals: the UI prints them unrounded in both the runs table and the comparison view
ACCURACY = {"rnn": 0.412, "encdec": 0.538, "gpt": 0.621, "bert": 0.687, "minilm": 0.904}
UI_TIMEOUT_MS = 120_000


@pytest.fixture
def mlflow_ui(compare_repo, tmp_path):
    """A store with all 5 models on emotion and the compare stage's parent run, served by `python -m flows.ui`."""
    for i, (model, accuracy) in enumerate(ACCURACY.items()):
        compare_repo.add_run(
            TASK,
            model,
            {"accuracy": accuracy, "macro_f1": round(accuracy - 0.1, 3)},
            param_count=1_000_000 * (i + 1),
            train_time_s=60.0 * (i + 1),
        )
    result = compare(compare_repo.params)
    port = free_port()
    log = tmp_path / "mlflow-server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.ui", "--port", str(port)],
            cwd=compare_repo.root,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/health", proc, log, "the MLflow server")
        yield {"url": url, "parent_run_id": result["parent_run_id"], "log": log}
    finally:
        stop_group(proc)
    assert_server_gone(proc, port)


def _close_assistant(page) -> None:
    """MLflow 3 opens an assistant side panel that hides part of the page."""
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count():
        close.first.click()


def _show_metric_columns(page, names: list[str]) -> None:
    page.get_by_role("button", name="Columns", exact=True).click()
    dialog = page.get_by_role("dialog")
    for name in names:
        dialog.get_by_text(name, exact=True).click()
    page.keyboard.press("Escape")


def test_mlflow_ui_shows_all_models_of_a_task(mlflow_ui, repo_root):
    url = mlflow_ui["url"]
    assert f"Uvicorn running on http://127.0.0.1:{url.rsplit(':', 1)[1]}" in mlflow_ui["log"].read_text()
    experiment_id = mlflow.get_experiment_by_name(task_experiment(TASK)).experiment_id
    parent = MlflowClient().get_run(mlflow_ui["parent_run_id"])
    shots = repo_root / "reports"
    shots.mkdir(exist_ok=True)

    with chromium_page({"width": 1800, "height": 1100}, UI_TIMEOUT_MS) as page:
        # 0. the task's experiment opens on its runs (model training), not on the GenAI overview. The experiment
        # carries the experiment-kind tag; MLflow 3.17's UI decides by its sidebar switch (workflowType, kept in
        # the browser, GenAI by default), so `make ui` prints the link that selects model training.
        experiment = MlflowClient().get_experiment(experiment_id)
        assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
        page.goto(f"{url}/#/experiments/{experiment_id}?{UI_MODEL_TRAINING_QUERY}")
        page.wait_for_selector("text=minilm-emotion")
        _close_assistant(page)
        assert "/runs" in page.evaluate("location.hash"), page.evaluate("location.href")
        text = page.inner_text("body")
        assert "5 matching runs" in text and all(f"{m}-{TASK}" in text for m in ACCURACY)
        assert "Overview" not in text.split("task-emotion")[1].split("Experiments")[0], "GenAI side menu shown"

        # 1. the task's experiment: one row per model, sorted by test accuracy, with the metric columns
        page.goto(f"{url}/#/experiments/{experiment_id}/runs?orderByKey=metrics.%60test_accuracy%60&orderByAsc=false")
        page.wait_for_selector("text=minilm-emotion")
        _close_assistant(page)
        _show_metric_columns(page, ["test_accuracy", "test_macro_f1", "param_count", "train_time_s"])
        page.wait_for_selector(f"text={ACCURACY['minilm']}")
        text = page.inner_text("body")
        for model, accuracy in ACCURACY.items():
            assert f"{model}-{TASK}" in text, f"run {model}-{TASK} is not on the experiment page"
            assert str(accuracy) in text, f"test_accuracy {accuracy} of {model} is not on the experiment page"
            assert f"{TASK}-{model}" in text, f"registered model {TASK}-{model} is not linked from its run"
        assert "5 matching runs" in text
        page.screenshot(path=str(shots / "mlflow_ui_experiment.png"))

        # 2. the side-by-side comparison the compare stage links to from its parent run
        page.goto(f"{url}/{parent.data.tags[f'compare.ui.{TASK}']}")
        page.wait_for_selector("text=Comparing 5 Runs")
        page.wait_for_selector(".js-plotly-plot")
        _close_assistant(page)
        text = page.inner_text("body")
        for model, accuracy in ACCURACY.items():
            assert f"{model}-{TASK}" in text and str(accuracy) in text, f"{model} missing from the comparison"
        assert "test_accuracy" in text and "compare.parent_run_id" in text
        page.set_viewport_size({"width": 1800, "height": 2000})
        page.screenshot(path=str(shots / "mlflow_ui_compare.png"))

        # 3. the compare stage's parent run: the leaderboard as its description
        page.set_viewport_size({"width": 1800, "height": 1100})
        compare_exp = mlflow.get_experiment_by_name(COMPARE_EXPERIMENT).experiment_id
        page.goto(f"{url}/#/experiments/{compare_exp}/runs/{parent.info.run_id}")
        page.wait_for_selector("text=Best model per task")
        _close_assistant(page)
        page.get_by_text("Show more", exact=True).click()  # expand the description
        page.wait_for_selector(f"text={TASK} (main metric: accuracy)")
        text = page.inner_text("body")
        assert f"{TASK}\taccuracy\tminilm\t0.9040\t{TASK}-minilm v1" in text, "best-per-task row missing"
        for model in ACCURACY:
            assert f"{TASK}.{model}.accuracy" in text, f"metric {TASK}.{model}.accuracy missing on the parent run"
        page.screenshot(path=str(shots / "mlflow_ui_comparison_run.png"))

    for view in ("experiment", "compare", "comparison_run"):
        assert (shots / f"mlflow_ui_{view}.png").stat().st_size > 20_000
