"""reports/gpt_vs_bert.md from a run's own outputs: tiny pretrained GPT and BERT, a synthetic leaderboard."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline.compare.gpt_vs_bert import ATTENTION_PLOT, CURVES_PLOT, write_gpt_vs_bert
from pipeline.compare.leaderboard import OK, Row

pytestmark = pytest.mark.integration


@pytest.fixture
def run_root(tmp_path, pretrained_models, pretrain_inputs):
    for family, model_dir in pretrained_models.items():
        shutil.copytree(model_dir.parent, tmp_path / "data" / "pretrain" / family)
    shutil.copytree(pretrain_inputs / "data" / "corpus", tmp_path / "data" / "corpus")
    return tmp_path


def test_the_report_is_built_from_the_runs_numbers(run_root):
    rows = [
        Row("emotion", "gpt", OK, test={"accuracy": 0.71}),
        Row("emotion", "bert", OK, test={"accuracy": 0.53}),
        Row("multi30k", "gpt", OK, test={"bleu": 4.3}),
        Row("multi30k", "bert", OK, test={"bleu": 2.1}),
    ]
    path, text = write_gpt_vs_bert(
        rows,
        run_root,
        interval=lambda row: (row.main_value - 0.01, row.main_value + 0.01),
        gain=lambda task, model: "+0.05 (p = 0.01, significant)" if task == "emotion" else None,
    )
    assert path == run_root / "reports" / "gpt_vs_bert.md" and path.read_text() == text
    for plot in (CURVES_PLOT, ATTENTION_PLOT):
        assert (run_root / "reports" / "plots" / plot).stat().st_size > 1000
    bert = json.loads((run_root / "data" / "pretrain" / "bert" / "metrics.json").read_text())
    gpt = json.loads((run_root / "data" / "pretrain" / "gpt" / "metrics.json").read_text())
    config = json.loads((run_root / "data" / "pretrain" / "gpt" / "model" / "config.json").read_text())
    # numbers come from the run: the held-out pretraining metrics and the configs
    assert f"{100 * bert['heldout']['mlm_accuracy']:.1f} %" in text
    assert f"{gpt['heldout']['perplexity']:.1f}" in text
    assert f"| layers | {config['n_layer']} |" in text
    # emotion contradicts the seed (gpt wins a discriminative task): said, with the measured cause
    assert "| emotion | classification | accuracy | 0.71 [0.7, 0.72] | 0.53 [0.52, 0.54] |" in text
    assert "gpt by 0.18 | bert | **no** |" in text
    assert "**emotion**: the seed expects bert." in text and "transfer gain over its scratch twin: +0.05" in text
    assert "| multi30k | translation | bleu |" in text and "gpt by 2.2 | gpt | yes |" in text


def test_without_pretraining_outputs_the_report_says_what_to_run(tmp_path):
    _, text = write_gpt_vs_bert([], tmp_path)
    assert "run the pretrain stages" in text


def test_intervals_and_transfer_gains_come_from_the_leaderboard_rows(tmp_path):
    gain = {"control": "bert_scratch", "gain": 0.04, "low": 0.01, "high": 0.07, "p_value": 0.01, "significant": True}
    rows = [
        Row("emotion", "gpt", OK, test={"accuracy": 0.6}, main_ci=[0.55, 0.65]),
        Row("emotion", "bert", OK, test={"accuracy": 0.7}, main_ci=[0.66, 0.74], transfer_gain=gain),
    ]
    _, text = write_gpt_vs_bert(rows, tmp_path)
    assert "| 0.6 [0.55, 0.65] | 0.7 [0.66, 0.74] |" in text
    assert "bert by 0.1 | bert | yes |" in text


def test_generation_samples_and_perplexity_are_shown(tmp_path):
    folder = tmp_path / "data" / "generate"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"heldout": {"perplexity": 123.4}, "vocab_size": 800}))
    (folder / "samples.jsonl").write_text(
        json.dumps({"prompt": "The history of", "completion": "the city | began"}) + "\n"
    )
    _, text = write_gpt_vs_bert([], tmp_path)
    assert "Held-out perplexity: 123.4 (vocabulary 800" in text
    assert "| The history of | the city \\| began |" in text


def test_a_significant_negative_transfer_gain_says_the_scratch_twin_did_better():
    from pipeline.compare.gpt_vs_bert import transfer_gain_text

    def gain(value: float, significant: bool) -> dict:
        return {"control": "x_scratch", "gain": value, "low": value - 0.02, "high": value + 0.02, "p_value": 0.01,
                "significant": significant}  # fmt: skip

    rows = [
        Row("emotion", "bert", OK, test={"accuracy": 0.54}, transfer_gain=gain(-0.07, True)),
        Row("emotion", "gpt", OK, test={"accuracy": 0.72}, transfer_gain=gain(0.12, True)),
        Row("sst2", "gpt", OK, test={"accuracy": 0.67}, transfer_gain=gain(0.03, False)),
    ]
    text = transfer_gain_text(rows)
    assert text("emotion", "bert").endswith("significant: the scratch twin did better")
    assert text("emotion", "gpt").endswith(", significant") and text("sst2", "gpt").endswith("not significant")
    assert text("squad", "gpt") is None
