"""Pretrain this pipeline's own GPT (causal LM) and BERT (MLM + NSP) on the corpus, with the HF Trainer.

    pretrain("gpt", params) / pretrain("bert", params)

Reads data/corpus/{train,heldout}.txt and data/tokenizers/<family>/, writes data/pretrain/<family>/
{model/ (safetensors + tokenizer), metrics.json, plots/loss.csv} atomically and logs one MLflow run in the
`pretraining` experiment (params, per-step loss/lr, eval loss, held-out metrics before and after training,
train_time_s, param_count, tokens_per_s). train_time_s is the wall time of this process's trainer.train() (periodic
evals and checkpoint saves included; a resumed run counts only its own part); tokens_per_s is the non-padding
training tokens of that part divided by it.

Checkpoints go to checkpoints/pretrain-<family>/ (outside data/: DVC deletes a stage's outs before re-running
it) every `save_steps`. A run that was killed resumes from its last complete checkpoint and continues the same
MLflow run; the checkpoints are removed once the outputs are written. A checkpoint made with other params,
another corpus or another tokenizer is discarded (and its MLflow run marked KILLED) instead of resumed.

Sizes: params.yaml holds CPU-sized models (fp32). The gpu profile (profiles/gpu.yaml: bigger pretrain sizes and
more steps) is the GPU-sized alternative: `make run PROFILE=gpu`, or for one stage outside DVC
`HT_PROFILE=gpu python -m flows.pretrain gpt`. On CUDA, training uses bf16 autocast where the
card supports it (see `device_dtype()`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForPreTraining,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from pipeline.core import distributed, paths
from pipeline.core.config import PRETRAINED_FAMILIES, Params, PretrainModelConfig
from pipeline.core.io import atomic_dir, write_json
from pipeline.data.corpus import read_corpus
from pipeline.models.loading import load_tokenizer
from pipeline.pretrain.data import PretrainDataError, cap, lm_blocks, mlm_collator, nsp_pairs
from pipeline.tracking import runs as tracking
from pipeline.tracking.checkpoints import complete_checkpoints, files_digest, prepare_checkpoints

log = logging.getLogger(__name__)

INITIAL_METRICS_FILE = "initial_heldout.json"
# Evaluation runs on at most this many held-out examples (blocks / sentence pairs), to bound its time.
MAX_EVAL_EXAMPLES = 2000
# Trainer log keys -> MLflow metric names (the final summary keys such as train_runtime are not per-step).
STEP_METRICS = {
    "loss": "train_loss",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "eval_loss": "eval_loss",
}


def checkpoint_dir(family: str) -> Path:
    return paths.checkpoint_dir("pretrain", family)


def device_dtype() -> tuple[torch.device, torch.dtype]:
    """Where and in which precision to train: bf16 on a CUDA card that supports it, else fp32 (CPU bf16 is slow)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.device("cpu"), torch.float32


def _autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


