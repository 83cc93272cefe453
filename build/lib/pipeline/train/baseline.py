"""The lead baseline of summarization: the first n words of the dialogue are its summary.

n is chosen on the validation split (best ROUGE-1 among LEAD_WORDS), then the test split is scored once. The
baseline stage (`python -m flows.baseline samsum`, dvc.yaml baseline@samsum) writes
data/models/lead-<task>/{metrics.json, test_items.jsonl} in the training stages' format
(pipeline/train/driver.py), so the leaderboard shows it next to the models (with its bootstrap interval), and
logs an MLflow run in the task's experiment (tag family=baseline). Nothing is registered: there is no model to
serve.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.core import paths
from pipeline.core.config import Params
from pipeline.core.io import METRICS_FILE, TEST_ITEMS_FILE, atomic_dir, write_json
from pipeline.core.metrics import MAIN_METRIC, summarization_metrics
from pipeline.data.task_data import TEXT_PAIRS, load_prepared, task_kind
from pipeline.tracking import runs
from pipeline.train.driver import write_items

log = logging.getLogger(__name__)

LEAD_MODEL = "lead"  # the row's model name: data/models/lead-<task>/
BASELINE_FAMILY = "baseline"
LEAD_WORDS = tuple(range(5, 61, 5))  # the candidate summary lengths, in words


@dataclass(frozen=True)
class LeadChoice:
    words: int  # the chosen n
    validation: dict[str, float]  # the chosen n's validation metrics
    by_words: dict[int, float]  # validation ROUGE-1 of every candidate n


def lead(text: str, n: int) -> str:
    """The first n whitespace-separated words of `text` (line breaks become spaces)."""
    return " ".join(text.split()[:n])


def lead_baseline(
    dialogues: Sequence[str], references: Sequence[str], candidates: Sequence[int] = LEAD_WORDS
) -> LeadChoice:
    """The lead length with the best mean ROUGE-1 against `references` (the shortest on a tie)."""
    if not candidates or min(candidates) < 1:
        raise ValueError(f"lead lengths must be positive word counts, got {list(candidates)}")
    if not dialogues:
        raise ValueError("the lead baseline needs at least one validation dialogue")
    main = MAIN_METRIC["summarization"]
    scored = {n: summarization_metrics(references, [lead(d, n) for d in dialogues]) for n in sorted(candidates)}
    best = max(scored, key=lambda n: (scored[n][main], -n))
    return LeadChoice(best, scored[best], {n: m[main] for n, m in scored.items()})


def run_lead_baseline(task: str, params: Params) -> dict:
    """Choose n on validation, score test, log an MLflow run, write data/models/lead-<task>/metrics.json."""
    import mlflow

    kind = task_kind(task)
    if kind != "summarization":
        raise ValueError(f"the lead baseline is for summarization tasks, not {task!r} ({kind})")
    pair = TEXT_PAIRS[kind]
    data = load_prepared(task)
    start = time.perf_counter()
    choice = lead_baseline(data["validation"][pair.source], data["validation"][pair.target])
    fit_s = time.perf_counter() - start
    test = data["test"]
    start = time.perf_counter()
    outputs = [lead(d, choice.words) for d in test[pair.source]]
    latency_ms = (time.perf_counter() - start) * 1000 / max(len(outputs), 1)
    metrics = summarization_metrics(test[pair.target], outputs)
    log.info(
        "lead-%s: n=%d words (validation ROUGE-1 %.2f); test %s",
        task,
        choice.words,
        choice.validation[MAIN_METRIC[kind]],
        {k: round(v, 2) for k, v in metrics.items()},
    )
    name = f"{LEAD_MODEL}-{task}"
    tags = runs.base_tags(
        params,
        family=BASELINE_FAMILY,
        source="none",
        inputs=[paths.prepared_dir(task)],
        extra={"task": task, "model": LEAD_MODEL, "family": BASELINE_FAMILY, "stage": "baseline", "init": "none"},
    )
    state = paths.checkpoint_dir("baseline", name)
    with runs.stage_run(params, runs.task_experiment(task), name, state, tags) as run:
        runs.log_params_once({"lead_words": choice.words, "lead_candidates": ",".join(map(str, LEAD_WORDS))})
        for n, value in choice.by_words.items():
            mlflow.log_metric(f"val_{MAIN_METRIC[kind]}", value, step=n)
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        summary = {
            "task": task,
            "model": LEAD_MODEL,
            "family": BASELINE_FAMILY,
            "stage": "baseline",
            "init": "none",
            "weight_source": "none",
            "test": metrics,
            "param_count": 0,
            "train_time_s": round(fit_s, 3),
            "tokens_per_s": None,
            "latency_ms_per_example": round(latency_ms, 6),
            "best_epoch": None,
            "lead_words": choice.words,
            "mlflow_run_id": run.info.run_id,
            "registered_version": None,
        }
        mlflow.log_metrics({"train_time_s": summary["train_time_s"], "latency_ms_per_example": latency_ms})
        with atomic_dir(paths.model_dir(LEAD_MODEL, task)) as tmp:
            write_json(tmp / METRICS_FILE, summary)
            items = [{"gold": ref, "prediction": out} for ref, out in zip(test[pair.target], outputs)]
            write_items(tmp / TEST_ITEMS_FILE, items)  # the compare stage's bootstrap interval
        mlflow.log_artifact(str(paths.model_dir(LEAD_MODEL, task) / METRICS_FILE))
    shutil.rmtree(state, ignore_errors=True)  # only held the MLflow run id
    return summary
