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
# task -> (main metric, target); BLEU is sacrebleu's 0-100 scale.
TARGETS = {
    task: (main_metric(task), target)
    for task, target in {"emotion": 0.92, "sst2": 0.85, "conll2003": 0.85, "multi30k": 28.0}.items()
}


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
    return out


def params_digest(root: Path) -> str:
    path = root / "params.yaml"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.exists() else "missing"


def run(opts: BenchOptions, ctx: dict) -> dict:
    root, why = find_finished_workspace(opts.workspace, check_status=False)
    if root is None:
        return result_body(
            [
                row(f"{task} best test {metric}", f">= {target:g}", "-", NOT_MEASURED, f"{NOT_RUN_HINT} ({why})")
                for task, (metric, target) in TARGETS.items()
            ]
        )
    scores = collect(root)
    default_params = params_digest(root) == params_digest(REPO_ROOT)
    caveat = "" if default_params else "; the run's params.yaml differs from the repo's defaults: no verdict"
    rows = []
    for task, (metric, target) in TARGETS.items():
        by_model = scores[task]
        if not by_model:
            rows.append(
                row(
                    f"{task} best test {metric}",
                    f">= {target:g}",
                    "-",
                    NOT_MEASURED,
                    f"no data/models/*-{task}/metrics.json with test {metric} in {root}",
                )
            )
            continue
        best_model, best = max(by_model.items(), key=lambda kv: kv[1])
        others = ", ".join(f"{m} {v:.3g}" for m, v in sorted(by_model.items(), key=lambda kv: -kv[1]))
        rows.append(
            row(
                f"{task} best test {metric}",
                f">= {target:g}",
                f"{best:.4g} ({best_model})",
                verdict(best >= target) if default_params else REPORT,
                f"all: {others}{caveat}",
            )
        )
    return result_body(rows, workspace=str(root), scores=scores, default_params=default_params)
