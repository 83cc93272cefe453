"""The generate stage: prompts from the held-out corpus, seeded sampling from the GPT, held-out perplexity,
outputs, the MLflow run (samples table) and the registered `generation-gpt` pyfunc model."""

from __future__ import annotations

import json
import math

import mlflow
import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from pipeline.core.config import parse_params
from pipeline.models.generation import TextGenerator
from pipeline.models.loading import load_tokenizer
from pipeline.pretrain.generate import GenerateError, generate, read_generation, select_prompts
from tests.fixtures.models import copy_pretrain_inputs, tiny_pretrain_params

SAMPLING = {"max_new_tokens": 6, "temperature": 0.9, "top_k": 20, "top_p": 0.95, "seed": 3}


def test_prompts_are_the_first_long_enough_lines_cut_to_their_first_words():
    docs = ["too short line", "one two three four five six", "a b c d e", "x y z w v u t"]
    assert select_prompts(docs, 2, 5) == ["one two three four five", "a b c d e"]
    assert select_prompts(docs, 9, 7) == ["x y z w v u t"]  # fewer than asked: those there are
    with pytest.raises(GenerateError, match="no held-out corpus line has 8 words"):
        select_prompts(docs, 2, 8)


@pytest.fixture(scope="module")
def random_gpt(pretrain_inputs) -> TextGenerator:
    """An untrained tiny GPT with the tiny corpus' BPE tokenizer."""
    tokenizer = load_tokenizer(pretrain_inputs / "data" / "tokenizers" / "gpt")
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=32,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return TextGenerator(GPT2LMHeadModel(config), tokenizer)


def test_sampling_is_seeded_per_prompt(random_gpt):
    prompts = ["The history of the", "i feel like a"]
    first = random_gpt.complete(prompts, **SAMPLING)
    assert random_gpt.complete(prompts, **SAMPLING) == first  # same prompts, same seed: same samples
    assert all(isinstance(c, str) and c.strip() for c in first)
    assert random_gpt.complete(prompts[1:], **SAMPLING)[0] != first[1]  # prompt i is seeded with seed + i ...
    assert random_gpt.complete(prompts[:1], **SAMPLING) == first[:1]  # ... not by the rest of the request
    others = [random_gpt.complete(prompts, **{**SAMPLING, "seed": s}) for s in (4, 5)]
    assert any(o != first for o in others)


def test_a_long_prompt_keeps_its_end_within_the_context(random_gpt):
    long_prompt = " ".join(["word"] * 200)  # far more tokens than the 32 positions
    (completion,) = random_gpt.complete([long_prompt], **{**SAMPLING, "max_new_tokens": 100})
    assert isinstance(completion, str)


# ---------------------------------------------------------------- the stage on a tiny pretrained GPT
@pytest.fixture
def generate_repo(pretrained_repo, pretrain_inputs, default_params_dict):
    copy_pretrain_inputs(pretrain_inputs, pretrained_repo)  # data/corpus (+ tokenizers)
    raw = tiny_pretrain_params(pretrained_repo, default_params_dict)
    raw["generate"].update(num_prompts=4, max_new_tokens=8)
    return pretrained_repo, parse_params(raw)


@pytest.mark.slow
def test_generate_writes_samples_perplexity_mlflow_table_and_a_registered_model(generate_repo):
    root, params = generate_repo
    assert read_generation(root) is None
    metrics = generate(params)

    samples = [json.loads(line) for line in (root / "data/generate/samples.jsonl").read_text().splitlines()]
    heldout = (root / "data/corpus/heldout.txt").read_text().splitlines()
    assert len(samples) == 4 and all(set(s) == {"prompt", "completion"} for s in samples)
    assert [s["prompt"] for s in samples] == select_prompts(heldout, 4, params.generate.prompt_words)
    assert any(s["completion"].strip() for s in samples)

    assert read_generation(root) == metrics == json.loads((root / "data/generate/metrics.json").read_text())
    perplexity, vocab = metrics["heldout"]["perplexity"], metrics["vocab_size"]
    assert math.isfinite(perplexity) and 1 < perplexity < vocab, metrics  # an untrained model scores ~vocab
    pretrained = json.loads((root / "data/pretrain/gpt/metrics.json").read_text())
    assert perplexity < pretrained["heldout_initial"]["perplexity"]

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("pretraining")
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'generate-gpt'")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["heldout_perplexity"] == pytest.approx(perplexity)
    assert run.data.params["generate.num_prompts"] == "4" and run.data.params["generate.seed"] == "42"
    table = client.load_table(experiment.experiment_id, "samples.json", run_ids=[run.info.run_id])
    assert table["prompt"].tolist() == [s["prompt"] for s in samples]
    assert table["completion"].tolist() == [s["completion"] for s in samples]

    assert metrics["registered_model"] == {"name": "generation-gpt", "version": "1"}
    model = mlflow.pyfunc.load_model("models:/generation-gpt/latest")
    (completion,) = model.predict(["The history of"])
    assert isinstance(completion, str) and completion.strip()
    assert model.predict(["The history of"]) == [completion]  # the registered settings, seeded
    short = model.predict(["The history of"], params={"max_new_tokens": 2, "seed": 7})
    assert len(short) == 1 and len(short[0].split()) <= 2 + 1
