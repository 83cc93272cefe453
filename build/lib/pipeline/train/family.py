"""What the training driver needs from a model family, and what a family hands back.

A family (pipeline/train/finetune.py for the pretrained transformers, rnn.py and encdec.py for the text-to-text
models trained from scratch) provides only its own parts: build (its constructor), describe, fit, score the test
split, one inference for the latency meter, attention maps (where it has them) and registration. The driver
(pipeline/train/driver.py) does the rest, the same way for every family.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.config import Params
from pipeline.core.run_settings import RunSettings

LATENCY_EXAMPLES = 20  # batch-1 inference over the first 20 test examples ...
LATENCY_BUDGET_S = 2.0  # ... or as many as fit in 2 s (at least LATENCY_MIN_EXAMPLES): beam search on long
LATENCY_MIN_EXAMPLES = 3  # inputs (encdec on squad/samsum) took 0.5 s a call, 10 s of the stage's fixed cost
ATTENTION_EXAMPLES = 3  # the first validation examples get an attention heatmap (families that have attention)


@dataclass
class TrainOutcome:
    curve: list[dict[str, float]]  # one row per epoch: epoch, train_loss, val_loss, val_<metric>...
    best_epoch: int | None
    train_time_s: float
    tokens_per_s: float
    param_count: int


@dataclass
class TestScores:
    metrics: dict[str, float]
    # classification: (actual ids, predicted ids, label names) for the confusion matrix; else None
    confusion: tuple[list[int], list[int], list[str]] | None = None
    # one {"gold": ..., "prediction": ...} per test example, JSON-serialisable, in the form the task kind's metric
    # function takes (classification: label ids; ner: tag lists; translation/summarization: texts; qa: the list of
    # reference answers and the predicted text): the compare stage recomputes metrics on bootstrap resamples
    items: list[dict] | None = None


@dataclass
class AttentionMap:
    source: list[str]
    output: list[str]
    weights: Any  # [output_len, source_len] array, rows sum to 1


class ModelFamily(ABC):
    """One model of one family, set up for one task (the prepared DatasetDict in `data`)."""

    family: str

    def __init__(self, settings: RunSettings, data, params: Params):
        self.settings, self.data, self.params = settings, data, params

    @property
    def inputs(self) -> list[Path]:
        """Folders the run reads besides data/prepared/<task> (weights, tokenizers): tags and fingerprint."""
        return []

    def fingerprint(self) -> dict:
        """What resumable checkpoints depend on besides the run settings and inputs (e.g. a vocabulary)."""
        return {}

    @abstractmethod
    def describe(self) -> dict[str, object]:
        """Family-specific run params for MLflow (tokenization, vocabulary, decoding, device)."""

    @abstractmethod
    def fit(self, resume_from: Path | None) -> TrainOutcome:
        """Train (resuming from settings.checkpoint_dir when `resume_from` says so), log per-epoch metrics to the
        active MLflow run and end with the best epoch's weights loaded."""

    @abstractmethod
    def score_test(self) -> TestScores:
        """Test metrics of the selected model (scored once)."""

    @abstractmethod
    def latency_examples(self, n: int) -> Sequence:
        """The first n test examples in the form `infer_one` takes."""

    @abstractmethod
    def infer_one(self, example) -> None:
        """One served request at batch 1 (tokenize, forward or generate, decode)."""

    @property
    def collective_scoring(self) -> bool:
        """Whether score_test is a collective step under torchrun (every process must call it: Trainer.predict)."""
        return False

    def attention_maps(self, n: int) -> list[AttentionMap]:
        return []

    @abstractmethod
    def register(self, export_dir: Path) -> str:
        """Log the model to the active MLflow run, register it as <task>-<model>; returns the version."""


def measure_latency_ms(
    infer_one: Callable[[Any], None],
    examples: Sequence,
    budget_s: float = LATENCY_BUDGET_S,
    min_examples: int = LATENCY_MIN_EXAMPLES,
) -> float:
    """Mean wall time of `infer_one` per example, after one warm-up call, over the examples in order until
    `budget_s` has passed (and at least `min_examples` were timed)."""
    infer_one(examples[0])
    start = time.perf_counter()
    timed = 0
    for example in examples:
        infer_one(example)
        timed += 1
        if timed >= min_examples and time.perf_counter() - start >= budget_s:
            break
    return (time.perf_counter() - start) * 1000 / timed
