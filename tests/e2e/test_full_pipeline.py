"""`make run` end to end: every stage of dvc.yaml on the real mirror, with the smoke profile (profiles/smoke.yaml).

A copy of the repository in tmp runs `python -m flows.run_pipeline` with HT_PROFILE=smoke (what `make run
PROFILE=smoke` runs) against the shared test Prefect server. Checks: all stages run (dvc.lock holds the smoke
values); the leaderboard covers every task x model; each task has a `champion`; every registered model loads
through `mlflow.pyfunc` and answers in its task's natural form; the MLflow UI
(`make ui`) over this store lists every model of a task and opens the compare stage's side-by-side view; a second
`make run` changes nothing. Quality floors live in the per-model tests (tests/pipeline): smoke training is a
few steps, so here only the plumbing is checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk

from flows.ui import UI_MODEL_TRAINING_QUERY
from pipeline.core.config import TASK_SPECS, TASKS
from pipeline.core.processes import free_port
from pipeline.core.profiles import PROFILE_ENV
from tests.fixtures.browser import assert_server_gone, chromium_page, stop_group, wait_http_ok
from tests.fixtures.dvc_repo import RAN, copy_repo, git, pipeline_env

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(3000)]

MODELS = ("rnn", "encdec", "gpt", "bert", "minilm", "rnn_noattn", "gpt_scratch", "bert_scratch", "minilm_scratch")


def make_run(repo: Path, env: dict, timeout: float = 2400) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "flows.run_pipeline"], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"make run failed ({proc.returncode}):\n{output[-8000:]}"
    return output


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, repo_root, mirror_dir, prefect_server):
    repo = copy_repo(repo_root, tmp_path_factory.mktemp("full") / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ingest"]["mirror_dir"] = str(mirror_dir)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(repo, "commit", "-qam", "the mirror's path")
    env = {**pipeline_env(prefect_server), PROFILE_ENV: "smoke"}
    env.pop("HT_ALLOW_DIRTY", None)  # the copy is committed: `make run` registers without being told to
    output = make_run(repo, env)
    return {"repo": repo, "env": env, "output": output}


@contextlib.contextmanager
def store_of(repo: Path):
    """The run's MLflow store for tracking *and* registry (an earlier test in this process may have pinned the
    registry URI to its own store), reset afterwards."""
    import mlflow

    uri = f"sqlite:///{repo / 'mlflow' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # MLflow exports them; conftest starts without
            os.environ.pop(key, None)


def _stages(repo: Path) -> set[str]:
    return set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"])


def test_make_run_reproduces_every_stage_and_fills_the_leaderboard(pipeline_run):
    repo, output = pipeline_run["repo"], pipeline_run["output"]
    ran = set(RAN.findall(output))
    assert ran == _stages(repo), sorted(ran)  # every stage of dvc.yaml, params (writes params.effective.yaml) too
    assert "Pipeline done in" in output and "Leaderboard :" in output
    best_emotion = r"^  emotion +accuracy [0-9.]+ \(\w+\) +(\w+ v\d+|-)$"  # the closing best-per-task lines
    assert re.search(best_emotion, output, re.M), output[-3000:]
    assert yaml.safe_load((repo / "params.effective.yaml").read_text())["profile"] == "smoke"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert lock["prepare@emotion"]["params"]["params.effective.yaml"]["prepare.tasks.emotion"]["max_train"] == 200

    board = json.loads((repo / "reports" / "comparison.json").read_text())
    for task in TASKS:
        for model in MODELS:
            row = board[task][model]
            assert row.get("status", "ok") != "not run", f"{model} on {task} missing from the leaderboard: {row}"
            assert row["param_count"] > 0 and row["train_time_s"] > 0
        assert board["champion"][task]["model"] in MODELS
    md = (repo / "reports" / "comparison.md").read_text()
    assert "not run" not in md.split("## Plots")[0]
    for task in TASKS:  # every run wrote its test items: intervals, and the gains over the controls
        for model in MODELS:
            main = next(k for k in board[task][model] if k.endswith("_ci_low"))
            assert board[task][model][main] <= board[task][model][main.removesuffix("_ci_low") + "_ci_high"]
        for model, field in (("gpt", "transfer_gain"), ("bert", "transfer_gain"), ("rnn", "attention_gain")):
            assert f"{field}_p_value" in board[task][model], (task, model)
    assert "## Gains over the controls" in md


def test_every_registered_model_loads_and_each_task_has_a_champion(pipeline_run):
    import mlflow
    from mlflow import MlflowClient

    repo = pipeline_run["repo"]
    with store_of(repo):
        client = MlflowClient()
        board = json.loads((repo / "reports" / "comparison.json").read_text())
        for task in TASKS:
            kind = TASK_SPECS[task].kind
            champion = board["champion"][task]
            version = client.get_model_version_by_alias(f"{task}-{champion['model']}", "champion")
            assert str(version.version) == str(champion["version"])
            served = client.get_model_version_by_alias(task, "champion")  # `<task>@champion`: the leader's copy
            assert (served.tags["champion.source_model"], served.tags["champion.source_version"]) == (
                f"{task}-{champion['model']}",
                str(champion["version"]),
            )
            assert served.source == version.source
            for model in MODELS:
                loaded = mlflow.pyfunc.load_model(f"models:/{task}-{model}/1")
                if kind == "qa":  # every family: [{"answer", "score"}] for {"question", "context"} rows
                    row = {"question": "Who lives in Berlin?", "context": "John Smith lives in Berlin."}
                    (answer,) = loaded.predict([row])
                    assert set(answer) == {"answer", "score"} and isinstance(answer["answer"], str), (task, model)
                    continue
                text = {
                    "ner": "John Smith lives in Berlin",
                    "translation": "A man is riding a bike.",
                    "summarization": "Amanda: I baked cookies. Do you want some?\nJerry: Sure!",
                }.get(kind, "i feel wonderful today")
                predicted = loaded.predict([text])
                if kind == "classification":  # every family: [{"label", "score"}]
                    label = predicted[0]["label"]
                    names = load_from_disk(str(repo / "data" / "prepared" / task))["train"].features["label"].names
                    assert label in names, f"{task}-{model} answered {predicted!r}"
                elif kind == "ner":
                    (entities,) = predicted
                    assert isinstance(entities, list) and all(
                        {"entity", "word", "start", "end"} <= set(e) for e in entities
                    ), f"{task}-{model}: {entities!r}"
                else:  # translation, summarization: the output text
                    (output,) = predicted
                    assert isinstance(output, str), f"{task}-{model}: {output!r}"


def test_mlflow_ui_over_the_run_shows_the_models_side_by_side_and_the_registry(pipeline_run, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    repo, task = pipeline_run["repo"], "emotion"
    with store_of(repo):
        parent = MlflowClient().search_runs([mlflow.get_experiment_by_name("comparison").experiment_id], max_results=1)[
            0
        ]
        experiment_id = mlflow.get_experiment_by_name(f"task-{task}").experiment_id
    port, log = free_port(), tmp_path / "ui.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.ui", "--port", str(port)],
            cwd=repo,
            env=pipeline_run["env"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/health", proc, log, "make ui's MLflow server")
        with chromium_page({"width": 1800, "height": 1100}, 120_000) as page:
            page.goto(f"{url}/#/experiments/{experiment_id}?{UI_MODEL_TRAINING_QUERY}")  # the link `make ui` prints
            page.wait_for_selector(f"text=minilm-{task}")
            text = page.inner_text("body")
            for model in MODELS:
                assert f"{model}-{task}" in text, f"run {model}-{task} is not on the experiment page"
            page.goto(f"{url}/{parent.data.tags[f'compare.ui.{task}']}")
            page.wait_for_selector(f"text=Comparing {len(MODELS)} Runs")
            text = page.inner_text("body")
            assert "test_accuracy" in text and all(f"{m}-{task}" in text for m in MODELS)
            page.screenshot(path=str(tmp_path / "compare.png"))
            page.goto(f"{url}/#/models")  # the registry: every <task>-<model>, found by its search (pages of 25)
            missing = []
            for t in TASKS:
                search = page.get_by_placeholder("Search registered models")
                search.fill(t)
                search.press("Enter")
                page.wait_for_selector(f"text={t}-minilm")
                text = page.inner_text("body")
                missing += [f"{t}-{m}" for m in MODELS if f"{t}-{m}" not in text]
            assert not missing, f"registered models not listed in the UI: {missing}"
    finally:
        stop_group(proc)
    assert_server_gone(proc, port)


def test_second_make_run_changes_nothing(pipeline_run):
    output = make_run(pipeline_run["repo"], pipeline_run["env"], timeout=600)
    assert not RAN.findall(output), output[-4000:]
    assert "nothing changed" in output


def test_an_override_makes_only_its_stage_and_its_scratch_twins_out_of_date(pipeline_run):
    """Each training stage lists its own runs.<model>-<task>: editing train.overrides.bert-emotion leaves every
    other stage of the finished run up to date (a control trains with its twin's override, so it follows)."""
    from flows.parallel_repro import dvc_status

    repo, env = pipeline_run["repo"], pipeline_run["env"]
    original = (repo / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["train"]["overrides"]["bert-emotion"]["learning_rate"] = 0.000123
    try:
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        subprocess.run([sys.executable, "-m", "flows.params"], cwd=repo, env=env, check=True, capture_output=True)
        assert set(dvc_status(repo, env)) == {"params", "finetune@bert-emotion", "scratch@bert_scratch-emotion"}
    finally:
        (repo / "params.yaml").write_text(original)
        subprocess.run([sys.executable, "-m", "flows.params"], cwd=repo, env=env, check=True, capture_output=True)
    assert dvc_status(repo, env) == {}


def test_a_registered_version_records_its_lineage_and_make_reproduce_rebuilds_it(pipeline_run):
    """The run was made from a committed tree: its lineage is complete, and `make reproduce` rebuilds the
    version in a worktree at its commit and gets the identical test metric (CPU, same seed and threads)."""
    from mlflow import MlflowClient

    repo, env = pipeline_run["repo"], pipeline_run["env"]
    champion = json.loads((repo / "reports" / "comparison.json").read_text())["champion"]["emotion"]
    name = f"emotion-{champion['model']}"  # the best smoke model: a metric above 0 to compare
    with store_of(repo):
        version = MlflowClient().get_model_version(name, str(champion["version"]))
        tags = MlflowClient().get_run(version.run_id).data.tags
    assert tags["git_dirty"] == "false" and tags["profile"] == "smoke" and len(tags["params_hash"]) == 16
    assert "dvc.data/prepared/emotion" in tags
    proc = subprocess.run(
        [sys.executable, "-m", "flows.reproduce", name, str(champion["version"])],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "-> identical" in output and "input differs" not in output, output[-3000:]
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=repo, capture_output=True, text=True).stdout
    assert len(worktrees.strip().splitlines()) == 1, worktrees  # the temp worktree is gone
