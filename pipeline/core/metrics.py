"""Task metrics from the field's libraries: scikit-learn, seqeval, sacrebleu (no `evaluate`, which needs the hub).

Every model family scores its predictions through these functions, so the comparison is fair.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.core.config import TASK_SPECS

# Main metric per task kind, as shown on the leaderboard (higher is better for all).
MAIN_METRIC = {"classification": "accuracy", "ner": "entity_f1", "translation": "bleu"}
SECONDARY_METRICS = {
    "classification": ("macro_f1",),
    "ner": ("entity_precision", "entity_recall"),
    "translation": ("chrf",),
}


def main_metric(task: str) -> str:
    """The metric a task's models are ranked and promoted by (that of the task's kind)."""
    return MAIN_METRIC[TASK_SPECS[task].kind]


def secondary_metrics(task: str) -> tuple[str, ...]:
    """The other quality metrics the leaderboard shows for a task."""
    return SECONDARY_METRICS[TASK_SPECS[task].kind]


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    labels = list(range(num_labels))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }


def confusion(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=list(range(num_labels))).tolist()


def ner_metrics(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level precision/recall/F1 (seqeval, CoNLL scheme) plus token accuracy; tags are strings per word."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    if len(true_tags) != len(pred_tags):
        raise ValueError(f"{len(true_tags)} sentences but {len(pred_tags)} predictions")
    fixed = []
    for t, p in zip(true_tags, pred_tags):
        p = list(p)[: len(t)] + ["O"] * max(0, len(t) - len(p))  # a too-short prediction counts as O
        fixed.append(p)
    true_tags = [list(t) for t in true_tags]
    n_tokens = sum(len(t) for t in true_tags) or 1
    correct = sum(a == b for t, p in zip(true_tags, fixed) for a, b in zip(t, p))
    return {
        "entity_f1": float(f1_score(true_tags, fixed, zero_division=0)),
        "entity_precision": float(precision_score(true_tags, fixed, zero_division=0)),
        "entity_recall": float(recall_score(true_tags, fixed, zero_division=0)),
        "token_accuracy": correct / n_tokens,
    }


def translation_metrics(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu defaults: 13a tokenisation, case-sensitive)."""
    import sacrebleu

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    hyps = [h.strip() for h in hypotheses]
    refs = [[r.strip() for r in references]]
    return {
        "bleu": float(sacrebleu.corpus_bleu(hyps, refs).score),
        "chrf": float(sacrebleu.corpus_chrf(hyps, refs).score),
    }
