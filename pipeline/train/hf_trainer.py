"""transformers Trainer pieces for fine-tuning: MLflow per-epoch logging, a training-speed meter, Trainers that
predict in the dataset's order, and one that adds the metrics of generated text (BLEU/chrF, ROUGE, QA's EM/F1) to
each validation pass (model selection on what the model generates)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
from torch.utils.data import SequentialSampler
from transformers import Seq2SeqTrainer, Trainer, TrainerCallback
from transformers.trainer_utils import EvalPrediction, has_length

from pipeline.core.metrics import text_metrics

log = logging.getLogger(__name__)

SPEED_SUFFIXES = ("_runtime", "_per_second")


def epoch_of(state) -> int:
    return int(round(state.epoch or 0))


class MlflowEpochLogger(TrainerCallback):
    """Per-epoch train loss (train_loss) and validation metrics (val_<name>) to the active run, step = epoch."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        import mlflow

        if not logs or not state.is_world_process_zero:  # under torchrun only rank 0 has the MLflow run
            return
        values = {}
        if "loss" in logs:
            values["train_loss"] = float(logs["loss"])
        for key, value in logs.items():
            if key.startswith("eval_") and isinstance(value, (int, float)) and not key.endswith(SPEED_SUFFIXES):
                values["val_" + key[len("eval_") :]] = float(value)
        if values:
            mlflow.log_metrics(values, step=epoch_of(state))


class TrainingSpeed(TrainerCallback):
    """Seconds spent in training steps (evaluation excluded) and non-padding input tokens they consumed."""

    def __init__(self):
        self.step_seconds = 0.0
        self.tokens = 0
        self._t0 = None
        self._tokens0 = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._tokens0 = state.num_input_tokens_seen

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._t0 is not None:
            self.step_seconds += time.perf_counter() - self._t0
            self._t0 = None

    def on_train_end(self, args, state, control, **kwargs):
        self.tokens = state.num_input_tokens_seen - self._tokens0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.step_seconds if self.step_seconds else 0.0


class OrderedEvaluation:
    """Evaluation and prediction batches of similar lengths, the predictions back in the dataset's order.

    The batches go longest first (padding only to their own longest text: in dataset order a batch of 64 pads to
    the longest of 64 random texts), then predictions, labels and what compute_metrics sees are put back in the
    dataset's order: the pipeline scores them against the rows by position (test items, QA windows). transformers
    5's "group_by_length" would shuffle them instead; only the training batches are grouped that way.
    `longest_first = False` turns it off (plain dataset order: bench/eval_order.py compares the two)."""

    longest_first: bool = True
    _eval_order: np.ndarray | None = None

    def _get_eval_sampler(self, eval_dataset):
        self._eval_order = None
        if eval_dataset is None or not has_length(eval_dataset):
            return None
        if self.args.world_size > 1:
            return None  # sharded in order
        if not self.longest_first or self.args.dataloader_persistent_workers:  # persistent: the loader is reused
            return SequentialSampler(eval_dataset)
        self._eval_order = longest_first(eval_dataset)
        if self._eval_order is None:
            return SequentialSampler(eval_dataset)
        return self._eval_order.tolist()

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        order, self._eval_order = self._eval_order, None
        if order is None:
            return super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        restore = np.argsort(order, kind="stable")  # position in the batches -> dataset row
        compute = self.compute_metrics
        if compute is not None:
            self.compute_metrics = lambda pred: compute(
                EvalPrediction(
                    predictions=in_order(pred.predictions, restore),
                    label_ids=in_order(pred.label_ids, restore),
                    inputs=in_order(pred.inputs, restore),
                    losses=pred.losses,
                )
            )
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        finally:
            self.compute_metrics = compute
        return output._replace(
            predictions=in_order(output.predictions, restore), label_ids=in_order(output.label_ids, restore)
        )


def longest_first(dataset) -> np.ndarray | None:
    """Row indices by input length, longest first (ties in dataset order); None without an input_ids column."""
    if "input_ids" not in getattr(dataset, "column_names", ()):
        return None
    lengths = np.fromiter((len(ids) for ids in dataset["input_ids"]), dtype=np.int64, count=len(dataset))
    return np.argsort(-lengths, kind="stable")


def in_order(arrays, restore: np.ndarray):
    """arrays (one per example, in batch order; or a tuple/list of such, e.g. QA's start and end logits) in the
    dataset's order."""
    if arrays is None:
        return None
    if isinstance(arrays, (tuple, list)):
        return type(arrays)(in_order(a, restore) for a in arrays)
    return arrays[restore]


class OrderedTrainer(OrderedEvaluation, Trainer):
    pass


class OrderedSeq2SeqTrainer(OrderedEvaluation, Seq2SeqTrainer):
    pass


class GenerationEvalTrainer(OrderedTrainer):
    """Validation = loss plus the task kind's metrics (text_metrics) of greedy outputs for the validation
    sources (the first `sources` given: the caller caps them, generation is the dear part). A source may be anything
    the generator takes, e.g. a (question, context) pair for generative QA."""

    def __init__(
        self,
        *args,
        generator,
        sources: Sequence[str],
        references: Sequence[str],
        max_new_tokens: int,
        batch_size: int,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.generator = generator
        self.sources = list(sources)
        self.references = list(references)
        self.max_new_tokens = max_new_tokens
        self.generation_batch_size = batch_size

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if metric_key_prefix == "eval":
            outputs = self.generator.generate(
                self.sources, num_beams=1, max_new_tokens=self.max_new_tokens, batch_size=self.generation_batch_size
            )
            scores = text_metrics(self.generator.kind, self.references, outputs)
            for key, value in scores.items():
                output.metrics[f"{metric_key_prefix}_{key}"] = value
            log.info("validation (greedy, %d examples): %s", len(outputs), {k: round(v, 2) for k, v in scores.items()})
        return output


def best_epoch(trainer) -> int | None:
    """The epoch of the checkpoint the Trainer selected as best (None before any evaluation)."""
    best = trainer.state.best_global_step
    for entry in trainer.state.log_history:
        if entry.get("step") == best and "epoch" in entry:
            return int(round(entry["epoch"]))
    return None
