"""Fine-tune a pretrained transformer (gpt, bert, minilm) on one task; track, register and publish it.

    finetune(model, task, params) -> dict   (the metrics written to data/models/<model>-<task>/metrics.json)

- transformers Trainer: dynamic padding, validation every epoch, best epoch kept (task's main metric),
  early stopping, checkpoints in checkpoints/finetune-<model>-<task>/. A killed run resumes from its last
  complete checkpoint and continues the same MLflow run; the checkpoints are deleted after success.
- The test split is scored once, by the selected checkpoint.
- MLflow (experiment task-<task>): tags, params, per-epoch train/validation metrics (step = epoch),
  test_* metrics, train_time_s, param_count, tokens_per_s, latency_ms_per_example; the model is logged
  and registered as <task>-<model>.
- Outputs (atomic): data/models/<model>-<task>/{metrics.json, plots/learning_curve.csv, plots/confusion.csv}.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.core import paths

from pipeline.tracking import runs as tracking
from pipeline.tracking.checkpoints import files_digest, prepare_checkpoints
from pipeline.core.config import Params
from pipeline.train.finetune_setup import TaskSetup, argmax_logits, build_setup
from pipeline.train.hf_trainer import GenerationEvalTrainer, MlflowEpochLogger, TrainingSpeed, best_epoch
from pipeline.core.metrics import classification_metrics, ner_metrics, translation_metrics
from pipeline.core.io import METRICS_FILE, PLOTS_DIR, atomic_dir, write_json
from pipeline.train.plots import learning_curve_from_history, write_confusion, write_learning_curve
from pipeline.data.task_data import load_prepared, word_predictions

log = logging.getLogger(__name__)

EXPORT_DIR = "export"  # inside the checkpoint folder: the selected model saved for MLflow
LATENCY_EXAMPLES = 20
FAMILIES = ("gpt", "bert")


class FinetuneError(RuntimeError):
    """The model or task cannot be fine-tuned as configured."""


def checkpoint_dir(model: str, task: str) -> Path:
    return paths.CHECKPOINTS / f"finetune-{model}-{task}"


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _model_config(model: str, params: Params):
    if model not in params.models:
        raise FinetuneError(f"models.{model}: no such model in params.yaml (have {sorted(params.models)})")
    cfg = params.models[model]
    if cfg.family not in FAMILIES:
        raise FinetuneError(
            f"models.{model}: family {cfg.family!r} is trained from scratch (pipeline.train.text2text), not fine-tuned; "
            f"fine-tuning takes families {list(FAMILIES)}"
        )
    return cfg


def _weights_path(model: str, params: Params) -> Path:
    from pipeline.models.loading import check_checkpoint_folder, resolve_model_path

    path = resolve_model_path(model, params)
    if Path(path).is_dir():
        check_checkpoint_folder(path)  # safetensors weights and a tokenizer
    return Path(path)


def _device_settings() -> dict:
    cuda = torch.cuda.is_available()
    return {"use_cpu": not cuda, "bf16": cuda and torch.cuda.is_bf16_supported()}


def _training_args(setup: TaskSetup, folder: Path, model: str, task: str, params: Params, resuming: bool):
    from transformers import TrainingArguments

    run = params.train.for_run(model, task)
    common = params.train.common
    return TrainingArguments(
        output_dir=str(folder),
        num_train_epochs=run.epochs,
        max_steps=run.max_steps or -1,
        per_device_train_batch_size=params.train.batch_size_for(model, task),
        per_device_eval_batch_size=common.eval_batch_size,
        learning_rate=run.learning_rate,
        weight_decay=common.weight_decay,
        warmup_steps=common.warmup_ratio,  # a float < 1 is a fraction of all steps
        eval_strategy="epoch",
        eval_on_start=not resuming,  # epoch 0 of the learning curve: the untrained model's validation score
        save_strategy="epoch",
        logging_strategy="epoch",
        save_total_limit=common.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=setup.main_metric,
        greater_is_better=True,
        prediction_loss_only=setup.kind == "translation",  # translations are scored from generation
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        report_to="none",
        seed=params.common.seed,
        data_seed=params.common.seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
        **_device_settings(),
    )


def _trainer(setup: TaskSetup, folder: Path, model: str, task: str, params: Params, callbacks: list,
             resuming: bool):
    from transformers import EarlyStoppingCallback, Trainer

    kwargs = dict(
        model=setup.model,
        args=_training_args(setup, folder, model, task, params, resuming),
        train_dataset=setup.encoded["train"],
        eval_dataset=setup.encoded["validation"],
        data_collator=setup.collator,
        processing_class=setup.tokenizer,
        callbacks=[*callbacks, EarlyStoppingCallback(early_stopping_patience=params.train.common.patience)],
    )
    if setup.kind == "translation":
        validation = setup.data["validation"]
        return GenerationEvalTrainer(
            translator=setup.translator,
            sources=validation["en"],
            references=validation["de"],
            max_new_tokens=params.train.generation.max_new_tokens,
            batch_size=params.train.common.eval_batch_size,
            **kwargs,
        )
    return Trainer(compute_metrics=setup.compute_metrics, preprocess_logits_for_metrics=argmax_logits, **kwargs)


# ---------------------------------------------------------------- test scoring and latency
def score_test(setup: TaskSetup, trainer, params: Params) -> tuple[dict[str, float], tuple | None]:
    """Test metrics of the selected model; for classification also (actual, predicted) ids for the confusion plot."""
    test = setup.data["test"]
    if setup.kind == "translation":
        gen = params.train.generation
        options = dict(max_new_tokens=gen.max_new_tokens, length_penalty=gen.length_penalty,
                       batch_size=params.train.common.eval_batch_size, progress=True)
        greedy = translation_metrics(test["de"], setup.translator.translate(test["en"], num_beams=1, **options))
        hyps = setup.translator.translate(test["en"], num_beams=gen.num_beams, **options)
        beam = translation_metrics(test["de"], hyps)
        for source, hyp, ref in list(zip(test["en"], hyps, test["de"]))[:3]:
            log.info("test example:\n  en:  %s\n  hyp: %s\n  ref: %s", source, hyp, ref)
        return {**beam, **{f"{k}_greedy": v for k, v in greedy.items()}}, None
    output = trainer.predict(setup.encoded["test"], metric_key_prefix="test")
    predictions = np.asarray(output.predictions)
    if setup.kind == "classification":
        actual = [int(x) for x in test["label"]]
        predicted = predictions.tolist()
        return classification_metrics(actual, predicted, len(setup.labels)), (actual, predicted)
    # ner: truth = every word's tag (words cut off by max_length count as predicted 'O')
    pred_tags = [[setup.labels[p] for p in word_predictions(pred, [int(x) for x in labels])]
                 for pred, labels in zip(predictions, output.label_ids)]
    true_tags = [[setup.labels[t] for t in tags] for tags in test["ner_tags"]]
    return ner_metrics(true_tags, pred_tags), None


@torch.no_grad()
def latency_ms_per_example(setup: TaskSetup, params: Params, n: int = LATENCY_EXAMPLES) -> float:
    """Mean wall time of batch-1 inference (tokenize + forward or generate) over the first n test examples."""
    test = setup.data["test"].select(range(min(n, len(setup.data["test"]))))
    model = setup.model
    model.eval()
    if setup.kind == "translation":
        gen = params.train.generation

        def run(row):
            setup.translator.translate([row["en"]], num_beams=gen.num_beams, max_new_tokens=gen.max_new_tokens,
                                       length_penalty=gen.length_penalty)
    else:
        def run(row):
            text = row["text"] if setup.kind == "classification" else " ".join(row["tokens"])
            enc = setup.tokenizer(text, truncation=True, max_length=setup.max_length, return_tensors="pt",
                                  return_token_type_ids=False).to(model.device)
            model(**enc).logits.argmax(-1)

    run(test[0])  # warm-up
    start = time.perf_counter()
    for row in test:
        run(row)
    return (time.perf_counter() - start) * 1000 / len(test)


# ---------------------------------------------------------------- registration
# A served request's texts go through the model this many at a time (the transformers pipeline's default is one).
SERVING_BATCH_SIZE = 32


def register(setup: TaskSetup, model: str, task: str, params: Params, export_dir: Path) -> str:
    from pipeline.tracking import registry

    test = setup.data["test"]
    if setup.kind == "classification":
        from transformers import pipeline as hf_pipeline

        setup.tokenizer.model_max_length = setup.max_length  # served inputs are truncated like training ones
        pipe = hf_pipeline("text-classification", model=setup.model, tokenizer=setup.tokenizer)
        return registry.register_transformers(pipe, task, model, input_example=list(test["text"][:2]),
                                              model_config={"truncation": True, "batch_size": SERVING_BATCH_SIZE})
    from pipeline.models.pyfunc import MODEL_ARTIFACT, NerModel, TranslationModel

    shutil.rmtree(export_dir, ignore_errors=True)
    if setup.kind == "ner":
        setup.model.save_pretrained(str(export_dir))
        setup.tokenizer.save_pretrained(str(export_dir))
        wrapper, example = NerModel(max_length=setup.max_length), [" ".join(t) for t in test["tokens"][:2]]
    else:
        setup.translator.save(export_dir)
        gen = params.train.generation
        wrapper = TranslationModel(gen.num_beams, gen.max_new_tokens, gen.length_penalty)
        example = list(test["en"][:2])
    return registry.register_pyfunc(wrapper, {MODEL_ARTIFACT: export_dir}, task, model, input_example=example)


# ---------------------------------------------------------------- the stage
def _fingerprint(model: str, task: str, params: Params, weights: Path, setup: TaskSetup) -> dict:
    return {
        "model": params.models[model].model_dump(),
        "run": params.train.for_run(model, task).model_dump(),
        "batch_size": params.train.batch_size_for(model, task),
        "common": params.train.common.model_dump(),
        "generation": params.train.generation.model_dump(),
        "seed": params.common.seed,
        "inputs": files_digest([paths.prepared_dir(task), weights, *setup.inputs]),
    }


def _run_params(model: str, task: str, params: Params, weights: Path, setup: TaskSetup) -> dict:
    flat = tracking.flatten
    return {
        **flat(f"models.{model}", params.models[model]),
        **flat("train.run", params.train.for_run(model, task)),
        "train.batch_size": params.train.batch_size_for(model, task),
        **flat("train.common", params.train.common),
        **flat("train.generation", params.train.generation),
        "common.seed": params.common.seed,
        "weights": str(weights),
        "max_length_used": setup.max_length,
        "train_examples": len(setup.data["train"]),
    }


def _write_outputs(model: str, task: str, summary: dict, curve: list[dict], confusion: tuple | None,
                   labels: list[str] | None) -> Path:
    target = paths.model_dir(model, task)
    with atomic_dir(target) as tmp:
        write_learning_curve(tmp / PLOTS_DIR, curve)
        if confusion is not None:
            write_confusion(tmp / PLOTS_DIR, *confusion, labels)
        write_json(tmp / METRICS_FILE, summary)
    return target


def finetune(model: str, task: str, params: Params) -> dict:
    """Fine-tune `model` on `task`; returns the summary written to data/models/<model>-<task>/metrics.json."""
    import mlflow
    from transformers import set_seed

    cfg = _model_config(model, params)
    if params.common.num_threads:
        torch.set_num_threads(params.common.num_threads)
    set_seed(params.common.seed)
    data = load_prepared(task)
    weights = _weights_path(model, params)
    log.info("fine-tuning %s (%s, %s weights from %s) on %s", model, cfg.family, cfg.source, weights, task)
    setup = build_setup(cfg.family, weights, task, data, params.train.for_run(model, task).max_length)

    folder = checkpoint_dir(model, task)
    resume = prepare_checkpoints(folder, _fingerprint(model, task, params, weights, setup), params)
    inputs = [paths.prepared_dir(task), *([weights] if cfg.source == "pretrain" else []), *setup.inputs]
    tags = tracking.base_tags(params, family=cfg.family, source=cfg.source, inputs=inputs,
                              extra={"task": task, "model": model})
    with tracking.stage_run(params, tracking.task_experiment(task), f"{model}-{task}", folder, tags) as run:
        tracking.log_params_once(_run_params(model, task, params, weights, setup))
        speed = TrainingSpeed()
        trainer = _trainer(setup, folder, model, task, params, [MlflowEpochLogger(), speed], resuming=bool(resume))
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        train_time = time.perf_counter() - start
        setup.model = trainer.model  # the selected (best) checkpoint's weights
        if setup.translator is not None:
            setup.translator.model = trainer.model

        test, confusion = score_test(setup, trainer, params)
        summary = {
            "task": task,
            "model": model,
            "family": cfg.family,
            "weight_source": cfg.source,
            "test": test,
            "param_count": param_count(setup.model),
            "train_time_s": round(train_time, 3),
            "tokens_per_s": round(speed.tokens_per_s, 2),
            "latency_ms_per_example": round(latency_ms_per_example(setup, params), 3),
            "best_epoch": best_epoch(trainer),
            "mlflow_run_id": run.info.run_id,
        }
        mlflow.log_metrics({f"test_{k}": v for k, v in test.items()})
        mlflow.log_metrics({k: float(summary[k]) for k in
                            ("param_count", "train_time_s", "tokens_per_s", "latency_ms_per_example")})
        summary["registered_version"] = register(setup, model, task, params, folder / EXPORT_DIR)
        curve = learning_curve_from_history(trainer.state.log_history)
        out = _write_outputs(model, task, summary, curve, confusion, setup.labels)
        mlflow.log_artifacts(str(out / PLOTS_DIR), artifact_path="plots")
        mlflow.log_artifact(str(out / METRICS_FILE))
    shutil.rmtree(folder, ignore_errors=True)
    log.info("%s-%s: test %s -> %s", model, task, {k: round(v, 4) for k, v in test.items()}, out)
    return summary

