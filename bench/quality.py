"""Quality within the time budget: the default run's best model per task on the test split.

Reads the finished run's data/models/<model>-<task>/metrics.json files (the DVC metrics every training stage
writes: {"task", "model", "test": {...}, ...}) from the workspace of the last `make bench FULL=1` run, else
from the repo after `make run`. Never trains anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from bench.common import NOT_MEASURED, REPO_ROOT, REPORT, BenchOptions, result_body, row, verdict
from bench.workspace import NOT_RUN_HINT, find_finished_workspace
from pipeline.core.metrics import main_metric

log = logging.getLogger("bench")

NAME = "quality"
# task -> (main metric, target) for the CPU default run (the performance issue's targets); BLEU, SQuAD F1 and
# ROUGE are on a 0-100 scale. samsum's target is relative: ROUGE-1 at least LEAD_MARGIN over the lead baseline.
TARGETS = {
    task: (main_metric(task), target)
    for task, target in {
        "emotion": 0.88,
        "sst2": 0.85,
        "conll2003": 0.85,
        "multi30k": 20.0,
        "squad": 60.0,
        "samsum": None,
    }.items()
}
BASELINES = {"lead"}  # rows of data/models that are baselines, not models (the lead-<task> summaries)
LEAD_MARGIN = 5.0
SECONDARY = {"squad": ("exact_match",), "samsum": ("rouge2", "rougeL")}  # reported for the best model


def test_metric(metrics: dict, name: str) -> float | None:
    """The test value of `name` in a stage's metrics.json ("test": {name | test_name}, or top-level test_name)."""
    test = metrics.get("test") or {}
    for key in (name, f"test_{name}"):
        if isinstance(test.get(key), (int, float)):
            return float(test[key])
    value = metrics.get(f"test_{name}")
    return float(value) if isinstance(value, (int, float)) else None


def collect(root: Path) -> dict[str, dict[str, float]]:
    """task -> {model: main test metric} from every data/models/*/metrics.json under `root`."""
    out: dict[str, dict[str, float]] = {task: {} for task in TARGETS}
    for path in sorted((root / "data" / "models").glob("*/metrics.json")):
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            log.warning("unreadable %s: %s", path, err)
            continue
        model, _, task = path.parent.name.partition("-")
        task = metrics.get("task", task)
        model = metrics.get("model", model)
        if task not in TARGETS:
            continue
        value = test_metric(metrics, TARGETS[task][0])
        if value is not None:
            out[task][model] = value
        for name in SECONDARY.get(task, ()):
            extra = test_metric(metrics, name)
            if extra is not None:
                out.setdefault(f"{task}.{name}", {})[model] = extra
    return out


def generation_perplexity(root: Path) -> float | None:
    """The generate stage's held-out perplexity of the pretrained GPT (data/generate/metrics.json)."""
    path = root / "data" / "generate" / "metrics.json"
    if not path.exists():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get("heldout", {}).get("perplexity")
    return float(value) if isinstance(value, (int, float)) else None


def task_row(task: str, scores: dict, default_params: bool, caveat: str, root: Path) -> dict:
    """The best model's main test metric against the task's target (samsum: the lead baseline + LEAD_MARGIN)."""
    metric, target = TARGETS[task]
    models = {m: v for m, v in scores[task].items() if m not in BASELINES}
    lead = scores[task].get("lead")
    if target is None and lead is not None:
        target = lead + LEAD_MARGIN
    shown = f">= {target:.4g}" if target is not None else f">= lead + {LEAD_MARGIN:g}"
    if not models:
        where = f"no data/models/*-{task}/metrics.json with test {metric} in {root}"
        return row(f"{task} best test {metric}", shown, "-", NOT_MEASURED, where)
    best_model, best = max(models.items(), key=lambda kv: kv[1])
    notes = ", ".join(f"{m} {v:.3g}" for m, v in sorted(scores[task].items(), key=lambda kv: -kv[1]))
    for name in SECONDARY.get(task, ()):
        value = scores.get(f"{task}.{name}", {}).get(best_model)
        if value is not None:
            notes += f"; {best_model} {name} {value:.3g}"
    status = verdict(best >= target) if default_params and target is not None else REPORT
    return row(f"{task} best test {metric}", shown, f"{best:.4g} ({best_model})", status, f"all: {notes}{caveat}")


def params_digest(root: Path) -> str:
    path = root / "params.yaml"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.exists() else "missing"


def run(opts: BenchOptions, ctx: dict) -> dict:
    root, why = find_finished_workspace(opts.workspace, check_status=False)
    if root is None:
        return result_body(
            [
                row(
                    f"{task} best test {metric}",
                    "-" if target is None else f">= {target:g}",
                    "-",
                    NOT_MEASURED,
                    f"{NOT_RUN_HINT} ({why})",
                )
                for task, (metric, target) in TARGETS.items()
            ]
        )
    scores = collect(root)
    default_params = params_digest(root) == params_digest(REPO_ROOT)
    caveat = "" if default_params else "; the run's params.yaml differs from the repo's defaults: no verdict"
    rows = [task_row(task, scores, default_params, caveat, root) for task in TARGETS]
    perplexity = generation_perplexity(root)
    rows.append(
        row(
            "pretrained GPT held-out perplexity (generate stage)",
            "-",
            "-" if perplexity is None else f"{perplexity:.1f}",
            NOT_MEASURED if perplexity is None else REPORT,
            "data/generate/metrics.json",
        )
    )
    return result_body(rows, workspace=str(root), scores=scores, perplexity=perplexity, default_params=default_params)
