"""The one training driver: any model family on any task.

    train(model, task, params) -> dict   (the summary written to data/models/<model>-<task>/metrics.json)

The same steps for every family (pipeline/train/family.py says what a family provides):
- settings resolved once (pipeline/core/run_settings.py); checkpoints in checkpoints/<stage>-<model>-<task>/, resumed
  when their fingerprint (settings, inputs, the family's own) matches;
- one MLflow run in experiment task-<task> (a killed run resumes it), the same core params and tags for every
  family; per-epoch metrics come from the family's fit;
- the test split scored once by the selected model, batch-1 latency, model logged and registered as
  <task>-<model>;
- outputs written atomically: data/models/<model>-<task>/{metrics.json, test_items.jsonl, plots/} (learning curve,
  confusion matrix, attention heatmaps); test_items.jsonl holds one {"gold", "prediction"} per test example (the
  compare stage's bootstrap resamples them, pipeline/compare/significance.py), plus examples.jsonl for tasks that
  write text (the first test examples' source, reference and output; also an MLflow table,
  pipeline/train/examples.py); the checkpoints are removed after
  success.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import contextmanager

from pipeline.core import distributed, paths
from pipeline.core.config import PRETRAINED_FAMILIES, Params
from pipeline.core.io import METRICS_FILE, PLOTS_DIR, TEST_ITEMS_FILE, atomic_dir, write_json
from pipeline.core.run_settings import RunSettings
from pipeline.data.task_data import load_prepared, train_share
from pipeline.tracking import runs
from pipeline.tracking.checkpoints import files_digest, prepare_checkpoints
from pipeline.train.attention_plots import save_heatmap
from pipeline.train.examples import EXAMPLES_FILE, log_examples, run_examples, write_examples
from pipeline.train.family import (
    ATTENTION_EXAMPLES,
    LATENCY_EXAMPLES,
    AttentionMap,
    ModelFamily,
    TestScores,
    TrainOutcome,
    measure_latency_ms,
)
from pipeline.train.plots import write_confusion, write_learning_curve

log = logging.getLogger(__name__)

EXPORT_DIR = "export"  # inside the checkpoint folder: the selected model saved for MLflow


def family_class(family: str) -> type[ModelFamily]:
    """The family's implementation (imported on demand: an rnn stage never loads transformers' Trainer)."""
    if family in PRETRAINED_FAMILIES:
        from pipeline.train.finetune import PretrainedTransformer

        return PretrainedTransformer
    if family == "rnn":
        from pipeline.train.rnn import RNNText2Text

        return RNNText2Text
    if family == "encdec":
        from pipeline.train.encdec import EncDecText2Text

        return EncDecText2Text
    raise ValueError(f"no trainer for family {family!r}")


def build(model: str, task: str, params: Params, data=None) -> ModelFamily:
    """The family trainer of `model` for `task` (data: the prepared DatasetDict, loaded when not given)."""
    import torch

    settings = RunSettings.resolve(model, task, params)
    if params.common.num_threads:
        torch.set_num_threads(params.common.num_threads)
    data = data if data is not None else load_prepared(task)
    share = train_share(data, settings.training.max_train_examples, settings.seed)
    if share is not data:
        log.info(
            "%s-%s trains on %d of the %d prepared training examples (train.tasks.%s.max_train_examples, or its "
            "train.overrides)",
            model,
            task,
            len(share["train"]),
            len(data["train"]),
            task,
        )
    return family_class(settings.family)(settings, share, params)


class PhaseTimer:
    """Wall time of the driver's phases (seconds), for metrics.json's `timing` (the benchmark reads it)."""

    PHASES = ("load_s", "fit_s", "test_s", "latency_s", "register_s", "plots_s")

    def __init__(self):
        self.start = time.perf_counter()
        self.seconds = dict.fromkeys(self.PHASES, 0.0)

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def as_dict(self) -> dict[str, float]:
        return {
            **{k: round(v, 3) for k, v in self.seconds.items()},
            "total_s": round(time.perf_counter() - self.start, 3),
        }


def train(model: str, task: str, params: Params) -> dict:
    """Train `model` on `task` (fine-tune when it starts from pretrained weights); returns the run summary.

    metrics.json also gets `timing`: seconds of each phase (load: settings, data, model and tokenizer; fit: the
    training loop incl. its per-epoch validation; test: scoring the test split; latency: the batch-1 meter;
    register: logging + registering the model; plots: plots, metrics.json and their MLflow copies) and the
    driver's total (the process start, imports and MLflow run set-up are the rest of a stage's wall time)."""
    import mlflow

    main = distributed.is_main()  # under torchrun only rank 0 logs, saves and registers
    if main:
        runs.require_clean_tree(f"train and register {model}-{task}")
    timer = PhaseTimer()
    with timer.phase("load_s"):
        trainer = build(model, task, params)
    s = trainer.settings
    log.info(
        "%s %s (%s, %s) on %s", "fine-tuning" if s.stage == "finetune" else "training", model, s.family, s.init, task
    )
    inputs = [paths.prepared_dir(task), *trainer.inputs]
    fingerprint = {**s.as_dict(), "family": trainer.fingerprint(), "inputs": files_digest(inputs)}
    folder = s.checkpoint_dir
    resume = prepare_checkpoints(folder, fingerprint, params) if main else None
    distributed.barrier()  # rank 0 has decided whether to resume (and cleaned up)
    if not main:
        return _follow(trainer, folder)
    tags = runs.base_tags(params, family=s.family, source=s.source, inputs=inputs, extra=s.tags())
    with runs.stage_run(params, runs.task_experiment(task), s.name, folder, tags) as run:
        runs.log_params_once(
            {
                **s.mlflow_params(),
                "train_examples": len(trainer.data["train"]),
                "torch_threads": _torch_threads(),  # CPU results reproduce exactly only with the same count
                **trainer.describe(),
            }
        )
        with timer.phase("fit_s"):
            outcome = trainer.fit(resume)
        with timer.phase("test_s"):
            scores = trainer.score_test()
        log.info("%s test: %s", s.name, json.dumps({k: round(v, 4) for k, v in scores.metrics.items()}))
        with timer.phase("latency_s"):
            latency = measure_latency_ms(trainer.infer_one, trainer.latency_examples(LATENCY_EXAMPLES))
        summary = run_summary(s, outcome, scores, latency, run.info.run_id)
        mlflow.log_metrics({f"test_{k}": v for k, v in scores.metrics.items()})
        mlflow.log_metrics(
            {k: float(summary[k]) for k in ("param_count", "train_time_s", "tokens_per_s", "latency_ms_per_example")}
        )
        with timer.phase("register_s"):
            summary["registered_version"] = trainer.register(folder / EXPORT_DIR)
        with timer.phase("plots_s"):
            examples = run_examples(s.kind, trainer.data["test"], scores.items)
            log_examples(examples)
            summary["timing"] = timer.as_dict()  # plots_s and total_s up to here; final values below
            out = write_outputs(s, summary, outcome, scores, trainer.attention_maps(ATTENTION_EXAMPLES), examples)
            mlflow.log_artifacts(str(out / PLOTS_DIR), artifact_path="plots")
        summary["timing"] = timer.as_dict()
        write_json(out / METRICS_FILE, summary)
        mlflow.log_artifact(str(out / METRICS_FILE))
    shutil.rmtree(folder, ignore_errors=True)  # finished: the next run of this stage starts fresh
    log.info("%s done -> %s", s.name, out)
    return summary


def _follow(trainer: ModelFamily, folder) -> dict:
    """A torchrun worker of rank > 0: train alongside rank 0 (DDP), take part in test scoring when it is
    collective (Trainer.predict), nothing else."""
    from pipeline.tracking.checkpoints import complete_checkpoints

    trainer.fit((complete_checkpoints(folder) or [None])[-1])
    if trainer.collective_scoring:
        trainer.score_test()
    return {}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def run_summary(s: RunSettings, outcome: TrainOutcome, scores: TestScores, latency_ms: float, run_id: str) -> dict:
    return {
        "task": s.task,
        "model": s.model,
        "family": s.family,
        "stage": s.stage,
        "init": s.init,
        "weight_source": s.source,
        "test": scores.metrics,
        "param_count": outcome.param_count,
        "train_time_s": round(outcome.train_time_s, 3),
        "tokens_per_s": round(outcome.tokens_per_s, 2),
        "latency_ms_per_example": round(latency_ms, 3),
        "best_epoch": outcome.best_epoch,
        "mlflow_run_id": run_id,
    }


def write_outputs(
    s: RunSettings,
    summary: dict,
    outcome: TrainOutcome,
    scores: TestScores,
    attention: list[AttentionMap],
    examples: list[dict] | None = None,
):
    """data/models/<model>-<task>/{metrics.json, test_items.jsonl, plots/, examples.jsonl} built in a temp folder, then
    swapped in."""
    if scores.items is None:
        raise ValueError(f"{s.name}: the {s.family} family's score_test gave no per-example items (TestScores.items)")
    with atomic_dir(s.output_dir) as tmp:
        plots = tmp / PLOTS_DIR
        write_learning_curve(plots, outcome.curve)
        if scores.confusion is not None:
            write_confusion(plots, *scores.confusion)
        for i, amap in enumerate(attention):
            save_heatmap(
                amap.weights,
                amap.source,
                amap.output,
                plots / f"attention_{i}.png",
                title=f"{s.model} on {s.task}: validation example {i}",
            )
        if examples:
            write_examples(tmp / EXAMPLES_FILE, examples)
        write_json(tmp / METRICS_FILE, summary)
        write_items(tmp / TEST_ITEMS_FILE, scores.items)
    return s.output_dir


def write_items(path, items: list[dict]) -> None:
    """JSON lines, one test example each ({"gold": ..., "prediction": ...}), in test-split order."""
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
