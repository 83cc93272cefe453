"""Champion aliases: metric-gated promotion, task leader, append-only history, rollback (real MLflow registry)."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.compare.champion import (
    BLOCKED_TAG,
    CHAMPION_ALIAS,
    EVENTS_DIR,
    HISTORY_EXPERIMENT,
    LEADER_TAG,
    PROMOTED_TAG,
    SOURCE_MODEL_TAG,
    SOURCE_VERSION_TAG,
    TASK_TAG,
    ChampionError,
    read_history,
    rollback,
    update_champions,
)
from pipeline.core.config import parse_params


def _alias(name: str) -> str | None:
    try:
        return str(MlflowClient().get_model_version_by_alias(name, CHAMPION_ALIAS).version)
    except MlflowException:
        return None


def _leader(task: str, models) -> list[str]:
    client = MlflowClient()
    names = [f"{task}-{m}" for m in models]
    return [n for n in names if client.get_registered_model(n).tags.get(LEADER_TAG) == "true"]


def _acc(value: float) -> dict:
    return {"accuracy": value, "macro_f1": value - 0.05}


def test_alias_moves_only_on_improvement_and_every_move_is_recorded(compare_repo):
    params = compare_repo.params
    compare_repo.add_run("emotion", "bert", _acc(0.60))
    state = update_champions(params, tasks=("emotion",))
    assert _alias("emotion-bert") == "1"
    assert state["emotion"]["models"]["emotion-bert"] == {
        "champion_version": "1",
        "metric_value": 0.60,
        "moved": True,
        "reason": "first champion",
    }

    compare_repo.add_run("emotion", "bert", _acc(0.55))  # worse: v2 must not take the alias
    state = update_champions(params, tasks=("emotion",))
    assert _alias("emotion-bert") == "1"
    assert state["emotion"]["models"]["emotion-bert"]["moved"] is False

    compare_repo.add_run("emotion", "bert", _acc(0.65))  # better: v3 takes it
    update_champions(params, tasks=("emotion",))
    assert _alias("emotion-bert") == "3"

    promotions = [e for e in read_history(params) if e["event"] == "promote"]
    assert [(e["old_version"], e["new_version"]) for e in promotions] == [(None, "1"), ("1", "3")]
    second = promotions[1]
    assert (second["old_metric"], second["new_metric"], second["metric"]) == (0.60, 0.65, "accuracy")
    assert all(
        e["registered_model"] == "emotion-bert" and e["alias"] == CHAMPION_ALIAS and e["time"] for e in promotions
    )
    # the history is in MLflow: one run per task in experiment `champions`, one JSON artifact per event
    client = MlflowClient()
    [ledger] = client.search_runs([client.get_experiment_by_name(HISTORY_EXPERIMENT).experiment_id])
    assert ledger.data.tags[TASK_TAG] == "emotion" and ledger.info.run_name == "champions-emotion"
    files = [f.path for f in client.list_artifacts(ledger.info.run_id, EVENTS_DIR)]
    assert len(files) == len(read_history(params)) and all(f.endswith(".json") for f in files)
    assert [m.value for m in client.get_metric_history(ledger.info.run_id, "champion/emotion-bert")] == [0.60, 0.65]
    assert PROMOTED_TAG in client.get_model_version("emotion-bert", "3").tags
    assert not (compare_repo.root / "mlflow" / "champion_history.jsonl").exists()

    champion = mlflow.pyfunc.load_model(f"models:/emotion-bert@{CHAMPION_ALIAS}")  # a real, loadable model
    assert champion.metadata.run_id == MlflowClient().get_model_version("emotion-bert", "3").run_id


def test_min_improvement_gates_the_move(compare_repo, default_params_dict):
    raw = json.loads(json.dumps(default_params_dict))
    raw["compare"]["min_improvement"] = 0.05
    params = parse_params(raw)
    compare_repo.add_run("sst2", "minilm", _acc(0.80))
    compare_repo.add_run("sst2", "minilm", _acc(0.84))  # +0.04: not enough
    update_champions(params, tasks=("sst2",))
    assert _alias("sst2-minilm") == "2", "the first champion is simply the best version"
    compare_repo.add_run("sst2", "minilm", _acc(0.88))  # +0.04 over v2 again: no move
    state = update_champions(params, tasks=("sst2",))
    assert _alias("sst2-minilm") == "2"
    assert "does not beat the champion by more than 0.05" in state["sst2"]["models"]["sst2-minilm"]["reason"]
    compare_repo.add_run("sst2", "minilm", _acc(0.90))  # +0.06
    update_champions(params, tasks=("sst2",))
    assert _alias("sst2-minilm") == "4"


def test_rollback_restores_previous_version_blocks_it_and_is_recorded(compare_repo):
    params = compare_repo.params
    compare_repo.add_run("conll2003", "bert", {"entity_f1": 0.50})
    update_champions(params, tasks=("conll2003",))
    compare_repo.add_run("conll2003", "bert", {"entity_f1": 0.70})
    update_champions(params, tasks=("conll2003",))
    assert _alias("conll2003-bert") == "2"

    event = rollback("conll2003-bert", params)

    assert _alias("conll2003-bert") == "1"
    assert (event["event"], event["old_version"], event["new_version"]) == ("rollback", "2", "1")
    assert (event["old_metric"], event["new_metric"]) == (0.70, 0.50)
    history = read_history(params)
    promotions = [e for e in history if e["event"] == "promote"]
    # the rollback, then `conll2003@champion` following the task leader's (rolled back) champion
    assert [e["event"] for e in history][-2:] == ["rollback", "task_champion"]
    assert history[-2]["undoes"] == promotions[-1]["id"]
    assert BLOCKED_TAG in MlflowClient().get_model_version("conll2003-bert", "2").tags

    update_champions(params, tasks=("conll2003",))
    assert _alias("conll2003-bert") == "1", "a rolled-back version is not promoted again"

    rollback("conll2003-bert", params)  # walks further back: before v1 there was no champion
    assert _alias("conll2003-bert") is None
    with pytest.raises(ChampionError, match="nothing was changed"):
        rollback("conll2003-bert", params)
    assert [e["event"] for e in read_history(params)].count("rollback") == 2


def test_task_leader_follows_the_best_champion_and_task_rollback(compare_repo):
    params = compare_repo.params
    compare_repo.add_run("emotion", "rnn", _acc(0.40))
    compare_repo.add_run("emotion", "minilm", _acc(0.70))
    state = update_champions(params, tasks=("emotion",))
    assert state["emotion"]["leader"] == {
        "registered_model": "emotion-minilm",
        "model": "minilm",
        "version": "1",
        "metric_value": 0.70,
    }
    assert _leader("emotion", ["rnn", "minilm"]) == ["emotion-minilm"]

    compare_repo.add_run("emotion", "rnn", _acc(0.90))
    update_champions(params, tasks=("emotion",))
    assert _leader("emotion", ["rnn", "minilm"]) == ["emotion-rnn"]
    assert [e["event"] for e in read_history(params)][-2:] == ["leader", "task_champion"]

    rollback("emotion", params)  # the task's last promotion was emotion-rnn v1 -> v2
    assert _alias("emotion-rnn") == "1" and _alias("emotion-minilm") == "1"
    assert _leader("emotion", ["rnn", "minilm"]) == ["emotion-minilm"]
    assert [e["event"] for e in read_history(params)][-3:] == ["rollback", "leader", "task_champion"]


def _task_source(task: str) -> tuple[str, str, str]:
    version = MlflowClient().get_model_version_by_alias(task, CHAMPION_ALIAS)
    return str(version.version), version.tags[SOURCE_MODEL_TAG], version.tags[SOURCE_VERSION_TAG]


def test_the_task_model_serves_the_leaders_champion_and_follows_rollback(compare_repo):
    params = compare_repo.params
    compare_repo.add_run("emotion", "rnn", _acc(0.40))
    compare_repo.add_run("emotion", "minilm", _acc(0.70))
    state = update_champions(params, tasks=("emotion",))
    assert _task_source("emotion") == ("1", "emotion-minilm", "1")
    assert state["emotion"]["task_champion"] == {
        "version": "1",
        "source_model": "emotion-minilm",
        "source_version": "1",
    }
    client = MlflowClient()
    copy, source = client.get_model_version("emotion", "1"), client.get_model_version("emotion-minilm", "1")
    assert (copy.source, copy.run_id) == (source.source, source.run_id)
    assert copy.tags["model_family"] == params.models["minilm"].family and copy.tags["model"] == "minilm"
    served = mlflow.pyfunc.load_model(f"models:/emotion@{CHAMPION_ALIAS}")  # loads without naming the family
    assert served.metadata.run_id == source.run_id

    update_champions(params, tasks=("emotion",))  # nothing changed: no new version, no event
    assert len(client.search_model_versions("name='emotion'")) == 1
    assert [e["event"] for e in read_history(params)].count("task_champion") == 1

    compare_repo.add_run("emotion", "rnn", _acc(0.90))
    update_champions(params, tasks=("emotion",))
    assert _task_source("emotion") == ("2", "emotion-rnn", "2")
    moved = read_history(params, task="emotion")[-1]
    assert (moved["event"], moved["old_version"], moved["new_version"]) == ("task_champion", "1", "2")
    assert (moved["old_source"], moved["new_source"]) == ("emotion-minilm/1", "emotion-rnn/2")
    assert (moved["old_metric"], moved["new_metric"]) == (0.70, 0.90)

    rollback("emotion", params)  # emotion-rnn back to v1: minilm leads again, its version 1 is reused
    assert _task_source("emotion") == ("1", "emotion-minilm", "1")
    assert len(client.search_model_versions("name='emotion'")) == 2
    assert read_history(params, task="emotion")[-1]["reason"] == "rollback of emotion"
    assert read_history(params, task="sst2") == []


def test_a_champion_from_another_test_split_is_replaced(compare_repo):
    params = compare_repo.params
    compare_repo.add_run("sst2", "gpt", _acc(0.90), split="md5-old")
    update_champions(params, tasks=("sst2",))
    compare_repo.add_run("sst2", "gpt", _acc(0.80), split="md5-new")
    state = update_champions(params, tasks=("sst2",))
    assert _alias("sst2-gpt") == "2"
    assert "another test split" in state["sst2"]["models"]["sst2-gpt"]["reason"]


def test_history_of_several_history_runs_is_merged_in_time_order(compare_repo):
    """Two machines creating a task's history run at once make two runs; readers merge both."""
    params = compare_repo.params
    compare_repo.add_run("sst2", "gpt", _acc(0.70))
    update_champions(params, tasks=("sst2",))
    client = MlflowClient()
    exp_id = client.get_experiment_by_name(HISTORY_EXPERIMENT).experiment_id
    twin = client.create_run(exp_id, run_name="champions-sst2", tags={TASK_TAG: "sst2"})
    late = {"id": "zzz", "time": "2999-01-01T00:00:00+00:00", "event": "leader", "task": "sst2"}
    client.log_text(twin.info.run_id, json.dumps(late), f"{EVENTS_DIR}/29990101T000000000000Z-zzz.json")
    events = read_history(params, task="sst2")
    assert events[-1]["id"] == "zzz" and events[0]["event"] == "promote"
    client.log_text(twin.info.run_id, "{not json", f"{EVENTS_DIR}/29990102T000000000000Z-bad.json")
    with pytest.raises(ChampionError, match="29990102T000000000000Z-bad.json: not valid JSON"):
        read_history(params)


