"""transformers Trainer pieces for fine-tuning: MLflow per-epoch logging, a training-speed meter, Trainers that
predict in the dataset's order, and one that adds the metrics of generated text (BLEU/chrF, ROUGE, QA's EM/F1) to
each validation pass (model selection on what the model generates)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from torch.utils.data import SequentialSampler
from transformers import Seq2SeqTrainer, Trainer, TrainerCallback
from transformers.trainer_utils import has_length

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
    """Evaluation and prediction batches in the dataset's order. With train_sampling_strategy "group_by_length",
    transformers 5 also draws them length-grouped, i.e. shuffled: the pipeline scores predictions against the rows
    by position (test items, QA windows), so only the training batches are grouped."""

    def _get_eval_sampler(self, eval_dataset):
        if eval_dataset is None or not has_length(eval_dataset):
            return None
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None  # None: sharded in order


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
