"""The leaderboard: rows from real metrics files and real MLflow runs, cross-checked, bad files named."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from pipeline.compare.leaderboard import NOT_RUN, OK, CompareError, build_leaderboard
from pipeline.compare.report import markdown, metrics_json
from pipeline.core.config import TASKS


def _row(rows, task, model):
    found = [r for r in rows if r.task == task and r.model == model]
    assert len(found) == 1, f"expected one row for {model} on {task}, got {len(found)}"
    return found[0]


def test_leaderboard_covers_every_task_and_model(compare_repo):
    rnn = compare_repo.add_run("emotion", "rnn", {"accuracy": 0.41, "macro_f1": 0.22}, train_time_s=30.0)
    bert = compare_repo.add_run("emotion", "bert", {"accuracy": 0.63, "macro_f1": 0.51}, param_count=3_200_000)
    ner = compare_repo.add_run(
        "conll2003",
        "minilm",
        {"entity_f1": 0.71, "entity_precision": 0.7, "entity_recall": 0.72, "token_accuracy": 0.9},
    )

    rows = build_leaderboard(compare_repo.params)

    models = list(compare_repo.params.models)
    assert {(r.task, r.model) for r in rows} == {(t, m) for t in TASKS for m in models}
    assert len(rows) == len(TASKS) * len(models)
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
    logged = compare_repo.add_run("sst2", "gpt", {"accuracy": 0.70, "macro_f1": 0.69}, file_test={"accuracy": 0.80})
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


def _accuracy_items(correct: list[bool]) -> list[dict]:
    return [{"gold": i % 2, "prediction": i % 2 if ok else 1 - i % 2} for i, ok in enumerate(correct)]


def test_leaderboard_intervals_and_gains_over_the_controls(compare_repo):
    """gpt beats its scratch twin on 30 of 40 examples (significant); rnn and rnn_noattn differ on 2 examples,
    one each way (not significant). Every run with items gets a 95% interval; the report marks the gains."""
    runs = {
        "gpt": [True] * 35 + [False] * 5,
        "gpt_scratch": [True] * 5 + [False] * 35,
        "rnn": [True] * 20 + [True, False] + [False] * 18,
        "rnn_noattn": [True] * 20 + [False, True] + [False] * 18,
    }
    for model, correct in runs.items():
        acc = sum(correct) / len(correct)
        compare_repo.add_run("emotion", model, {"accuracy": acc, "macro_f1": acc}, items=_accuracy_items(correct))
    compare_repo.add_run("emotion", "bert", {"accuracy": 0.5, "macro_f1": 0.5})  # no items: no interval

    rows = build_leaderboard(compare_repo.params)

    gpt, rnn = _row(rows, "emotion", "gpt"), _row(rows, "emotion", "rnn")
    assert gpt.main_ci[0] < 35 / 40 < gpt.main_ci[1] and gpt.main_ci[1] <= 1.0
    assert gpt.transfer_gain["control"] == "gpt_scratch" and gpt.transfer_gain["gain"] == pytest.approx(0.75)
    assert gpt.transfer_gain["significant"] and gpt.transfer_gain["p_value"] < 0.01
    assert gpt.transfer_gain["low"] > 0.5 and gpt.attention_gain is None
    assert rnn.attention_gain["control"] == "rnn_noattn" and rnn.attention_gain["gain"] == 0.0
    assert not rnn.attention_gain["significant"] and rnn.attention_gain["p_value"] == 1.0
    assert _row(rows, "emotion", "bert").main_ci is None and _row(rows, "emotion", "bert").transfer_gain is None
    assert _row(rows, "emotion", "gpt_scratch").transfer_gain is None  # the control itself has no gain

    text = markdown(rows, {}, [])
    assert "| 95% CI | transfer gain | attention gain |" in text
    assert "| emotion | gpt | transfer gain | gpt_scratch | +0.7500 |" in text and "| yes * |" in text
    assert "| emotion | rnn | attention gain | rnn_noattn | +0.0000 |" in text
    gpt_line = next(line for line in text.splitlines() if line.startswith("| gpt | "))
    assert "+0.7500 * [" in gpt_line and "vs gpt_scratch" in gpt_line
    cell = metrics_json(rows, {})["emotion"]["gpt"]
    assert cell["accuracy_ci_low"] == gpt.main_ci[0] and cell["transfer_gain"] == pytest.approx(0.75)
    assert "transfer_gain" not in metrics_json(rows, {})["emotion"]["gpt_scratch"]


def test_a_significant_negative_gain_says_the_control_did_better():
    from pipeline.compare.report import _significance_cell

    assert _significance_cell({"gain": -0.07, "significant": True}) == "yes * (control better)"
    assert _significance_cell({"gain": 0.12, "significant": True}) == "yes *"
    assert _significance_cell({"gain": -0.01, "significant": False}) == "no"
