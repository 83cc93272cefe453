"""A run's effective settings are resolved once, from params.yaml, with the model-task override applied."""

from __future__ import annotations

import copy

import pytest
import yaml

from pipeline.core.config import EncDecModel, GptModel, RnnModel, parse_params
from pipeline.core.run_settings import RunSettings, RunSettingsError


def _params(raw: dict, **override):
    raw = copy.deepcopy(raw)
    raw["train"]["overrides"]["rnn-sst2"] = override
    return parse_params(raw)


def test_override_applies_only_its_fields(default_params_dict):
    params = _params(default_params_dict, learning_rate=0.01, batch_size=8)
    s = RunSettings.resolve("rnn", "sst2", params)
    task = default_params_dict["train"]["tasks"]["sst2"]
    assert s.training.learning_rate == 0.01 and s.batch_size == 8
    assert s.training.epochs == task["epochs"] and s.training.max_length == task["max_length"]
    other = RunSettings.resolve("encdec", "sst2", params)
    assert other.batch_size == default_params_dict["train"]["common"]["batch_size"]
    assert other.training.learning_rate == default_params_dict["train"]["overrides"]["encdec-sst2"]["learning_rate"]


def test_settings_are_frozen_and_typed_per_family(default_params_dict):
    params = parse_params(default_params_dict)
    s = RunSettings.resolve("rnn", "emotion", params)
    with pytest.raises(AttributeError):
        s.batch_size = 1
    assert isinstance(s.model_cfg, RnnModel)
    assert isinstance(RunSettings.resolve("encdec", "emotion", params).model_cfg, EncDecModel)
    assert isinstance(RunSettings.resolve("gpt", "emotion", params).model_cfg, GptModel)


@pytest.mark.parametrize(
    "model,stage,init,extra",
    [
        ("rnn", "train", "scratch", {"attention": "bahdanau"}),
        ("rnn_noattn", "train", "scratch", {"attention": "none", "twin_of": "rnn"}),
        ("gpt", "finetune", "pretrained-here", {}),
        ("gpt_scratch", "scratch", "scratch", {"twin_of": "gpt"}),
        ("minilm", "finetune", "pretrained-checkpoint", {}),
        ("minilm_scratch", "scratch", "scratch", {"twin_of": "minilm"}),
    ],
)
def test_stage_init_and_folders_follow_the_weight_source(default_params_dict, model, stage, init, extra):
    s = RunSettings.resolve(model, "conll2003", parse_params(default_params_dict))
    assert (s.stage, s.init, s.kind) == (stage, init, "ner")
    assert s.checkpoint_dir.as_posix() == f"checkpoints/{stage}-{model}-conll2003"
    assert s.output_dir.as_posix() == f"data/models/{model}-conll2003"
    tags = {"task": "conll2003", "model": model, "family": s.family, "stage": stage, "init": init}
    assert s.tags() == tags | extra


def test_every_model_trains_in_the_dvc_stage_its_settings_name(default_params_dict, repo_root):
    """The run's `stage` tag is what `make reproduce` re-runs (<stage>@<model>-<task>): it must be in dvc.yaml."""
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    params = parse_params(default_params_dict)
    for model in params.models:
        stage = RunSettings.resolve(model, "emotion", params).stage
        assert model in stages[stage]["matrix"]["model"], f"{model}: not in dvc.yaml's {stage} stage"
        assert "emotion" in stages[stage]["matrix"]["task"]


def test_a_control_trains_like_its_twin_unless_it_has_its_own_override(default_params_dict):
    raw = copy.deepcopy(default_params_dict)
    raw["train"]["overrides"]["gpt-sst2"] = {"learning_rate": 0.003, "epochs": 5}
    raw["train"]["overrides"].pop("gpt_scratch-sst2", None)
    raw["train"]["overrides"]["rnn_noattn-conll2003"] = {"learning_rate": 0.002}
    params = parse_params(raw)
    scratch, twin = RunSettings.resolve("gpt_scratch", "sst2", params), RunSettings.resolve("gpt", "sst2", params)
    assert scratch.training == twin.training and scratch.training.learning_rate == 0.003
    assert (scratch.source, twin.source) == ("scratch", "pretrain")
    noattn = RunSettings.resolve("rnn_noattn", "conll2003", params)
    rnn = RunSettings.resolve("rnn", "conll2003", params)
    # its own override replaces the twin's (rnn-conll2003 has epochs: 8): unset fields keep the task's value
    task = default_params_dict["train"]["tasks"]["conll2003"]
    assert noattn.training.learning_rate == 0.002 and noattn.training.epochs == task["epochs"] != rnn.training.epochs
    # the rnn control's sizes are its twin's; only the attention switch differs
    sizes = ("emb_dim", "hid_dim", "dropout", "teacher_forcing_ratio")
    assert [getattr(noattn.model_cfg, k) for k in sizes] == [getattr(rnn.model_cfg, k) for k in sizes]
    assert (rnn.model_cfg.attention, noattn.model_cfg.attention) == (True, False)


def test_mlflow_params_are_the_same_core_keys_for_every_family(default_params_dict):
    params = parse_params(default_params_dict)
    core = {
        "train.epochs",
        "train.learning_rate",
        "train.max_length",
        "train.max_steps",
        "train.batch_size",
        "train.generation.num_beams",
        "model.family",
        "model.source",
        "seed",
    }
    for model in params.models:
        keys = set(RunSettings.resolve(model, "emotion", params).mlflow_params())
        assert core <= keys, (model, core - keys)
    gpt = RunSettings.resolve("gpt", "emotion", params).mlflow_params()
    assert not any(k.startswith(("model.hid_dim", "model.teacher_forcing")) for k in gpt)


