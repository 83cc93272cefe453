"""Task metrics from the field's libraries: scikit-learn, seqeval, sacrebleu, rouge-score, and SQuAD's official
exact match / F1 (a few lines, below; no `evaluate`, which needs the hub).

Every model family scores its predictions through these functions, so the comparison is fair.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from pipeline.core.config import TASK_SPECS

# Main metric per task kind, as shown on the leaderboard (higher is better for all).
MAIN_METRIC = {
    "classification": "accuracy",
    "ner": "entity_f1",
    "translation": "bleu",
    "qa": "f1",
    "summarization": "rouge1",
}
SECONDARY_METRICS = {
    "classification": ("macro_f1",),
    "ner": ("entity_precision", "entity_recall"),
    "translation": ("chrf",),
    "qa": ("exact_match",),
    "summarization": ("rouge2", "rougeL"),
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


# ---------------------------------------------------------------- question answering (SQuAD v1.1's evaluate script)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower-case, drop punctuation and the articles a/an/the, collapse spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 of two normalised answers (0 when they share no token)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def qa_metrics(references: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """Exact match and F1 in percent (as SQuAD reports them), each the best over a question's reference answers."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} questions but {len(predictions)} predictions")
    if any(not refs for refs in references):
        raise ValueError("every question needs at least one reference answer")
    n = max(len(predictions), 1)
    exact = sum(
        max(float(normalize_answer(p) == normalize_answer(r)) for r in refs) for refs, p in zip(references, predictions)
    )
    f1 = sum(max(answer_f1(p, r) for r in refs) for refs, p in zip(references, predictions))
    return {"exact_match": 100.0 * exact / n, "f1": 100.0 * f1 / n}


# ---------------------------------------------------------------- summarization
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def summarization_metrics(references: Sequence[str], summaries: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 in percent (rouge-score, Porter stemming), one reference per summary."""
    from rouge_score import rouge_scorer

    if len(references) != len(summaries):
        raise ValueError(f"{len(references)} references but {len(summaries)} summaries")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for ref, hyp in zip(references, summaries):
        for name, score in scorer.score(ref, hyp).items():
            totals[name] += score.fmeasure
    n = max(len(summaries), 1)
    return {name: 100.0 * total / n for name, total in totals.items()}


def text_metrics(kind: str, references: Sequence, outputs: Sequence[str]) -> dict[str, float]:
    """The metrics of generated text: translation BLEU/chrF, summarization ROUGE-1/2/L, generative QA EM/F1
    (references: each question's list of answers)."""
    if kind == "translation":
        return translation_metrics(references, outputs)
    if kind == "summarization":
        return summarization_metrics(references, outputs)
    if kind == "qa":
        return qa_metrics(references, outputs)
    raise ValueError(f"task kind {kind!r} is not scored on generated text")
