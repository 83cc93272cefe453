"""params.yaml loads; invalid params fail before any work with a message naming the offending key."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import yaml

from pipeline.core.config import TASKS, ParamsError, load_params, parse_params


def test_repo_params_load(repo_root):
    params = load_params(repo_root / "params.yaml")
    assert set(params.prepare.tasks) == set(TASKS)
    assert params.tokenizers.bert_vocab_size >= 256
    assert params.validate_cfg.datasets["wikitext"].max_chars > 0
    assert params.train.overrides["rnn-multi30k"].learning_rate == 0.001


def test_params_come_from_the_working_directory(in_tmp_repo, default_params_dict):
    changed = copy.deepcopy(default_params_dict)
    changed["common"]["seed"] = 7
    (in_tmp_repo / "params.yaml").write_text(yaml.safe_dump(changed))
    params = load_params()
    assert params.common.seed == 7 and params.profile is None


def _with(base: dict, dotted: str, value) -> dict:
    raw = copy.deepcopy(base)
    node = raw
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    return raw


# (change, the key the message must name, a phrase it must contain)
INVALID = [
    ("bogus", 1, "bogus", "unknown key"),
    ("prepare.tasks.emotion.max_trian", 10, "prepare.tasks.emotion.max_trian", "unknown key"),
    ("tokenizers.vocab", 10, "tokenizers.vocab", "unknown key"),
    ("tokenizers.bert_vocab_size", "big", "tokenizers.bert_vocab_size", "valid integer"),
    ("common.seed", 1.5, "common.seed", "fractional"),
    ("prepare.tasks.emotion.max_train", -5, "prepare.tasks.emotion.max_train", "greater than 0 (got -5)"),
    ("prepare.tasks.sst2.max_test", 0, "prepare.tasks.sst2.max_test", "greater than 0"),
    ("prepare.corpus.heldout_fraction", 1.5, "prepare.corpus.heldout_fraction", "less than 1"),
    ("tokenizers.gpt_vocab_size", 100, "tokenizers.gpt_vocab_size", "greater than or equal to 300"),
    ("ingest.datasets.imdb", {"hub_id": "stanfordnlp/imdb"}, "ingest.datasets.imdb", "unknown name 'imdb'"),
    ("prepare.tasks.imdb", {"max_train": 10}, "prepare.tasks.imdb", "unknown name 'imdb'"),
    ("validate.datasets.emotion.min_chars", 500, "validate.datasets.emotion", "min_chars (500) must be <= max_chars"),
    ("models.gpt.source", "scratch", "models.gpt", "needs twin_of"),
    ("models.gpt.twin_of", "bert", "models.gpt", "only used with source 'scratch'"),
    ("models.gpt_scratch.twin_of", "rnn", "models.gpt_scratch.twin_of", "is family 'rnn', not 'gpt'"),
    ("models.gpt_scratch.twin_of", "gpt2", "models.gpt_scratch.twin_of", "is not another model"),
    ("models.gpt_scratch.twin_of", "gpt_scratch", "models.gpt_scratch.twin_of", "is not another model"),
    ("models.bert_scratch.twin_of", "minilm_scratch", "models.bert_scratch.twin_of", "is itself a twin"),
    ("models.rnn_noattn.hid_dim", 64, "models.rnn_noattn", "takes its sizes from its twin"),
    ("models.rnn.attention", "maybe", "models.rnn.attention", "valid boolean"),
    ("models.rnn.hid_dim", None, "models.rnn", "missing hid_dim"),
    ("models.rnn.source", "pretrain", "models.rnn", "source must be 'scratch'"),
    ("models.minilm.name_or_path", None, "models.minilm", "needs name_or_path"),
    ("models.bert.name_or_path", "some/model", "models.bert", "only used with source 'pretrained'"),
    ("models.t5", {"family": "t5", "source": "pretrained", "name_or_path": "t5-small"}, "models.t5.family", "got 't5'"),
    ("train.overrides.t5-emotion", {"epochs": 1}, "train.overrides.t5-emotion", "keys are '<model>-<task>'"),
    ("train.overrides.gpt-imdb", {}, "train.overrides.gpt-imdb", "keys are '<model>-<task>'"),
    ("pretrain.gpt.n_head", 3, "pretrain.gpt", "divisible by n_head"),
    ("pretrain.gpt.mlm_probability", 0.15, "pretrain.gpt.mlm_probability", "unknown key"),  # bert only
    ("validate.datasets.emotion.min_length_ratio", 0.5, "validate.datasets.emotion", "length_ratio_mostly goes with"),
    ("validate.datasets.emotion.language_check_mostly", 0.9, "validate", "only apply to translation datasets"),
    ("validate.datasets.squad.summary_shorter_mostly", 0.9, "validate", "only apply to summarization datasets"),
    ("generate.top_p", 1.5, "generate.top_p", "less than or equal to 1"),
    ("generate.temperature", 0, "generate.temperature", "greater than 0"),
    ("validate.datasets.samsum.language_check_mostly", 0.9, "validate", "only apply to translation datasets"),
    (
        "validate.datasets.multi30k.language_check_mostly",
        1.5,
        "validate.datasets.multi30k.language_check_mostly",
        "less than or equal to 1",
    ),
]


@pytest.mark.parametrize(("dotted", "value", "key", "phrase"), INVALID, ids=[i[0] for i in INVALID])
def test_invalid_params_name_the_key(default_params_dict, dotted, value, key, phrase):
    with pytest.raises(ParamsError) as err:
        parse_params(_with(default_params_dict, dotted, value))
    message = str(err.value)
    assert f"- {key}:" in message, message
    assert phrase in message, message
    assert "nothing was run" in message


def test_missing_section_and_missing_dataset(default_params_dict):
    raw = copy.deepcopy(default_params_dict)
    del raw["prepare"]
    del raw["ingest"]["datasets"]["sst2"]
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert "- prepare: missing key (params.yaml sets every parameter" in str(err.value)
    assert "- ingest: missing dataset(s) ['sst2']" in str(err.value)


# One key per config class whose fields have no code default: leaving it out of params.yaml is an error.
REQUIRED = [
    "common.seed",
    "common.num_threads",
    "ingest.mirror_dir",
    "ingest.datasets.emotion.revision",
    "validate.datasets.emotion.max_leaked_texts",
    "prepare.tasks.sst2.max_test",
    "prepare.corpus",
    "prepare.corpus.min_chars",
    "tokenizers",
    "tokenizers.min_frequency",
    "pretrain.gpt.warmup_steps",
    "pretrain.bert.mlm_probability",
    "generate",
    "generate.top_p",
    "compare",
    "compare.min_improvement",
    "orchestration",
    "orchestration.retrain_cron",
    "validate",
]


@pytest.mark.parametrize("dotted", REQUIRED)
def test_params_without_a_code_default_are_required(default_params_dict, dotted):
    raw = copy.deepcopy(default_params_dict)
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node[key]
    del node[leaf]
    with pytest.raises(ParamsError, match=rf"- {dotted.replace('.', '[.]')}: missing key"):
        parse_params(raw)


def test_unreadable_files(in_tmp_repo):
    with pytest.raises(ParamsError, match="params.yaml: not found"):
        load_params()
    with pytest.raises(ParamsError, match="reads a repository's params.yaml"):
        load_params(in_tmp_repo / "other.yaml")
    bad = in_tmp_repo / "params.yaml"
    bad.write_text("prepare: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(bad)


@pytest.mark.parametrize("argv", [["flows.data", "prepare", "emotion"], ["flows.tokenizers"]])
def test_flow_cli_rejects_bad_params_before_any_work(repo_root, tmp_path, default_params_dict, argv):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(_with(default_params_dict, "prepare.tasks.emotion.max_train", -5)))
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    proc = subprocess.run(
        [sys.executable, "-m", *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "prepare.tasks.emotion.max_train: Input should be greater than 0 (got -5)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "prefect" not in proc.stderr.lower()  # failed before Prefect started
    assert not (tmp_path / "data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