# ---------------------------------------------------------------- models
def build_model(family: str, cfg: PretrainModelConfig, tokenizer) -> torch.nn.Module:
    vocab = len(tokenizer)
    if family == "gpt":
        config = GPT2Config(
            vocab_size=vocab,
            n_positions=cfg.block_size,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            # GPT-2's tanh GELU as one fused kernel: the same function as the default "gelu_new" (8 separate
            # elementwise ops), ~5 % faster per CPU training step (bench/README.md, cpu_utilisation).
            activation_function="gelu_pytorch_tanh",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return GPT2LMHeadModel(config)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=cfg.n_embd,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        intermediate_size=4 * cfg.n_embd,
        max_position_embeddings=cfg.block_size,
        pad_token_id=tokenizer.pad_token_id,
    )
    return BertForPreTraining(config)


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class BertPretrainer(Trainer):
    """BertForPreTraining's loss (mean MLM cross-entropy over the masked tokens + NSP cross-entropy) with the
    vocabulary projection applied to the masked positions only (~15 % of the tokens) instead of to all of them:
    the same loss and gradients, but at CPU sizes (128 wide, 8k vocabulary) that projection is most of a step's
    cost, so each step is about twice as fast (bench/README.md, Pretraining)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")  # [batch, seq], -100 where not masked
        nsp_labels = inputs.pop("next_sentence_label")  # [batch]
        hidden, pooled = model.bert(**inputs, return_dict=False)[:2]  # [batch, seq, hid], [batch, hid]
        chosen = labels != -100  # [batch, seq]
        logits = model.cls.predictions(hidden[chosen])  # [n_masked, vocab]
        mlm_loss = torch.nn.functional.cross_entropy(logits.float(), labels[chosen])
        nsp_logits = model.cls.seq_relationship(pooled)  # [batch, 2]
        loss = mlm_loss + torch.nn.functional.cross_entropy(nsp_logits.float(), nsp_labels)
        return (loss, {"loss": loss}) if return_outputs else loss


# ---------------------------------------------------------------- held-out evaluation
def _batches(dataset, batch_size: int, collate_fn):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)


@torch.no_grad()
def evaluate_gpt(model, dataset, batch_size: int) -> dict[str, float]:
    """Mean next-token loss over the held-out blocks (all blocks have the same length) and its perplexity."""
    device, dtype = next(model.parameters()).device, device_dtype()[1]
    model.eval()
    total, n = 0.0, 0
    for batch in _batches(dataset, batch_size, default_data_collator):
        input_ids = batch["input_ids"].to(device)  # [batch, block]
        with _autocast(device, dtype):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        total += loss.item() * input_ids.shape[0]
        n += input_ids.shape[0]
    loss = total / n
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


@torch.no_grad()
def evaluate_bert(model, dataset, tokenizer, mlm_probability: float, batch_size: int, seed: int) -> dict[str, float]:
    """MLM loss and accuracy on the masked positions, NSP loss and accuracy; the same masks on every call."""
    device, dtype = next(model.parameters()).device, device_dtype()[1]
    collator = mlm_collator(tokenizer, mlm_probability, seed=seed)
    model.eval()
    mlm_loss = mlm_correct = masked = nsp_loss = nsp_correct = pairs = 0.0
    for batch in _batches(dataset, batch_size, collator):
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")  # [batch, seq], -100 where not masked
        nsp_labels = batch.pop("next_sentence_label")  # [batch]
        with _autocast(device, dtype):
            out = model(**batch)
        logits = out.prediction_logits.float()  # [batch, seq, vocab]
        chosen = labels != -100  # [batch, seq]
        mlm_loss += torch.nn.functional.cross_entropy(logits[chosen], labels[chosen], reduction="sum").item()
        mlm_correct += (logits[chosen].argmax(-1) == labels[chosen]).sum().item()
        masked += chosen.sum().item()
        nsp_logits = out.seq_relationship_logits.float()  # [batch, 2]
        nsp_loss += torch.nn.functional.cross_entropy(nsp_logits, nsp_labels, reduction="sum").item()
        nsp_correct += (nsp_logits.argmax(-1) == nsp_labels).sum().item()
        pairs += nsp_labels.shape[0]
    return {
        "mlm_loss": mlm_loss / max(1, masked),
        "mlm_accuracy": mlm_correct / max(1, masked),
        "nsp_loss": nsp_loss / max(1, pairs),
        "nsp_accuracy": nsp_correct / max(1, pairs),
    }


# ---------------------------------------------------------------- Trainer callbacks
class MlflowStepLogger(TrainerCallback):
    """Per-step train loss, learning rate, grad norm and eval loss to the active MLflow run.

    Steps up to `skip_until` were already logged by the killed run this one resumes; they are not logged twice.
    """

    def __init__(self, skip_until: int = 0):
        self.skip_until = skip_until

    def on_log(self, args, state, control, logs=None, **kwargs):
        import mlflow

        if not logs or state.global_step <= self.skip_until or not state.is_world_process_zero:
            return
        values = {
            STEP_METRICS[k]: float(v) for k, v in logs.items() if k in STEP_METRICS and isinstance(v, (int, float))
        }
        if values:
            mlflow.log_metrics(values, step=state.global_step)


class ThroughputMeter(TrainerCallback):
    """Wall time, steps and non-padding tokens of this train() call (a resumed run counts its own part)."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_time = time.perf_counter()
        self.start_step = state.global_step
        self.start_tokens = state.num_input_tokens_seen

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.start_time
        self.steps = state.global_step - self.start_step
        self.tokens = state.num_input_tokens_seen - self.start_tokens


def _logged_until(run_id: str) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    steps = [m.step for key in ("train_loss", "eval_loss") for m in client.get_metric_history(run_id, key)]
    return max(steps, default=0)


