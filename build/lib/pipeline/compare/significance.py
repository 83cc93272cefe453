"""How sure a test score is: bootstrap confidence intervals and paired bootstrap tests over the test examples.

Input: data/models/<model>-<task>/test_items.jsonl, one {"gold", "prediction"} per test example in test-split order
(written by the training driver; the form each task kind's metric function takes: pipeline/core/metrics.py).

- confidence_interval: the 95% percentile bootstrap interval of the task's main metric: the test items resampled
  with replacement `n_resamples` times, the metric recomputed on each resample.
- paired_test: the gain of model A over model B (A - B) on the same resampled indices for both models (paired:
  example-level noise cancels out). The p-value is ONE-SIDED: the share of resamples whose gain does not keep the
  observed gain's sign (<= 0 for an observed gain > 0, >= 0 for one < 0; 1.0 for an observed gain of 0), i.e. how
  often chance alone would give the opposite conclusion (Koehn 2004's paired bootstrap resampling).

The metric of a resample is computed from per-example sufficient statistics summed over the resample (numpy),
which equals the metric function on the resampled items exactly (tests/pipeline/compare/test_significance.py checks
it against metric_from_items): correct answers (accuracy), seqeval's entity counts (entity F1), sacrebleu's n-gram
statistics (corpus BLEU, as sacrebleu's own paired test does), per-example F1 / ROUGE-1 (qa, summarization). So a
corpus metric like BLEU costs one statistics pass, not one corpus_bleu call per resample (1000 x 500 sentences:
~0.1 s instead of ~45 s). Everything is seeded: the same items and seed give the same intervals and p-values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core import paths
from pipeline.core.io import TEST_ITEMS_FILE
from pipeline.core.metrics import (
    MAIN_METRIC,
    answer_f1,
    classification_metrics,
    ner_metrics,
    qa_metrics,
    summarization_metrics,
    translation_metrics,
)

CI_LEVEL = 0.95


class ItemsError(ValueError):
    """A test_items.jsonl cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True)
class GainTest:
    """A - B on the test set, its 95% bootstrap interval and the one-sided paired-bootstrap p-value."""

    gain: float
    low: float
    high: float
    p_value: float

    def significant(self, level: float) -> bool:
        return self.p_value < level


# ---------------------------------------------------------------- items
def items_path(model: str, task: str, root: Path) -> Path:
    return root / paths.model_dir(model, task) / TEST_ITEMS_FILE


def read_items(path: Path) -> list[dict] | None:
    """The items of one run (None when the file is absent: a run from before items were written)."""
    if not path.exists():
        return None
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise ItemsError(f"{path}:{n}: not valid JSON ({err}); re-run that training stage") from None
        if not isinstance(item, dict) or "gold" not in item or "prediction" not in item:
            raise ItemsError(f"{path}:{n}: expected an object with 'gold' and 'prediction'; re-run that training stage")
        items.append(item)
    if not items:
        raise ItemsError(f"{path}: no test items; re-run that training stage")
    return items


def _golds(items: Sequence[dict]) -> list:
    return [item["gold"] for item in items]


def _predictions(items: Sequence[dict]) -> list:
    return [item["prediction"] for item in items]


# ---------------------------------------------------------------- the main metric, directly
def metric_from_items(kind: str, items: Sequence[dict], num_labels: int | None = None) -> float:
    """The task kind's main metric (MAIN_METRIC[kind]) of these items, by pipeline.core.metrics' own function.
    num_labels (classification) only matters for macro F1; by default the labels seen in the items."""
    golds, preds = _golds(items), _predictions(items)
    if kind == "classification":
        labels = num_labels or max([*golds, *preds, 0]) + 1
        metrics = classification_metrics(golds, preds, labels)
    elif kind == "ner":
        metrics = ner_metrics(golds, preds)
    elif kind == "translation":
        metrics = translation_metrics(golds, preds)
    elif kind == "qa":
        metrics = qa_metrics(golds, preds)
    elif kind == "summarization":
        metrics = summarization_metrics(golds, preds)
    else:
        raise ValueError(f"no metric for task kind {kind!r} (known: {sorted(MAIN_METRIC)})")
    return float(metrics[MAIN_METRIC[kind]])


