"""The compare stage: the leaderboard of every model on every task, champions, reports, an MLflow parent run.

compare(params) builds the leaderboard (pipeline.compare.leaderboard), updates the champion aliases
(pipeline.compare.champion), writes reports/comparison.md, reports/comparison.json (DVC metrics) and
reports/plots/ (pipeline.compare.report), and logs everything to a parent run in the MLflow experiment
`comparison`:

- the leaderboard as an MLflow table (`leaderboard.json`, shown in the run's artifacts and evaluation views),
  comparison.md/json and the plots as artifacts, the markdown as the run's description, and each cell as a
  metric `<task>.<model>.<metric>`;
- links both ways: the parent carries tags `compare.runs.<task>` (the training run ids it summarises) and
  `compare.ui.<task>` (the MLflow UI run-comparison link for that task), every training run gets the tag
  `compare.parent_run_id`. Nested runs are not used: MLflow nests runs within one experiment only, and the
  training runs must stay in `task-<task>`, where the UI compares all models of a task side by side.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pipeline.compare import champion, report
from pipeline.compare.gpt_vs_bert import write_gpt_vs_bert
from pipeline.compare.leaderboard import (
    COST_FIELDS,
    NOT_AVAILABLE,
    OK,
    Row,
    best_per_task,
    build_leaderboard,
    mark_champions,
    rows_for,
)
from pipeline.core import paths
from pipeline.core.config import TASKS, Params
from pipeline.core.metrics import main_metric, secondary_metrics
from pipeline.tracking.runs import (
    COMPARE_EXPERIMENT,
    FLOW_RUN_ENV,
    PREFECT_TAG,
    git_commit,
    stage_run,
    task_experiment,
)

log = logging.getLogger(__name__)

PARENT_TAG = "compare.parent_run_id"
NOTE_LIMIT = 7900


# ---------------------------------------------------------------- the stage
def compare(params: Params, root: Path | None = None) -> dict:
    """Build the leaderboard, update the champions, write reports/ and log it all to MLflow."""
    root = root or Path.cwd()
    rows = build_leaderboard(params, root)
    champions = champion.update_champions(params, root=root)
    mark_champions(rows, _client())
    history = champion.read_history(params, root)
    outputs, markdown = report.write_reports(rows, champions, history, root)
    outputs["gpt_vs_bert.md"], _ = write_gpt_vs_bert(rows, root)
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


# ---------------------------------------------------------------- MLflow parent run
def compare_ui_link(run_ids: list[str], experiment_id: str) -> str:
    """The MLflow UI route comparing these runs (append to the server's base URL)."""
    return f'#/compare-runs?runs={json.dumps(run_ids, separators=(",", ":"))}&experiments=["{experiment_id}"]'


def log_comparison(
    rows: list[Row], outputs: dict[str, Path], markdown: str, params: Params, root: Path | None = None
) -> str:
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
    log.info(
        "Comparison logged to MLflow run %s (experiment %r), linked to %d runs",
        parent_id,
        COMPARE_EXPERIMENT,
        len(linked),
    )
    return parent_id


def run_description(markdown: str) -> str:
    """The parent run's description: the report's tables (MLflow tags hold at most 8000 characters)."""
    note = "\n\nPlots and the full report: this run's artifacts (comparison.md, plots/)."
    title, *sections = markdown.split("\n## Plots")[0].split("\n## ")
    body = title
    for section in sections:  # in report order, every section that still fits (a long one is skipped whole)
        if len(body) + len(section) + 4 + len(note) <= NOTE_LIMIT:
            body += f"\n## {section}"
    return (body + note)[:NOTE_LIMIT]


def _missing_run(row: Row) -> bool:
    return any("is not in this tracking store" in n for n in row.notes)


def _flat(row: Row) -> dict:
    """A leaderboard row as one flat record (for the MLflow table); metrics a task lacks are n/a."""
    out = {
        "task": row.task,
        "model": row.model,
        "status": row.status,
        "family": row.family or NOT_AVAILABLE,
        "weight_source": row.weight_source or NOT_AVAILABLE,
        "main_metric": main_metric(row.task),
        "main_value": row.main_value,
    }
    for name in (main_metric(row.task), *secondary_metrics(row.task)):
        out[f"test_{name}"] = row.test.get(name)
    out["main_ci_low"], out["main_ci_high"] = row.main_ci or (None, None)
    for name in ("transfer_gain", "attention_gain"):
        gain = getattr(row, name) or {}
        out[name] = gain.get("gain")
        out[f"{name}_p_value"] = gain.get("p_value")
        out[f"{name}_control"] = gain.get("control", "")
    for key in COST_FIELDS:
        out[key] = getattr(row, key)
    out.update(
        mlflow_run_id=row.mlflow_run_id or "",
        registered_version=row.registered_version or "",
        champion=row.champion,
        notes="; ".join(row.notes),
    )
    return out
