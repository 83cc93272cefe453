"""The leaderboard: one row per model x task, from the training stages' test metrics.

Sources, in order of authority:
- data/models/<model>-<task>/metrics.json (the DVC metrics the training stages write; the compare stage's deps),
- the MLflow run each file names (`mlflow_run_id`): its `test_<metric>` values are cross-checked against the
  file (a mismatch is reported in the row's notes and the log), and fields the file lacks (param count,
  timings, registered version, family, weight source) are filled from it.

Every model of params.models x every task gets a row; a combination without a metrics file is a row with
status "not run", so nothing silently disappears. From each run's test_items.jsonl (pipeline.compare.significance)
a row gets the 95% bootstrap interval of its main metric (`main_ci`), and a model with a control (a model whose
params entry names it in `twin_of`) gets its gain over that control with a paired bootstrap test: `transfer_gain`
(pretrained - its scratch twin, e.g. gpt - gpt_scratch) or `attention_gain` (rnn - rnn_noattn).
Baselines (BASELINES: the lead-n-words summary of pipeline/train/baseline.py) get a row when their metrics file
exists. pipeline.compare.report renders the rows, pipeline.compare.stage runs the compare stage.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.compare import significance
from pipeline.compare.champion import CHAMPION_ALIAS
from pipeline.core import paths
from pipeline.core.config import TASK_SPECS, TASKS, Params
from pipeline.core.metrics import main_metric
from pipeline.tracking.runs import configure, registered_name

log = logging.getLogger(__name__)

OK = "ok"
NOT_RUN = "not run"
NOT_AVAILABLE = "n/a"
COST_FIELDS = ("param_count", "train_time_s", "tokens_per_s", "latency_ms_per_example")
REL_TOL = 1e-6
BASELINES = {"summarization": ("lead",)}  # task kind -> baseline rows (data/models/<baseline>-<task>/metrics.json)


class CompareError(RuntimeError):
    """A fine-tune metrics file cannot be used; the message names the file and key."""


@dataclass
class Row:
    """One model on one task."""

    task: str
    model: str
    status: str = NOT_RUN
    family: str | None = None
    weight_source: str | None = None
    test: dict[str, float] = field(default_factory=dict)
    param_count: float | None = None
    train_time_s: float | None = None
    tokens_per_s: float | None = None
    latency_ms_per_example: float | None = None
    mlflow_run_id: str | None = None
    registered_version: str | None = None
    champion: bool = False  # this row's version holds the `champion` alias of <task>-<model>
    notes: list[str] = field(default_factory=list)
    main_ci: list[float] | None = None  # [low, high]: 95% bootstrap interval of the main metric (test items)
    # this model's gain over its control on the main metric (Gain.to_dict()); None without a control or items
    transfer_gain: dict | None = None  # pretrained - scratch twin
    attention_gain: dict | None = None  # rnn - rnn_noattn

    @property
    def main_value(self) -> float | None:
        return self.test.get(main_metric(self.task))

    def to_dict(self) -> dict:
        return asdict(self)


def _number(value, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CompareError(f"{where}: expected a finite number, got {value!r}; re-run that fine-tune stage")
    return float(value)


# ---------------------------------------------------------------- reading the metrics files
def read_metrics_file(task: str, model: str, root: Path) -> Row:
    """The row for `model` on `task` from its metrics.json (status "not run" when the file is absent)."""
    row = Row(task=task, model=model)
    path = root / paths.model_dir(model, task) / "metrics.json"
    if not path.exists():
        return row
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CompareError(f"{path}: not valid JSON ({err}); re-run `dvc repro` for {model}-{task}") from None
    if not isinstance(data, dict) or not isinstance(data.get("test"), dict):
        raise CompareError(f"{path}: expected an object with a 'test' object of test metrics; re-run {model}-{task}")
    for key, expected in (("task", task), ("model", model)):
        if key in data and data[key] != expected:
            raise CompareError(f"{path}: key '{key}' is {data[key]!r} but the folder is for {expected!r}")
    row.status = OK
    row.family = data.get("family")
    row.weight_source = data.get("weight_source")
    row.test = {
        str(k): v for k, v in ((k, _number(v, f"{path}: test.{k}")) for k, v in data["test"].items()) if v is not None
    }
    if main_metric(task) not in row.test:
        raise CompareError(
            f"{path}: test.{main_metric(task)} (the main metric of {task}) is missing; re-run that fine-tune stage"
        )
    for key in COST_FIELDS:
        setattr(row, key, _number(data.get(key), f"{path}: {key}"))
    row.mlflow_run_id = data.get("mlflow_run_id") or None
    version = data.get("registered_version")
    row.registered_version = str(version) if version not in (None, "") else None
    return row


# ---------------------------------------------------------------- MLflow cross-check and enrichment
def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=REL_TOL)


def enrich_from_mlflow(row: Row, client) -> None:
    """Cross-check the row's test metrics with its MLflow run and fill what the file lacks."""
    from mlflow.exceptions import MlflowException

    if row.status != OK:
        return
    if not row.mlflow_run_id:
        row.notes.append("metrics.json names no MLflow run")
        return
    try:
        run = client.get_run(row.mlflow_run_id)
    except MlflowException:
        row.notes.append(f"MLflow run {row.mlflow_run_id} is not in this tracking store")
        log.warning("%s-%s: MLflow run %s not found in the tracking store", row.model, row.task, row.mlflow_run_id)
        return
    metrics, tags = run.data.metrics, run.data.tags
    for name, value in row.test.items():
        logged = metrics.get(f"test_{name}")
        if logged is not None and not _close(logged, value):
            note = f"MLflow run has test_{name}={logged:.6g} but metrics.json has {value:.6g}"
            row.notes.append(note)
            log.warning("%s-%s: %s", row.model, row.task, note)
    for name, value in metrics.items():  # test metrics only MLflow has
        if name.startswith("test_") and name[5:] not in row.test:
            row.test[name[5:]] = float(value)
    for key in COST_FIELDS:
        if getattr(row, key) is None and key in metrics:
            setattr(row, key, float(metrics[key]))
    row.family = row.family or tags.get("model_family")
    row.weight_source = row.weight_source or tags.get("weight_source")
    if run.info.status != "FINISHED":
        row.notes.append(f"MLflow run status is {run.info.status}")
    if row.registered_version is None:
        row.registered_version = _version_of_run(client, registered_name(row.task, row.model), row.mlflow_run_id)


