"""Summarization's own parts: the lead baseline (choice of n on validation) and the examples table."""

from __future__ import annotations

import json

import datasets
import pytest

from pipeline.core.metrics import summarization_metrics
from pipeline.train.baseline import LEAD_WORDS, lead, lead_baseline
from pipeline.train.examples import (
    EXAMPLES_FILE,
    example_rows,
    gather_examples,
    read_examples,
    run_examples,
    write_examples,
)

DIALOGUES = [
    "Anna: the meeting moves to friday at noon\nTom: ok thanks, I will tell the others and bring the slides",
    "Bob: can you buy milk and bread on the way home\nEve: sure, anything else? Bob: no that is all",
]
SUMMARIES = ["the meeting moves to friday at noon", "can you buy milk and bread"]


def test_lead_takes_the_first_words_across_turns():
    assert lead("Anna: hi there\nTom: hello you", 4) == "Anna: hi there Tom:"
    assert lead("short", 10) == "short" and lead("", 3) == ""


def test_lead_baseline_picks_the_length_that_scores_best_on_validation():
    choice = lead_baseline(DIALOGUES, SUMMARIES, candidates=[2, 7, 8, 30])
    # 7-8 leading words hold the whole reference plus the speaker; 2 misses most, 30 adds too much
    assert choice.words in (7, 8)
    assert set(choice.by_words) == {2, 7, 8, 30} and choice.by_words[choice.words] == max(choice.by_words.values())
    expected = summarization_metrics(SUMMARIES, [lead(d, choice.words) for d in DIALOGUES])
    assert choice.validation == pytest.approx(expected)
    assert choice.by_words[30] < choice.validation["rouge1"] and choice.by_words[2] < choice.validation["rouge1"]


def test_lead_baseline_breaks_ties_by_the_shortest_and_refuses_bad_input():
    # one-word dialogues: every n gives the same summary
    assert lead_baseline(["hello"], ["hello"], candidates=[9, 3, 5]).words == 3
    assert min(LEAD_WORDS) >= 1
    with pytest.raises(ValueError, match="positive word counts"):
        lead_baseline(DIALOGUES, SUMMARIES, candidates=[0, 5])
    with pytest.raises(ValueError, match="at least one"):
        lead_baseline([], [])


def test_examples_are_written_read_back_and_gathered_side_by_side(tmp_path):
    test = datasets.Dataset.from_dict({"id": ["a", "b"], "dialogue": DIALOGUES, "summary": SUMMARIES})
    items = {
        "gpt": [{"gold": s, "prediction": f"gpt says {i}"} for i, s in enumerate(SUMMARIES)],
        "rnn": [{"gold": s, "prediction": f"rnn says {i}"} for i, s in enumerate(SUMMARIES)],
    }
    for model, its in items.items():
        rows = run_examples("summarization", test, its, n=5)
        assert [r["index"] for r in rows] == [0, 1] and rows[1]["source"] == DIALOGUES[1]
        assert rows[0]["reference"] == SUMMARIES[0] and rows[0]["output"] == f"{model} says 0"
        path = tmp_path / "data" / "models" / f"{model}-samsum" / EXAMPLES_FILE
        write_examples(path, rows)
        assert read_examples(path) == rows
        assert all(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
    gathered = gather_examples("samsum", ["gpt", "bert", "rnn"], tmp_path)  # bert has no file: left out
    assert [g["index"] for g in gathered] == [0, 1]
    assert gathered[0]["source"] == DIALOGUES[0] and gathered[0]["reference"] == SUMMARIES[0]
    assert gathered[1]["outputs"] == {"gpt": "gpt says 1", "rnn": "rnn says 1"}
    assert run_examples("classification", test, items["gpt"]) == []  # only kinds that write text


def test_example_rows_check_lengths_and_a_bad_file_names_its_line(tmp_path):
    with pytest.raises(ValueError, match="2 sources, 1 references"):
        example_rows(DIALOGUES, SUMMARIES[:1], SUMMARIES)
    bad = tmp_path / EXAMPLES_FILE
    bad.write_text('{"index": 0, "source": "s", "reference": "r", "output": "o"}\n{"index": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 2 lacks \['source', 'reference', 'output'\]"):
        read_examples(bad)


# ---------------------------------------------------------------- the baseline stage (real rows, real MLflow store)
def _samsum_rows(name: str, n: int) -> datasets.Dataset:
    import zipfile

    from tests.fixtures.models import MIRROR

    with zipfile.ZipFile(MIRROR / "samsum" / "samsum.zip") as z:
        rows = json.loads(z.read(f"samsum/{name}.json"))[:n]
    return datasets.Dataset.from_list(
        [{"id": r["id"], "dialogue": r["dialogue"].replace("\r\n", "\n"), "summary": r["summary"]} for r in rows]
    )


@pytest.mark.integration
def test_lead_baseline_stage_writes_metrics_logs_a_run_registers_nothing_and_shows_on_the_leaderboard(
    in_tmp_repo, default_params_dict
):
    import copy

    from mlflow import MlflowClient

    from pipeline.compare.leaderboard import OK, build_leaderboard
    from pipeline.core.config import parse_params
    from pipeline.tracking.runs import task_experiment
    from pipeline.train.baseline import run_lead_baseline

    raw = copy.deepcopy(default_params_dict)
    raw["common"]["mlflow_tracking_uri"] = f"sqlite:///{in_tmp_repo / 'mlflow.db'}"
    raw["common"]["mlflow_artifact_root"] = str(in_tmp_repo / "mlartifacts")
    params = parse_params(raw)
    data = datasets.DatasetDict(
        {"train": _samsum_rows("train", 10), "validation": _samsum_rows("val", 40), "test": _samsum_rows("test", 30)}
    )
    data.save_to_disk(str(in_tmp_repo / "data" / "prepared" / "samsum"))

    summary = run_lead_baseline("samsum", params)

    written = json.loads((in_tmp_repo / "data" / "models" / "lead-samsum" / "metrics.json").read_text())
    assert written == summary and (summary["model"], summary["family"]) == ("lead", "baseline")
    assert summary["lead_words"] in LEAD_WORDS and summary["registered_version"] is None
    expected = summarization_metrics(
        data["test"]["summary"], [lead(d, summary["lead_words"]) for d in data["test"]["dialogue"]]
    )
    assert summary["test"] == pytest.approx(expected) and 5 < summary["test"]["rouge1"] < 60
    client = MlflowClient()
    [run] = client.search_runs([client.get_experiment_by_name(task_experiment("samsum")).experiment_id])
    assert run.info.run_id == summary["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["family"] == "baseline" and run.data.params["lead_words"] == str(summary["lead_words"])
    assert run.data.metrics["test_rouge1"] == pytest.approx(summary["test"]["rouge1"])
    assert client.search_registered_models() == []

    [row] = [r for r in build_leaderboard(params, in_tmp_repo) if r.model == "lead"]
    assert (row.task, row.status, row.family) == ("samsum", OK, "baseline")
    assert row.main_value == pytest.approx(summary["test"]["rouge1"]) and not row.notes
    assert row.main_ci[0] <= row.main_value <= row.main_ci[1]  # from its test_items.jsonl
