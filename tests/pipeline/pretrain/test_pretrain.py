"""Pretraining GPT (causal LM) and BERT (MLM + NSP) on a tiny real corpus: held-out loss drops, outputs and
MLflow run are complete, and a run killed after a checkpoint resumes it in the same MLflow run."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForPreTraining, AutoTokenizer

from pipeline.core.config import load_params, parse_params
from pipeline.data.corpus import CorpusError, read_corpus
from pipeline.models.loading import CheckpointError
from pipeline.pretrain import run as pt
from pipeline.pretrain.data import lm_blocks, nsp_pairs
from tests.conftest import REPO_ROOT
from tests.fixtures.models import TINY_PRETRAIN, copy_pretrain_inputs, tiny_pretrain_params, write_params


def _root(pretrained_models) -> Path:
    return pretrained_models["gpt"].parents[3]  # <root>/data/pretrain/gpt/model


def _client(root: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def _runs(root: Path) -> dict[str, mlflow.entities.Run]:
    client = _client(root)
    exp = client.get_experiment_by_name("pretraining")
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def _metrics(family_dir: Path) -> dict:
    return json.loads((family_dir / "metrics.json").read_text())


def _loss_csv(family_dir: Path) -> list[dict]:
    with open(family_dir / "plots" / "loss.csv", newline="") as f:
        return list(csv.DictReader(f))


def _check_outputs(family_dir: Path) -> None:
    model = family_dir / "model"
    names = {p.name for p in model.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith(".bin") for n in names), names
    assert AutoTokenizer.from_pretrained(str(model)).model_max_length == TINY_PRETRAIN["block_size"]
    rows = _loss_csv(family_dir)
    assert list(rows[0]) == ["step", "loss", "eval_loss"]
    assert int(rows[0]["step"]) == 1 and int(rows[-1]["step"]) == TINY_PRETRAIN["max_steps"]
    evals = {int(r["step"]) for r in rows if r["eval_loss"]}
    assert evals == {15, 30}  # every eval_steps
    assert not list(family_dir.parent.parent.parent.glob("checkpoints/*")), "checkpoints are removed after success"


@pytest.mark.slow
@pytest.mark.integration
def test_gpt_pretraining_lowers_heldout_loss(pretrained_models, monkeypatch):
    root = _root(pretrained_models)
    family_dir = root / "data" / "pretrain" / "gpt"
    metrics = _metrics(family_dir)
    assert metrics["heldout"]["loss"] < metrics["heldout_initial"]["loss"] - 0.3
    assert metrics["heldout"]["perplexity"] == pytest.approx(math.exp(metrics["heldout"]["loss"]))
    assert metrics["steps"] == TINY_PRETRAIN["max_steps"] and metrics["resumed_from_step"] == 0
    assert metrics["param_count"] > 0 and metrics["tokens_per_s"] > 0
    _check_outputs(family_dir)

    # Independently of the stage's own numbers: the saved weights beat a fresh model on the held-out blocks.
    monkeypatch.chdir(root)  # read_corpus reads data/corpus under the cwd
    tok = AutoTokenizer.from_pretrained(str(pretrained_models["gpt"]))
    heldout = lm_blocks(read_corpus("heldout"), tok, TINY_PRETRAIN["block_size"])
    trained = AutoModelForCausalLM.from_pretrained(str(pretrained_models["gpt"]), use_safetensors=True)
    cfg = parse_params(tiny_pretrain_params(root, yaml.safe_load((REPO_ROOT / "params.yaml").read_text()))).pretrain.gpt
    torch.manual_seed(0)
    fresh = pt.build_model("gpt", cfg, tok)
    assert pt.evaluate_gpt(trained, heldout, 16)["loss"] < pt.evaluate_gpt(fresh, heldout, 16)["loss"] - 0.3


@pytest.mark.slow
@pytest.mark.integration
def test_bert_pretraining_reports_mlm_and_nsp(pretrained_models, monkeypatch, default_params_dict):
    root = _root(pretrained_models)
    family_dir = root / "data" / "pretrain" / "bert"
    metrics = _metrics(family_dir)
    final, initial = metrics["heldout"], metrics["heldout_initial"]
    assert set(final) == {"mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy"}
    assert final["mlm_loss"] < initial["mlm_loss"] - 0.2
    assert 0 <= final["mlm_accuracy"] <= 1 and 0 <= final["nsp_accuracy"] <= 1
    _check_outputs(family_dir)

    # The saved model has both pretraining heads and scores the held-out pairs the same way.
    model = AutoModelForPreTraining.from_pretrained(str(pretrained_models["bert"]), use_safetensors=True)
    assert type(model).__name__ == "BertForPreTraining"
    monkeypatch.chdir(root)
    tok = AutoTokenizer.from_pretrained(str(pretrained_models["bert"]))
    cfg = parse_params(default_params_dict).pretrain.bert
    heldout = nsp_pairs(
        read_corpus("heldout"),
        tok,
        TINY_PRETRAIN["block_size"],
        seed=43,
        negatives=cfg.nsp_negatives,
        split_single=cfg.split_single_sentences,
    )
    again = pt.evaluate_bert(model, heldout, tok, 0.15, 16, seed=42)
    assert again == pytest.approx(final, rel=1e-4)


@pytest.mark.slow
@pytest.mark.integration
def test_pretraining_runs_are_tracked_in_mlflow(pretrained_models):
    root = _root(pretrained_models)
    runs = _runs(root)
    assert set(runs) == {"pretrain-gpt", "pretrain-bert"}
    client = _client(root)
    for family, heldout_keys in (
        ("gpt", ("heldout_loss", "heldout_perplexity")),
        ("bert", ("heldout_mlm_loss", "heldout_mlm_accuracy", "heldout_nsp_accuracy")),
    ):
        run = runs[f"pretrain-{family}"]
        metrics = _metrics(root / "data" / "pretrain" / family)
        assert run.info.status == "FINISHED"
        m = run.data.metrics
        for key in (
            *heldout_keys,
            "train_time_s",
            "param_count",
            "tokens_per_s",
            "train_loss",
            "eval_loss",
            "learning_rate",
        ):
            assert key in m, f"{family}: metric {key} missing"
        assert m["param_count"] == metrics["param_count"]
        assert m[heldout_keys[0]] == pytest.approx(metrics["heldout"][heldout_keys[0].removeprefix("heldout_")])
        assert f"heldout_initial_{heldout_keys[0].removeprefix('heldout_')}" in m
        steps = [x.step for x in client.get_metric_history(run.info.run_id, "train_loss")]
        assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == TINY_PRETRAIN["max_steps"]
        assert run.data.params[f"pretrain.{family}.n_layer"] == str(TINY_PRETRAIN["n_layer"])
        assert run.data.params["common.seed"] == "42"
        tags = run.data.tags
        assert tags["model_family"] == family and tags["weight_source"] == "scratch" and tags["seed"] == "42"
        assert tags["git_commit"]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "metrics.json" in artifacts and "plots" in artifacts


def _written(state_file: Path) -> bool:
    """trainer_state.json is created empty, then written: only a whole one marks a complete checkpoint."""
    try:
        return bool(json.loads(state_file.read_text()))
    except (OSError, ValueError):
        return False


def _wait_for_checkpoint(proc: subprocess.Popen, folder: Path, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = sorted(p for p in folder.glob("checkpoint-*/trainer_state.json") if _written(p))
        if done:
            return done[0].parent
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    out = proc.communicate()[0]
    pytest.fail(f"no checkpoint appeared in {folder} (exit {proc.returncode}); output:\n{out[-3000:]}")


@pytest.mark.slow
@pytest.mark.integration
def test_killed_run_resumes_from_its_checkpoint_in_the_same_mlflow_run(
    tmp_path, pretrain_inputs, default_params_dict, monkeypatch
):
    copy_pretrain_inputs(pretrain_inputs, tmp_path)
    max_steps = 100  # enough steps after the first checkpoint that the kill always lands before the end
    raw = tiny_pretrain_params(tmp_path, default_params_dict, max_steps=max_steps, save_steps=10, eval_steps=50)
    write_params(tmp_path, raw)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HT_LOG_LEVEL": "WARNING"}
    env.pop("MLFLOW_TRACKING_URI", None)
    code = (
        "from pipeline.core.config import load_params; from pipeline.pretrain.run import pretrain; "
        "pretrain('bert', load_params())"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    folder = tmp_path / "checkpoints" / "pretrain-bert"
    _wait_for_checkpoint(proc, folder, timeout=240)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the first run finished before it could be killed"
    run_id = (folder / "mlflow_run_id").read_text().strip()
    assert not (tmp_path / "data" / "pretrain" / "bert").exists(), "a killed run must not leave outputs"

    monkeypatch.chdir(tmp_path)
    metrics = pt.pretrain("bert", load_params(tmp_path / "params.yaml"))

    assert metrics["resumed_from_step"] >= 10 and metrics["resumed_from_step"] % 10 == 0
    assert metrics["steps"] == max_steps
    assert metrics["steps_this_run"] == max_steps - metrics["resumed_from_step"]
    runs = _runs(tmp_path)
    assert list(runs) == ["pretrain-bert"], "the resumed run continues the first MLflow run"
    run = runs["pretrain-bert"]
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    steps = [x.step for x in _client(tmp_path).get_metric_history(run_id, "train_loss")]
    assert len(steps) == len(set(steps)), "steps logged before the kill are not logged twice"
    assert steps[0] == 1 and steps[-1] == max_steps
    assert not folder.exists()
    rows = _loss_csv(tmp_path / "data" / "pretrain" / "bert")
    assert int(rows[0]["step"]) == 1 and int(rows[-1]["step"]) == max_steps  # history kept across the resume


def test_bert_loss_on_masked_positions_only_equals_the_models_own(pretrain_inputs, default_params_dict):
    from transformers import TrainingArguments

    from pipeline.pretrain.data import mlm_collator

    tok = AutoTokenizer.from_pretrained(str(pretrain_inputs / "data" / "tokenizers" / "bert"))
    docs = (pretrain_inputs / "data" / "corpus" / "heldout.txt").read_text(encoding="utf-8").splitlines()
    pairs = nsp_pairs([d for d in docs if d.strip()], tok, 64, seed=0, negatives="swapped", split_single=True)
    cfg = parse_params(default_params_dict).pretrain.bert.model_copy(update={**TINY_PRETRAIN, "n_layer": 1})
    torch.manual_seed(0)
    model = pt.build_model("bert", cfg, tok).eval()  # eval: no dropout, both losses see the same network
    batch = mlm_collator(tok, 0.15, seed=0)([pairs[i] for i in range(8)])
    expected = model(**{k: v.clone() for k, v in batch.items()}).loss
    trainer = pt.BertPretrainer(model=model, args=TrainingArguments("unused", report_to="none", use_cpu=True))
    assert trainer.compute_loss(model, dict(batch)).item() == pytest.approx(expected.item(), rel=1e-5)


def test_unknown_family_is_refused(default_params_dict):
    with pytest.raises(ValueError, match=r"unknown pretraining family 'rnn'.*\['gpt', 'bert'\]"):
        pt.pretrain("rnn", parse_params(default_params_dict))


def test_missing_inputs_name_the_stage_to_run(in_tmp_repo, pretrain_inputs, default_params_dict):
    params = parse_params(tiny_pretrain_params(in_tmp_repo, default_params_dict))
    with pytest.raises(CheckpointError, match=r"data/tokenizers/gpt.*run the tokenizers stage"):
        pt.pretrain("gpt", params)
    copy_pretrain_inputs(pretrain_inputs, in_tmp_repo)
    (in_tmp_repo / "data" / "corpus" / "heldout.txt").unlink()
    with pytest.raises(CorpusError, match=r"heldout.txt not found.*flows.data corpus"):
        pt.pretrain("gpt", params)


def test_device_dtype_is_fp32_on_cpu_and_bf16_on_capable_cuda():
    device, dtype = pt.device_dtype()
    if torch.cuda.is_available():
        assert device.type == "cuda"
        assert dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    else:
        assert (device.type, dtype) == ("cpu", torch.float32)


@pytest.mark.parametrize("max_steps,eval_steps,expected", [(600, 200, 5), (30, 15, 1), (10000, 500, 100), (5, 7, 1)])
def test_logging_steps_land_on_every_eval_step(max_steps, eval_steps, expected):
    cfg = parse_params(
        tiny_pretrain_params(
            Path("/tmp"),
            yaml.safe_load((REPO_ROOT / "params.yaml").read_text()),
            max_steps=max_steps,
            eval_steps=eval_steps,
        )
    ).pretrain.gpt
    steps = pt._logging_steps(cfg)
    assert steps == expected and eval_steps % steps == 0


def test_loss_rows_join_eval_loss_on_its_step():
    history = [
        {"loss": 7.0, "step": 1},
        {"loss": 6.5, "step": 5},
        {"eval_loss": 6.4, "step": 5},
        {"train_runtime": 3.0, "step": 5},
    ]
    assert pt.loss_rows(history) == [
        {"step": 1, "loss": 7.0, "eval_loss": ""},
        {"step": 5, "loss": 6.5, "eval_loss": 6.4},
    ]