# ---------------------------------------------------------------- the main metric from summed statistics
def item_statistics(kind: str, items: Sequence[dict]) -> np.ndarray:
    """Per-example statistics whose sum over any multiset of examples gives the main metric of that multiset
    (metric_from_statistics): [n_items, n_stats], column 0 counts the example."""
    golds, preds = _golds(items), _predictions(items)
    if kind == "classification":
        rows = [[1, float(g == p)] for g, p in zip(golds, preds)]
    elif kind == "ner":
        rows = [[1, *_entity_counts(g, p)] for g, p in zip(golds, preds)]
    elif kind == "translation":
        from sacrebleu.metrics import BLEU

        stats = BLEU()._extract_corpus_statistics([h.strip() for h in preds], [[r.strip() for r in golds]])
        rows = [[1, *s] for s in stats]
    elif kind == "qa":
        rows = [[1, 100.0 * max(answer_f1(p, r) for r in refs)] for refs, p in zip(golds, preds)]
    elif kind == "summarization":
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
        rows = [[1, 100.0 * scorer.score(r, h)["rouge1"].fmeasure] for r, h in zip(golds, preds)]
    else:
        raise ValueError(f"no metric for task kind {kind!r} (known: {sorted(MAIN_METRIC)})")
    return np.asarray(rows, dtype=np.float64)  # [n_items, n_stats]


def _entity_counts(gold: Sequence[str], pred: Sequence[str]) -> tuple[int, int, int]:
    """(correct, predicted, true) entities of one sentence, as seqeval counts them (the prediction padded or cut to
    the gold length like ner_metrics does; seqeval joins sentences with 'O', so per-sentence counts add up)."""
    from seqeval.metrics.sequence_labeling import get_entities

    pred = list(pred)[: len(gold)] + ["O"] * max(0, len(gold) - len(pred))
    true_set, pred_set = set(get_entities(list(gold))), set(get_entities(pred))
    return len(true_set & pred_set), len(pred_set), len(true_set)


def metric_from_statistics(kind: str, totals: np.ndarray) -> np.ndarray:
    """The main metric of summed statistics; totals: [..., n_stats] -> [...]."""
    n = np.maximum(totals[..., 0], 1)
    if kind in ("classification", "qa", "summarization"):
        return totals[..., 1] / n
    if kind == "ner":
        correct, predicted, true = totals[..., 1], totals[..., 2], totals[..., 3]
        return np.where(predicted + true > 0, 2 * correct / np.maximum(predicted + true, 1), 0.0)
    if kind == "translation":
        from sacrebleu.metrics import BLEU

        bleu = BLEU()
        flat = totals.reshape(-1, totals.shape[-1])[:, 1:]  # [resamples, bleu stats]
        return np.asarray([bleu._compute_score_from_stats(row.tolist()).score for row in flat]).reshape(
            totals.shape[:-1]
        )
    raise ValueError(f"no metric for task kind {kind!r} (known: {sorted(MAIN_METRIC)})")


# ---------------------------------------------------------------- bootstrap
def resample_indices(n_items: int, n_resamples: int, seed: int) -> np.ndarray:
    """[n_resamples, n_items] indices drawn with replacement (the same seed gives the same resamples)."""
    return np.random.default_rng(seed).integers(0, n_items, size=(n_resamples, n_items))


def resampled_metric(kind: str, items: Sequence[dict], indices: np.ndarray) -> np.ndarray:
    """The main metric on each resample: indices [n_resamples, n_items] -> [n_resamples]."""
    stats = item_statistics(kind, items)  # [n_items, n_stats]
    return metric_from_statistics(kind, stats[indices].sum(axis=1))  # [n_resamples]


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - CI_LEVEL) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def confidence_interval(kind: str, items: Sequence[dict], n_resamples: int, seed: int) -> Interval:
    """95% percentile bootstrap interval of the main metric."""
    values = resampled_metric(kind, items, resample_indices(len(items), n_resamples, seed))
    return Interval(*_percentiles(values))


def paired_test(kind: str, items_a: Sequence[dict], items_b: Sequence[dict], n_resamples: int, seed: int) -> GainTest:
    """Gain of A over B (main metric, A - B) with a paired bootstrap: both scored on the same resampled examples.
    The items must be the same test examples in the same order (same golds)."""
    if len(items_a) != len(items_b):
        raise ItemsError(f"paired test: {len(items_a)} items against {len(items_b)}; both must score the same test set")
    if _golds(items_a) != _golds(items_b):
        raise ItemsError("paired test: the two runs' gold answers differ; both must score the same test split")
    stats_a, stats_b = item_statistics(kind, items_a), item_statistics(kind, items_b)
    observed = float(metric_from_statistics(kind, stats_a.sum(axis=0)) - metric_from_statistics(kind, stats_b.sum(0)))
    indices = resample_indices(len(items_a), n_resamples, seed)  # [n_resamples, n_items], shared
    gains = metric_from_statistics(kind, stats_a[indices].sum(1)) - metric_from_statistics(
        kind, stats_b[indices].sum(1)
    )  # [n_resamples]
    if observed > 0:
        p_value = float(np.mean(gains <= 0))
    elif observed < 0:
        p_value = float(np.mean(gains >= 0))
    else:
        p_value = 1.0
    return GainTest(observed, *_percentiles(gains), p_value)
