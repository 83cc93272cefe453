"""Prefect artifacts (shown in the UI on the flow run and under Artifacts): validation results, the leaderboard.

Keys (lowercase, digits, dashes) are stable, so the UI keeps a version history per key:
- `validation-<dataset>` (markdown summary) and `validation-<dataset>-results` (one row per expectation);
- `leaderboard` (reports/comparison.md) and `leaderboard-table` (one row per task x model, from comparison.json).
Outside a flow or task run these functions only log (Prefect refuses artifacts without a run context).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.core.paths import REPORTS, validation_report

log = logging.getLogger(__name__)

LEADERBOARD_KEY = "leaderboard"
LEADERBOARD_TABLE_KEY = "leaderboard-table"
MAX_CELL = 200


def validation_key(dataset: str) -> str:
    return f"validation-{dataset}".lower().replace("_", "-")


def _in_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _cell(value) -> str | int | float | bool | None:
    if value is None or isinstance(value, (int, float, bool)):
        return value
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 3] + "..."


def validation_rows(report: dict) -> list[dict]:
    """One row per (split, expectation) of a pipeline.data.validate report."""
    rows = []
    for split, split_report in (report.get("splits") or {}).items():
        for result in split_report.get("results", []):
            rows.append(
                {
                    "split": split,
                    "expectation": result.get("expectation"),
                    "column": result.get("column"),
                    "success": bool(result.get("success")),
                    "unexpected_count": result.get("unexpected_count"),
                    "observed_value": _cell(result.get("observed_value")),
                    "error": _cell(result.get("error")),
                }
            )
    return rows


def _validation_markdown(dataset: str, report: dict | None, failure: str | None) -> str:
    status = "FAILED" if failure else "passed"
    lines = [f"# Data validation of `{dataset}`: {status}", ""]
    if report:
        for split, split_report in (report.get("splits") or {}).items():
            results = split_report.get("results", [])
            failed = sum(1 for r in results if not r.get("success"))
            lines.append(
                f"- split `{split}`: {split_report.get('rows')} rows, "
                f"{len(results) - failed}/{len(results)} expectations met"
            )
        if report.get("docs"):
            lines.append(f"- Great Expectations Data Docs: `{report['docs']}`")
    if failure:
        lines += ["", "```", failure, "```"]
    return "\n".join(lines)


def publish_validation(dataset: str, report: dict | None, failure: str | None = None) -> None:
    """Publish a validation report (the dict validate_dataset returns, or the JSON it wrote before failing)."""
    if failure:
        _run_logger().error("Data validation of %s failed:\n%s", dataset, failure)
    if not _in_run():
        return
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = validation_key(dataset)
    create_markdown_artifact(
        _validation_markdown(dataset, report, failure),
        key=key,
        description=f"Great Expectations validation of {dataset}",
    )
    rows = validation_rows(report or {})
    if rows:
        create_table_artifact(rows, key=f"{key}-results", description=f"Expectations on {dataset}, per split")


def publish_validation_failure(dataset: str, summary: str, root: Path | None = None) -> None:
    """Log the GX summary and publish it, with the per-expectation table from the report validate wrote."""
    path = (root or Path.cwd()) / validation_report(dataset)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = None
    publish_validation(dataset, report, failure=summary)


def leaderboard_rows(comparison: dict) -> list[dict]:
    """reports/comparison.json ({task: {model: {metric: value}}, best, champion}) as one row per task x model."""
    champions = comparison.get("champion") or {}
    rows = []
    for task, models in comparison.items():
        if task in ("best", "champion") or not isinstance(models, dict):
            continue
        for model, cell in models.items():
            if not isinstance(cell, dict):
                continue
            row = {"task": task, "model": model, "champion": (champions.get(task) or {}).get("model") == model}
            row.update({k: _cell(v) for k, v in cell.items()})
            rows.append(row)
    return rows


def publish_leaderboard(root: Path | None = None, note: str = "") -> dict:
    """Publish reports/comparison.md (markdown) and comparison.json (table); returns what was published."""
    reports = (root or Path.cwd()) / REPORTS
    md_path, json_path = reports / "comparison.md", reports / "comparison.json"
    published: dict = {"markdown": None, "rows": 0}
    if not md_path.exists():
        _run_logger().warning("No leaderboard to publish: %s does not exist (has the compare stage run?)", md_path)
        return published
    markdown = md_path.read_text(encoding="utf-8")
    rows = []
    if json_path.exists():
        try:
            rows = leaderboard_rows(json.loads(json_path.read_text(encoding="utf-8")))
        except ValueError as err:
            _run_logger().warning("%s is not valid JSON (%s); publishing the markdown only", json_path, err)
    published.update(markdown=str(md_path), rows=len(rows))
    if not _in_run():
        return published
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    description = f"Leaderboard ({md_path})" + (f": {note}" if note else "")
    create_markdown_artifact(markdown, key=LEADERBOARD_KEY, description=description)
    if rows:
        create_table_artifact(rows, key=LEADERBOARD_TABLE_KEY, description=description)
    return published


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    if _in_run():
        from prefect import get_run_logger

        return get_run_logger()
    return log
