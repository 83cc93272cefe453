"""params.effective.yaml's `runs`: each training stage's resolved settings, so a change re-runs exactly its stages."""

from __future__ import annotations

import copy

import yaml

from pipeline.core.config import load_params, parse_params
from pipeline.core.effective import effective_runs, effective_text
from pipeline.core.run_settings import RunSettings
from tests.conftest import REPO_ROOT


def changed_runs(raw: dict, edit) -> set[str]:
    """The `runs` entries that differ after `edit(raw_copy)`."""
    edited = copy.deepcopy(raw)
    edit(edited)
    before, after = effective_runs(parse_params(raw)), effective_runs(parse_params(edited))
    assert set(before) == set(after)
    return {name for name in after if before[name] != after[name]}


def test_there_is_an_entry_per_model_and_task_equal_to_the_resolved_settings(default_params_dict):
    params = parse_params(default_params_dict)
    runs = effective_runs(params)
    assert set(runs) == {f"{m}-{t}" for m in params.models for t in params.train.tasks}
    assert runs["bert_scratch-sst2"] == RunSettings.resolve("bert_scratch", "sst2", params).as_dict()


def test_an_override_changes_its_run_and_its_scratch_twins_only(default_params_dict):
    def edit(raw):
        raw["train"]["overrides"]["bert-emotion"]["learning_rate"] = 0.0123

    assert changed_runs(default_params_dict, edit) == {"bert-emotion", "bert_scratch-emotion"}


def test_a_control_with_its_own_override_leaves_its_twin_alone(default_params_dict):
    def edit(raw):
        raw["train"]["overrides"]["gpt_scratch-sst2"] = {"learning_rate": 0.002}

    assert changed_runs(default_params_dict, edit) == {"gpt_scratch-sst2"}


def test_a_model_entry_changes_its_runs_and_its_controls(default_params_dict):
    def rnn(raw):
        raw["models"]["rnn"]["hid_dim"] = 64

    tasks = default_params_dict["train"]["tasks"]
    assert changed_runs(default_params_dict, rnn) == {f"{m}-{t}" for m in ("rnn", "rnn_noattn") for t in tasks}

    def minilm(raw):  # where minilm's weights come from: the scratch twin copies that architecture
        raw["models"]["minilm"]["name_or_path"] = "some/other-checkpoint"

    assert changed_runs(default_params_dict, minilm) == {
        f"{m}-{t}" for m in ("minilm", "minilm_scratch") for t in tasks
    }


def test_qa_settings_change_the_qa_runs_only(default_params_dict):
    def edit(raw):
        raw["train"]["qa"]["doc_stride"] += 1

    assert changed_runs(default_params_dict, edit) == {f"{m}-squad" for m in default_params_dict["models"]}


def test_the_rendered_runs_read_back_as_the_profiles_settings():
    loaded = yaml.safe_load(effective_text(REPO_ROOT, "smoke"))
    smoke = load_params(REPO_ROOT / "params.yaml", profile="smoke")
    assert loaded["runs"] == effective_runs(smoke)
    assert loaded["runs"] != effective_runs(load_params(REPO_ROOT / "params.yaml", profile=None))