def test_the_old_local_history_file_is_imported_once_and_can_be_rolled_back(compare_repo):
    params = compare_repo.params
    compare_repo.add_run("sst2", "bert", _acc(0.60))
    compare_repo.add_run("sst2", "bert", _acc(0.70))
    client = MlflowClient()
    client.set_registered_model_alias("sst2-bert", CHAMPION_ALIAS, "2")  # what the old code did, with its file:
    legacy = compare_repo.root / "mlflow" / "champion_history.jsonl"
    old = {"event": "promote", "task": "sst2", "registered_model": "sst2-bert", "alias": CHAMPION_ALIAS}
    legacy.write_text(
        json.dumps({**old, "id": "a1", "time": "2026-01-01T10:00:00+00:00", "old_version": None, "new_version": "1"})
        + "\n"
        + json.dumps({**old, "id": "b2", "time": "2026-01-01T10:00:00+00:00", "old_version": "1", "new_version": "2"})
        + "\n"
    )
    update_champions(params, tasks=("sst2",))
    assert not legacy.exists() and legacy.with_name("champion_history.jsonl.imported").exists()
    assert [e["id"] for e in read_history(params, task="sst2")][:2] == ["a1", "b2"]  # same-second order kept
    assert rollback("sst2-bert", params)["undoes"] == "b2"
    assert _alias("sst2-bert") == "1"


def test_rollback_target_must_be_a_task_or_registered_model(compare_repo):
    with pytest.raises(ChampionError, match="neither a task nor a registered model"):
        rollback("emotion-t5", compare_repo.params)
    with pytest.raises(ChampionError, match="no champion promotion of 'sst2'"):
        rollback("sst2", compare_repo.params)
