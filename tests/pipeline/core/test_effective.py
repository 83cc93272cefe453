"""run-params/: each training stage's resolved settings, so a change re-runs exactly its stages."""

from __future__ import annotations

import copy

import yaml

from pipeline.core.config import load_params, parse_params
from pipeline.core.effective import RUN_PARAMS_DIR, effective_files, effective_runs
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
    assert runs["bert_scratch-sst2"] == {
        **RunSettings.resolve("bert_scratch", "sst2", params).as_dict(),
        "launch": {"torchrun_nproc": params.common.torchrun_nproc},
    }


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


def test_the_run_files_read_back_as_the_profiles_settings():
    files = effective_files(REPO_ROOT, "smoke")
    smoke = load_params(REPO_ROOT / "params.yaml", profile="smoke")
    loaded = {rel: yaml.safe_load(text) for rel, text in files.items() if rel.startswith(RUN_PARAMS_DIR)}
    assert loaded == {f"{RUN_PARAMS_DIR}/{name}.yaml": run for name, run in effective_runs(smoke).items()}
    assert effective_runs(smoke) != effective_runs(load_params(REPO_ROOT / "params.yaml", profile=None))


def test_torchrun_changes_every_run(default_params_dict):
    def edit(raw):
        raw["common"]["torchrun_nproc"] = 2

    assert len(changed_runs(default_params_dict, edit)) == len(effective_runs(parse_params(default_params_dict)))


def test_a_run_no_longer_in_params_loses_its_file(in_tmp_repo, default_params_dict):
    from pipeline.core.effective import write_effective_params

    (in_tmp_repo / "params.yaml").write_text(yaml.safe_dump(default_params_dict, sort_keys=False))
    (in_tmp_repo / RUN_PARAMS_DIR).mkdir()
    (in_tmp_repo / RUN_PARAMS_DIR / "gone-emotion.yaml").write_text("seed: 1\n")
    write_effective_params(in_tmp_repo, None)
    names = {p.name for p in (in_tmp_repo / RUN_PARAMS_DIR).iterdir()}
    assert "gone-emotion.yaml" not in names and "rnn_noattn-squad.yaml" in names
