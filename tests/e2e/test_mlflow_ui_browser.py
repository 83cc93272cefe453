"""The MLflow UI, as `make ui` serves it, shows every model of a task side by side (headless Chromium).

Builds a store with real runs of all 5 models on emotion plus the compare stage's parent run, starts
`python -m flows.ui` (an `mlflow server` on 127.0.0.1) over it, and checks three views in the browser:
the task's experiment (runs table with metric columns), the run comparison the compare stage links to,
and the compare stage's parent run. Screenshots: reports/mlflow_ui_{experiment,compare,comparison_run}.png.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from pipeline.compare import compare
from pipeline.tracking import COMPARE_EXPERIMENT, task_experiment

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TASK = "emotion"
# three decimals: the UI prints them unrounded in both the runs table and the comparison view
ACCURACY = {"rnn": 0.412, "encdec": 0.538, "gpt": 0.621, "bert": 0.687, "minilm": 0.904}
UI_TIMEOUT_MS = 120_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the MLflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    pytest.fail(f"the MLflow server did not answer {url}/health within {timeout}s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server's whole process group (mlflow server + its uvicorn worker); SIGINT is its clean stop."""
    for sig, grace in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:  # the group leader is gone; wait for its children too
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)


@pytest.fixture
def mlflow_ui(compare_repo, tmp_path):
    """A store with all 5 models on emotion and the compare stage's parent run, served by `python -m flows.ui`."""
    for i, (model, accuracy) in enumerate(ACCURACY.items()):
        compare_repo.add_run(TASK, model, {"accuracy": accuracy, "macro_f1": round(accuracy - 0.1, 3)},
                             param_count=1_000_000 * (i + 1), train_time_s=60.0 * (i + 1))
    result = compare(compare_repo.params)
    port = _free_port()
    log = tmp_path / "mlflow-server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows.ui", "--port", str(port)], cwd=compare_repo.root,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc, log)
        yield {"url": url, "parent_run_id": result["parent_run_id"], "log": log}
    finally:
        _stop(proc)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # nothing of the server is left
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


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
    from playwright.sync_api import sync_playwright

    url = mlflow_ui["url"]
    assert f"Uvicorn running on http://127.0.0.1:{url.rsplit(':', 1)[1]}" in mlflow_ui["log"].read_text()
    experiment_id = mlflow.get_experiment_by_name(task_experiment(TASK)).experiment_id
    parent = MlflowClient().get_run(mlflow_ui["parent_run_id"])
    shots = repo_root / "reports"
    shots.mkdir(exist_ok=True)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1800, "height": 1100})
            page.set_default_timeout(UI_TIMEOUT_MS)

            # 1. the task's experiment: one row per model, sorted by test accuracy, with the metric columns
            page.goto(f"{url}/#/experiments/{experiment_id}/runs?orderByKey=metrics.%60test_accuracy%60"
                      "&orderByAsc=false")
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
            for model, accuracy in ACCURACY.items():
                assert f"{TASK}.{model}.accuracy" in text, f"metric {TASK}.{model}.accuracy missing on the parent run"
            page.screenshot(path=str(shots / "mlflow_ui_comparison_run.png"))
        finally:
            browser.close()

    for view in ("experiment", "compare", "comparison_run"):
        assert (shots / f"mlflow_ui_{view}.png").stat().st_size > 20_000