def _version_of_run(client, name: str, run_id: str) -> str | None:
    versions = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return str(max(int(v.version) for v in versions)) if versions else None


def mark_champions(rows: list[Row], client) -> None:
    from mlflow.exceptions import MlflowException

    for row in rows:
        if row.registered_version is None:
            continue
        try:
            champion = client.get_model_version_by_alias(registered_name(row.task, row.model), CHAMPION_ALIAS)
        except MlflowException:
            continue
        row.champion = str(champion.version) == row.registered_version


# ---------------------------------------------------------------- confidence intervals and control gains
TRANSFER, ATTENTION = "transfer_gain", "attention_gain"


def controls(params: Params) -> list[tuple[str, str, str]]:
    """(model, its control, gain field) for every params model named in another's twin_of."""
    out = []
    for name, cfg in params.models.items():
        twin = getattr(cfg, "twin_of", None)
        if twin:
            out.append((twin, name, ATTENTION if cfg.family == "rnn" else TRANSFER))
    return out


def add_significance(rows: list[Row], params: Params, root: Path) -> None:
    """Fill main_ci of every row with test items, and transfer_gain / attention_gain of every model with a control
    (both runs need items). Seeded with common.seed; compare.bootstrap_resamples resamples."""
    n, seed, level = params.compare.bootstrap_resamples, params.common.seed, params.compare.significance_level
    by_key = {(r.task, r.model): r for r in rows}
    items: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if row.status != OK:
            continue
        found = significance.read_items(significance.items_path(row.model, row.task, root))
        if found is None:  # a run from before test items were written: no interval, no gain
            log.info("%s-%s: no %s, so no confidence interval", row.model, row.task, significance.TEST_ITEMS_FILE)
            continue
        items[(row.task, row.model)] = found
        ci = significance.confidence_interval(TASK_SPECS[row.task].kind, found, n, seed)
        row.main_ci = [ci.low, ci.high]
    for task in TASKS:
        for model, control, field_name in controls(params):
            if (task, model) not in items or (task, control) not in items:
                continue
            test = significance.paired_test(
                TASK_SPECS[task].kind, items[(task, model)], items[(task, control)], n, seed
            )
            gain = {
                "control": control,
                "gain": test.gain,
                "low": test.low,
                "high": test.high,
                "p_value": test.p_value,
                "significant": test.significant(level),
            }
            setattr(by_key[(task, model)], field_name, gain)


# ---------------------------------------------------------------- leaderboard
def build_leaderboard(params: Params, root: Path | None = None) -> list[Row]:
    """Rows for every task x every model in params.models, enriched from MLflow."""
    from mlflow import MlflowClient

    root = root or Path.cwd()
    configure(params, root)
    client = MlflowClient()
    rows = [read_metrics_file(task, model, root) for task in TASKS for model in params.models]
    for task in TASKS:
        baselines = (read_metrics_file(task, b, root) for b in BASELINES.get(TASK_SPECS[task].kind, ()))
        rows += [row for row in baselines if row.status == OK]
    for row in rows:
        enrich_from_mlflow(row, client)
        if row.model in params.models:
            row.family = row.family or params.models[row.model].family
            row.weight_source = row.weight_source or params.models[row.model].source
    add_significance(rows, params, root)
    mark_champions(rows, client)
    done = sum(r.status == OK for r in rows)
    log.info("Leaderboard: %d of %d task x model combinations have test metrics", done, len(rows))
    return rows


def rows_for(rows: list[Row], task: str) -> list[Row]:
    """The task's rows, best main metric first, runs that are missing last."""
    mine = [r for r in rows if r.task == task]
    return sorted(mine, key=lambda r: (r.main_value is None, -(r.main_value or 0.0), r.model))


def best_per_task(rows: list[Row]) -> dict[str, dict]:
    best = {}
    for task in TASKS:
        ranked = [r for r in rows_for(rows, task) if r.main_value is not None]
        if ranked:
            top = ranked[0]
            best[task] = {"model": top.model, "metric": main_metric(task), "value": top.main_value}
    return best
