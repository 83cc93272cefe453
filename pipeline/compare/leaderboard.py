"""Compare stage: one leaderboard of every model on every task, from the fine-tune stages' test metrics.

Sources, in order of authority:
- data/models/<model>-<task>/metrics.json (the DVC metrics the fine-tune stages write; the stage's deps),
- the MLflow run each file names (`mlflow_run_id`): its `test_<metric>` values are cross-checked against the
  file (a mismatch is reported in the row's notes and the log), and fields the file lacks (param count,
  timings, registered version, family, weight source) are filled from it.

Every model of params.models x every task gets a row; a combination without a metrics file is a row with
status "not run", so nothing silently disappears. Outputs (pipeline.compare.report): reports/comparison.md,
reports/comparison.json (DVC metrics), reports/plots/. The champion aliases are updated (pipeline.compare.champion)
and everything is logged to a parent run in the MLflow experiment `comparison`:

- the leaderboard as an MLflow table (`leaderboard.json`, shown in the run's artifacts and evaluation views),
  comparison.md/json and the plots as artifacts, the markdown as the run's description, and each cell as a
  metric `<task>.<model>.<metric>`;
- links both ways: the parent carries tags `compare.runs.<task>` (the fine-tune run ids it summarises) and
  `compare.ui.<task>` (the MLflow UI run-comparison link for that task), every fine-tune run gets the tag
  `compare.parent_run_id`. Nested runs are not used: MLflow nests runs within one experiment only, and the
  fine-tune runs must stay in `task-<task>`, where the UI compares all models of a task side by side.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.core import paths
from pipeline.core.config import TASK_SPECS, TASKS, Params
from pipeline.core.metrics import MAIN_METRIC, SECONDARY_METRICS
from pipeline.tracking.runs import (
    COMPARE_EXPERIMENT,
    FLOW_RUN_ENV,
    PREFECT_TAG,
    configure,
    git_commit,
    registered_name,
    stage_run,
    task_experiment,
)

log = logging.getLogger(__name__)

OK = "ok"
NOT_RUN = "not run"
NOT_AVAILABLE = "n/a"
COST_FIELDS = ("param_count", "train_time_s", "tokens_per_s", "latency_ms_per_example")
PARENT_TAG = "compare.parent_run_id"
REL_TOL = 1e-6
NOTE_LIMIT = 7900


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

    @property
    def main_value(self) -> float | None:
        return self.test.get(main_metric(self.task))

    def to_dict(self) -> dict:
        return asdict(self)


def main_metric(task: str) -> str:
    return MAIN_METRIC[TASK_SPECS[task][1]]


def secondary_metrics(task: str) -> tuple[str, ...]:
    return SECONDARY_METRICS[TASK_SPECS[task][1]]


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

    from pipeline.compare.champion import CHAMPION_ALIAS

    for row in rows:
        if row.registered_version is None:
            continue
        try:
            champion = client.get_model_version_by_alias(registered_name(row.task, row.model), CHAMPION_ALIAS)
        except MlflowException:
            continue
        row.champion = str(champion.version) == row.registered_version


# ---------------------------------------------------------------- leaderboard
def build_leaderboard(params: Params, root: Path | None = None) -> list[Row]:
    """Rows for every task x every model in params.models, enriched from MLflow."""
    from mlflow import MlflowClient

    root = root or Path.cwd()
    configure(params, root)
    client = MlflowClient()
    rows = [read_metrics_file(task, model, root) for task in TASKS for model in params.models]
    for row in rows:
        enrich_from_mlflow(row, client)
        row.family = row.family or params.models[row.model].family
        row.weight_source = row.weight_source or params.models[row.model].source
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


# ---------------------------------------------------------------- MLflow parent run
def compare_ui_link(run_ids: list[str], experiment_id: str) -> str:
    """The MLflow UI route comparing these runs (append to the server's base URL)."""
    return f"#/compare-runs?runs={json.dumps(run_ids, separators=(',', ':'))}&experiments=[\"{experiment_id}\"]"


def log_comparison(rows: list[Row], outputs: dict[str, Path], markdown: str, params: Params,
                   root: Path | None = None) -> str:
    """Log the leaderboard to a parent run in `comparison`; link it with the fine-tune runs. Returns its id."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    tags = {"git_commit": git_commit(root), "mlflow.note.content": run_description(markdown)}
    flow_run = os.environ.get(FLOW_RUN_ENV)
    if flow_run:
        tags[PREFECT_TAG] = flow_run
    linked = [r for r in rows if r.status == OK and r.mlflow_run_id and not _missing_run(r)]
    for task in TASKS:
        ids = [r.mlflow_run_id for r in rows_for(linked, task)]  # best first: the UI shows them in this order
        if ids:
            tags[f"compare.runs.{task}"] = ",".join(ids)
            exp = mlflow.get_experiment_by_name(task_experiment(task))
            if exp is not None:
                tags[f"compare.ui.{task}"] = compare_ui_link(ids, exp.experiment_id)
    # stage_run keeps the run id until the run ends well: a retried compare (transient MLflow error) logs into
    # the same parent run instead of opening a second one.
    state_dir = (root or Path.cwd()) / paths.CHECKPOINTS / "compare"
    with stage_run(params, COMPARE_EXPERIMENT, "compare", state_dir=state_dir, tags=tags, root=root) as parent:
        mlflow.log_param("compare.min_improvement", params.compare.min_improvement)
        table = pd.DataFrame([_flat(r) for r in rows])
        mlflow.log_table(table, artifact_file="leaderboard.json")
        metrics = {}
        for r in rows:
            for name, value in {**r.test, **{k: getattr(r, k) for k in COST_FIELDS}}.items():
                if value is not None:
                    metrics[f"{r.task}.{r.model}.{name}"] = value
        if metrics:
            mlflow.log_metrics(metrics)
        for name, path in outputs.items():
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=name)
            else:
                mlflow.log_artifact(str(path))
        parent_id = parent.info.run_id
    for r in linked:
        try:
            client.set_tag(r.mlflow_run_id, PARENT_TAG, parent_id)
        except MlflowException as err:  # a deleted run: the leaderboard still holds its numbers
            log.warning("Could not tag run %s with %s: %s", r.mlflow_run_id, PARENT_TAG, err)
    log.info("Comparison logged to MLflow run %s (experiment %r), linked to %d runs", parent_id,
             COMPARE_EXPERIMENT, len(linked))
    return parent_id


def run_description(markdown: str) -> str:
    """The parent run's description: the report's tables (MLflow tags hold at most 8000 characters)."""
    body = markdown.split("\n## Plots")[0]
    if len(body) > NOTE_LIMIT:  # keep the title and the best-per-task table only
        title, best, *_ = body.split("\n## ")
        body = f"{title}\n## {best}"
    note = "\n\nPlots and the full report: this run's artifacts (comparison.md, plots/)."
    return (body + note)[:NOTE_LIMIT]


def _missing_run(row: Row) -> bool:
    return any("is not in this tracking store" in n for n in row.notes)


def _flat(row: Row) -> dict:
    """A leaderboard row as one flat record (for the MLflow table); metrics a task lacks are n/a."""
    out = {"task": row.task, "model": row.model, "status": row.status, "family": row.family or NOT_AVAILABLE,
           "weight_source": row.weight_source or NOT_AVAILABLE, "main_metric": main_metric(row.task),
           "main_value": row.main_value}
    for name in (main_metric(row.task), *secondary_metrics(row.task)):
        out[f"test_{name}"] = row.test.get(name)
    for key in COST_FIELDS:
        out[key] = getattr(row, key)
    out.update(mlflow_run_id=row.mlflow_run_id or "", registered_version=row.registered_version or "",
               champion=row.champion, notes="; ".join(row.notes))
    return out


# ---------------------------------------------------------------- the stage
def compare(params: Params, root: Path | None = None) -> dict:
    """Build the leaderboard, update the champions, write reports/ and log it all to MLflow."""
    from pipeline.compare import champion
    from pipeline.compare import report as compare_report

    root = root or Path.cwd()
    rows = build_leaderboard(params, root)
    champions = champion.update_champions(params, root=root)
    mark_champions(rows, _client())
    history = champion.read_history(params, root)
    outputs, markdown = compare_report.write_reports(rows, champions, history, root)
    parent_id = log_comparison(rows, outputs, markdown, params, root)
    return {
        "leaderboard": [r.to_dict() for r in rows],
        "best": best_per_task(rows),
        "champions": champions,
        "parent_run_id": parent_id,
        "outputs": {k: str(v) for k, v in outputs.items()},
    }


def _client():
    from mlflow import MlflowClient

    return MlflowClient()