def _logging_steps(cfg: PretrainModelConfig) -> int:
    """About 100 loss points per run, on a divisor of eval_steps so every eval lands on a logged step."""
    target = max(1, cfg.max_steps // 100)
    return max(d for d in range(1, cfg.eval_steps + 1) if cfg.eval_steps % d == 0 and d <= target)


# ---------------------------------------------------------------- checkpoints
def _fingerprint(family: str, params: Params) -> dict:
    """What a checkpoint was made from: resuming it is only valid when all of this is unchanged."""
    return {
        "family": family,
        "seed": params.common.seed,
        "pretrain": getattr(params.pretrain, family).model_dump(),
        "inputs": files_digest([paths.CORPUS, paths.tokenizer_dir(family)]),
    }


# ---------------------------------------------------------------- outputs
def loss_rows(log_history: list[dict]) -> list[dict]:
    """step, loss, eval_loss (blank where no eval ran at that step) from the Trainer's log history."""
    evals = {e["step"]: e["eval_loss"] for e in log_history if "eval_loss" in e}
    return [
        {
            "step": e["step"],
            "loss": round(e["loss"], 5),
            "eval_loss": round(evals[e["step"]], 5) if e["step"] in evals else "",
        }
        for e in log_history
        if "loss" in e and "step" in e
    ]


def _publish(family: str, model, tokenizer, metrics: dict, rows: list[dict]) -> Path:
    """model/, metrics.json and plots/loss.csv, swapped in for data/pretrain/<family> in one rename."""
    target = paths.pretrain_dir(family)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp / "model")  # safetensors
        tokenizer.save_pretrained(tmp / "model")
        write_json(tmp / "metrics.json", metrics)
        (tmp / "plots").mkdir()
        with open(tmp / "plots" / "loss.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["step", "loss", "eval_loss"])
            writer.writeheader()
            writer.writerows(rows)
    return target


# ---------------------------------------------------------------- the stage
def _training_args(family: str, cfg: PretrainModelConfig, params: Params) -> TrainingArguments:
    device, dtype = device_dtype()
    return TrainingArguments(
        output_dir=str(checkpoint_dir(family)),
        max_steps=cfg.max_steps,
        # the batch size is global: under torchrun each of N processes takes 1/N of it
        per_device_train_batch_size=distributed.per_process_batch(cfg.batch_size, f"pretrain.{family}.batch_size"),
        per_device_eval_batch_size=distributed.per_process_batch(cfg.batch_size * 2, f"pretrain.{family}.batch_size"),
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        logging_steps=_logging_steps(cfg),
        logging_first_step=True,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        prediction_loss_only=True,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        seed=params.common.seed,
        data_seed=params.common.seed,
        bf16=dtype == torch.bfloat16,
        use_cpu=device.type == "cpu",
        dataloader_num_workers=0,
        # BERT pairs range from a few words (task texts) to a block (wikitext): batches of similar lengths pad less.
        train_sampling_strategy="group_by_length" if family == "bert" else "random",
    )


def _trainer(model, args: TrainingArguments, collator, train, heldout, tokenizer, callbacks: list) -> Trainer:
    trainer_class = BertPretrainer if isinstance(model, BertForPreTraining) else Trainer
    return trainer_class(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train,
        eval_dataset=heldout,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def _datasets(family: str, cfg: PretrainModelConfig, tokenizer, seed: int):
    train_docs, heldout_docs = read_corpus("train"), read_corpus("heldout")
    if family == "gpt":
        train = lm_blocks(train_docs, tokenizer, cfg.block_size, "train corpus")
        heldout = lm_blocks(heldout_docs, tokenizer, cfg.block_size, "held-out corpus")
        return train, cap(heldout, MAX_EVAL_EXAMPLES), default_data_collator
    pairs = {"negatives": cfg.nsp_negatives, "split_single": cfg.split_single_sentences}
    train = nsp_pairs(train_docs, tokenizer, cfg.block_size, seed, "train corpus", **pairs)
    heldout = nsp_pairs(heldout_docs, tokenizer, cfg.block_size, seed + 1, "held-out corpus", **pairs)
    return train, cap(heldout, MAX_EVAL_EXAMPLES), mlm_collator(tokenizer, cfg.mlm_probability)


def evaluate_heldout(family: str, model, heldout, tokenizer, cfg: PretrainModelConfig, seed: int) -> dict[str, float]:
    if family == "gpt":
        return evaluate_gpt(model, heldout, cfg.batch_size * 2)
    return evaluate_bert(model, heldout, tokenizer, cfg.mlm_probability, cfg.batch_size * 2, seed)


def pretrain(family: str, params: Params) -> dict:
    """Pretrain `family` (gpt | bert) from scratch; returns the metrics written to metrics.json."""
    if family not in PRETRAINED_FAMILIES:
        raise ValueError(f"unknown pretraining family {family!r}: choose one of {list(PRETRAINED_FAMILIES)}")
    cfg: PretrainModelConfig = getattr(params.pretrain, family)
    if params.common.num_threads:
        torch.set_num_threads(params.common.num_threads)
    seed = params.common.seed
    set_seed(seed)

    tokenizer = load_tokenizer(paths.tokenizer_dir(family))
    train, heldout, collator = _datasets(family, cfg, tokenizer, seed)
    tokenizer.model_max_length = cfg.block_size  # saved with the model: fine-tuning truncates to the positions
    model = build_model(family, cfg, tokenizer)
    device, dtype = device_dtype()
    n_params = param_count(model)
    log.info(
        "%s: %.2fM parameters, %d train / %d held-out examples, %s %s",
        family,
        n_params / 1e6,
        len(train),
        len(heldout),
        device,
        dtype,
    )

    folder = checkpoint_dir(family)
    args = _training_args(family, cfg, params)  # under torchrun: joins the process group
    main = distributed.is_main()
    # rank 0 decides whether to resume (and cleans up); the others follow it
    resume_from = prepare_checkpoints(folder, _fingerprint(family, params), params) if main else None
    distributed.barrier()
    if not main:
        resume_from = (complete_checkpoints(folder) or [None])[-1]
    tags = tracking.base_tags(
        params, family=family, source="scratch", inputs=[str(paths.CORPUS), str(paths.tokenizer_dir(family))]
    )
    # only rank 0 (or the only process) has the MLflow run, evaluates held-out outside the Trainer and saves
    run_context = (
        tracking.stage_run(params, tracking.PRETRAIN_EXPERIMENT, f"pretrain-{family}", state_dir=folder, tags=tags)
        if main
        else contextlib.nullcontext()
    )
    with run_context as run:
        import mlflow

        if not main:
            trainer = _trainer(model, args, collator, train, heldout, tokenizer, [ThroughputMeter()])
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            return {}
        tracking.log_params_once(
            {
                **tracking.flatten(f"pretrain.{family}", cfg),
                "common.seed": seed,
                "family": family,
                "vocab_size": len(tokenizer),
                "train_examples": len(train),
                "heldout_examples": len(heldout),
                "device": device.type,
                "dtype": str(dtype).removeprefix("torch."),
                "processes": distributed.world_size(),
            }
        )
        initial_file = folder / INITIAL_METRICS_FILE
        if initial_file.exists():
            initial = json.loads(initial_file.read_text())
        else:
            model.to(device)
            initial = evaluate_heldout(family, model, heldout, tokenizer, cfg, seed)
            write_json(initial_file, initial)
            mlflow.log_metrics({f"heldout_initial_{k}": v for k, v in initial.items()})
            log.info("untrained model, held-out: %s", initial)

        meter = ThroughputMeter()
        trainer = _trainer(
            model, args, collator, train, heldout, tokenizer, [MlflowStepLogger(_logged_until(run.info.run_id)), meter]
        )
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

        final = evaluate_heldout(family, trainer.model, heldout, tokenizer, cfg, seed)
        log.info("trained model, held-out: %s", final)
        tokens_per_s = meter.tokens / meter.seconds if meter.seconds > 0 else 0.0
        metrics = {
            "family": family,
            "heldout": final,
            "heldout_initial": initial,
            "param_count": n_params,
            "train_time_s": round(meter.seconds, 2),
            "tokens_per_s": round(tokens_per_s, 1),
            "steps": trainer.state.global_step,
            "steps_this_run": meter.steps,
            "resumed_from_step": int(resume_from.name.split("-")[-1]) if resume_from else 0,
            "tokens_seen": trainer.state.num_input_tokens_seen,
        }
        trainer.model.config.use_cache = True  # the Trainer turns the KV cache off; generation wants it
        target = _publish(family, trainer.model, tokenizer, metrics, loss_rows(trainer.state.log_history))
        mlflow.log_metrics(
            {
                **{f"heldout_{k}": v for k, v in final.items()},
                "train_time_s": meter.seconds,
                "param_count": n_params,
                "tokens_per_s": tokens_per_s,
            }
        )
        mlflow.log_artifact(str(target / "metrics.json"))
        mlflow.log_artifact(str(target / "plots" / "loss.csv"), artifact_path="plots")
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        paths.CHECKPOINTS.rmdir()  # only when no other stage keeps checkpoints there
    log.info("%s pretrained: %s", family, target)
    return metrics


__all__ = ["pretrain", "device_dtype", "build_model", "checkpoint_dir", "PretrainDataError"]