def test_unknown_model_or_task(default_params_dict):
    params = parse_params(default_params_dict)
    with pytest.raises(RunSettingsError, match="models.nope"):
        RunSettings.resolve("nope", "emotion", params)
    with pytest.raises(RunSettingsError, match="train.tasks.imdb"):
        RunSettings.resolve("rnn", "imdb", params)


def test_a_task_max_new_tokens_replaces_the_common_one_for_its_runs_only(default_params_dict):
    raw = copy.deepcopy(default_params_dict)
    raw["train"]["generation"]["max_new_tokens"] = 64
    raw["train"]["tasks"]["samsum"]["max_new_tokens"] = 48
    raw["train"]["overrides"]["gpt-samsum"] = {"max_new_tokens": 40, "val_generation_examples": 10}
    params = parse_params(raw)
    summarizer = RunSettings.resolve("encdec", "samsum", params)  # encdec-samsum overrides nothing
    assert (
        summarizer.generation.max_new_tokens == 48
        and summarizer.generation.num_beams == params.train.generation.num_beams
    )
    assert summarizer.mlflow_params()["train.generation.max_new_tokens"] == 48
    assert RunSettings.resolve("gpt", "samsum", params).generation.max_new_tokens == 40  # the run's override
    assert RunSettings.resolve("gpt", "samsum", params).training.val_generation_examples == 10
    translator = RunSettings.resolve("gpt", "multi30k", params)
    assert translator.generation.max_new_tokens == 64 and translator.training.max_new_tokens is None
    assert "train.max_new_tokens" not in translator.mlflow_params()  # unset optional keys are not logged


def test_a_task_num_beams_replaces_the_common_beam_width_for_its_runs_only(default_params_dict):
    raw = copy.deepcopy(default_params_dict)
    raw["train"]["generation"]["num_beams"] = 4
    raw["train"]["tasks"]["samsum"]["num_beams"] = 1
    raw["train"]["overrides"]["rnn-samsum"] = {"num_beams": 2}
    params = parse_params(raw)
    summarizer = RunSettings.resolve("bert", "samsum", params)
    assert summarizer.generation.num_beams == 1
    assert summarizer.mlflow_params()["train.generation.num_beams"] == 1
    assert RunSettings.resolve("rnn", "samsum", params).generation.num_beams == 2  # the run's override
    assert RunSettings.resolve("rnn_noattn", "samsum", params).generation.num_beams == 2  # the twin's override
    assert RunSettings.resolve("gpt", "multi30k", params).generation.num_beams == 4


def test_micro_batch_size_splits_a_transformer_batch_only(default_params_dict):
    raw = copy.deepcopy(default_params_dict)
    raw["train"]["overrides"]["minilm-samsum"]["micro_batch_size"] = 16
    params = parse_params(raw)
    s = RunSettings.resolve("minilm", "samsum", params)
    assert s.batch_size == 32 and s.micro_batch_size == 16 and s.accumulation_steps == 2
    assert s.as_dict()["micro_batch_size"] == 16 and s.mlflow_params()["train.micro_batch_size"] == 16
    twin = RunSettings.resolve("minilm_scratch", "samsum", params)  # the twin trains the same way
    assert twin.micro_batch_size == 16
    plain = RunSettings.resolve("minilm", "emotion", params)
    assert plain.accumulation_steps == 1 and "micro_batch_size" not in plain.as_dict()
    assert plain.mlflow_params()["train.micro_batch_size"] == plain.batch_size

    raw["train"]["overrides"]["minilm-samsum"]["micro_batch_size"] = 64  # at most 64 a pass: the batch in one
    assert RunSettings.resolve("minilm", "samsum", parse_params(raw)).accumulation_steps == 1
    raw["train"]["overrides"]["minilm-samsum"]["micro_batch_size"] = 12
    with pytest.raises(RunSettingsError, match=r"minilm-samsum.micro_batch_size: 12 must divide the batch size 32"):
        RunSettings.resolve("minilm", "samsum", parse_params(raw))
    raw["train"]["overrides"]["minilm-samsum"]["micro_batch_size"] = 16
    raw["train"]["overrides"]["rnn-samsum"]["micro_batch_size"] = 16
    with pytest.raises(RunSettingsError, match=r"rnn-samsum.micro_batch_size: only the gpt/bert families"):
        RunSettings.resolve("rnn", "samsum", parse_params(raw))


def test_a_run_takes_its_share_of_the_prepared_training_pool_and_a_control_takes_its_twins(default_params_dict):
    """train.tasks.<task>.max_train_examples is each run's share of prepare's pool; a model that learns fast from
    more data takes more in its override, and its control (twin_of) the same, so they differ only in what the
    control is for."""
    raw = copy.deepcopy(default_params_dict)
    raw["train"]["tasks"]["multi30k"]["max_train_examples"] = 2000
    raw["train"]["overrides"]["rnn-multi30k"] = {"max_train_examples": 8000}
    raw["train"]["overrides"].pop("rnn_noattn-multi30k", None)
    params = parse_params(raw)
    shares = {
        m: RunSettings.resolve(m, "multi30k", params).training.max_train_examples for m in ("rnn", "rnn_noattn", "gpt")
    }
    assert shares == {"rnn": 8000, "rnn_noattn": 8000, "gpt": 2000}
    assert RunSettings.resolve("rnn", "multi30k", params).mlflow_params()["train.max_train_examples"] == 8000
    raw["train"]["tasks"]["multi30k"]["max_train_examples"] = 0
    with pytest.raises(ValueError, match="max_train_examples"):
        parse_params(raw)
