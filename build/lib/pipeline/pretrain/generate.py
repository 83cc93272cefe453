"""Generate stage: what the pretrained GPT writes, and how well it predicts held-out text.

    generate(params)

Reads data/pretrain/gpt/model (weights + tokenizer) and data/corpus/heldout.txt. Prompts are the first
`generate.num_prompts` held-out lines with at least `generate.prompt_words` words, cut to their first
`prompt_words` words (fixed by the corpus: the same prompts on every run). Each is completed by sampling
(`generate`: max_new_tokens, temperature, top_k, top_p; prompt i with the torch seed `seed + i`).
The held-out perplexity is the pretrain stage's measure (mean next-token loss over the held-out corpus cut into
blocks of the model's context size, at most MAX_EVAL_EXAMPLES blocks), on the published model.

Writes data/generate/samples.jsonl ({"prompt", "completion"} per line) and data/generate/metrics.json, each
atomically; logs one MLflow run `generate-gpt` in the `pretraining` experiment (the generate params, the
perplexity, the samples as a table) and registers the model as `generation-gpt`, a pyfunc that completes prompts
(pipeline.models.pyfunc.GenerationModel).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
from pathlib import Path

from pipeline.core import paths
from pipeline.core.config import GenerateConfig, Params
from pipeline.core.io import write_json, write_text
from pipeline.data.corpus import read_corpus
from pipeline.models.generation import TextGenerator
from pipeline.models.pyfunc import GenerationModel
from pipeline.pretrain.data import cap, lm_blocks
from pipeline.pretrain.run import MAX_EVAL_EXAMPLES, evaluate_gpt
from pipeline.tracking import runs as tracking
from pipeline.tracking.registry import register_pyfunc

log = logging.getLogger(__name__)

FAMILY = "gpt"
SAMPLES_FILE = "samples.jsonl"
METRICS_FILE = "metrics.json"
REGISTERED_TASK = "generation"  # registered as tracking.registered_name("generation", "gpt") = "generation-gpt"
EVAL_BATCH_SIZE = 16
INPUT_EXAMPLE = ["The history of"]


class GenerateError(RuntimeError):
    """The pretrained model or the held-out corpus cannot give the prompts or the perplexity."""


def select_prompts(docs: list[str], num_prompts: int, prompt_words: int) -> list[str]:
    """The first `num_prompts` documents with at least `prompt_words` words, cut to their first `prompt_words`."""
    prompts = [" ".join(doc.split()[:prompt_words]) for doc in docs if len(doc.split()) >= prompt_words]
    if not prompts:
        raise GenerateError(
            f"no held-out corpus line has {prompt_words} words: lower generate.prompt_words or rebuild the corpus"
        )
    if len(prompts) < num_prompts:
        log.warning("only %d held-out lines have %d words (num_prompts %d)", len(prompts), prompt_words, num_prompts)
    return prompts[:num_prompts]


def sampling(cfg: GenerateConfig) -> dict:
    """The settings TextGenerator.complete and the registered model's requests take."""
    return {
        "max_new_tokens": cfg.max_new_tokens,
        "temperature": cfg.temperature,
        "top_k": cfg.top_k,
        "top_p": cfg.top_p,
        "seed": cfg.seed,
    }


def heldout_perplexity(generator: TextGenerator, docs: list[str]) -> dict[str, float]:
    """{"loss", "perplexity", "blocks"} of the model on the held-out documents (blocks of its context size)."""
    blocks = cap(lm_blocks(docs, generator.tokenizer, generator.context_size, "held-out corpus"), MAX_EVAL_EXAMPLES)
    result = evaluate_gpt(generator.model, blocks, EVAL_BATCH_SIZE)
    if not math.isfinite(result["loss"]):
        raise GenerateError(f"the held-out loss is not finite ({result['loss']}): the model's weights are broken")
    return {**result, "blocks": len(blocks)}


def generate(params: Params) -> dict:
    """Sample the prompts' continuations, measure the held-out perplexity, write data/generate/, log to MLflow and
    register `generation-gpt`; returns the metrics written to metrics.json."""
    tracking.require_clean_tree("sample and register generation-gpt")
    cfg = params.generate
    if params.common.num_threads:
        import torch

        torch.set_num_threads(params.common.num_threads)
    model_dir = paths.pretrain_dir(FAMILY) / "model"
    if not model_dir.is_dir():
        raise GenerateError(f"{model_dir} not found: pretrain the GPT first (python -m flows.pretrain gpt)")
    generator = TextGenerator.load(model_dir)
    heldout = read_corpus("heldout")
    prompts = select_prompts(heldout, cfg.num_prompts, cfg.prompt_words)
    log.info("generate: %d prompts, %s", len(prompts), sampling(cfg))
    completions = generator.complete(prompts, **sampling(cfg))
    heldout_metrics = heldout_perplexity(generator, heldout)
    vocab_size = len(generator.tokenizer)
    metrics = {
        "family": FAMILY,
        "heldout": heldout_metrics,
        "vocab_size": vocab_size,
        "num_samples": len(prompts),
        "mean_completion_words": sum(len(c.split()) for c in completions) / len(completions),
    }
    log.info("held-out perplexity %.2f (vocabulary %d)", heldout_metrics["perplexity"], vocab_size)

    state = paths.checkpoint_dir("generate", FAMILY)
    tags = tracking.base_tags(
        params, family=FAMILY, source="pretrain", inputs=[str(paths.pretrain_dir(FAMILY) / "model"), str(paths.CORPUS)]
    )
    with tracking.stage_run(params, tracking.PRETRAIN_EXPERIMENT, f"generate-{FAMILY}", state_dir=state, tags=tags):
        import mlflow

        tracking.log_params_once({**tracking.flatten("generate", cfg), "vocab_size": vocab_size})
        mlflow.log_metrics(
            {
                "heldout_perplexity": heldout_metrics["perplexity"],
                "heldout_loss": heldout_metrics["loss"],
                "mean_completion_words": metrics["mean_completion_words"],
            }
        )
        mlflow.log_table({"prompt": prompts, "completion": completions}, artifact_file="samples.json")
        version = register_pyfunc(
            GenerationModel(**sampling(cfg)),
            {"model": model_dir},
            REGISTERED_TASK,
            FAMILY,
            input_example=INPUT_EXAMPLE,
            params=sampling(cfg),
        )
        metrics["registered_model"] = {"name": tracking.registered_name(REGISTERED_TASK, FAMILY), "version": version}
        _write_outputs(prompts, completions, metrics)
    shutil.rmtree(state, ignore_errors=True)
    with contextlib.suppress(OSError):
        paths.CHECKPOINTS.rmdir()  # only when no other stage keeps checkpoints there
    return metrics


def _write_outputs(prompts: list[str], completions: list[str], metrics: dict) -> None:
    lines = (json.dumps({"prompt": p, "completion": c}, ensure_ascii=False) for p, c in zip(prompts, completions))
    write_text(paths.GENERATE / SAMPLES_FILE, "".join(line + "\n" for line in lines))
    write_json(paths.GENERATE / METRICS_FILE, metrics)


def read_generation(root: Path | None = None) -> dict | None:
    """data/generate/metrics.json under `root` (default: cwd), or None when the generate stage has not run."""
    path = (root or Path.cwd()) / paths.GENERATE / METRICS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
