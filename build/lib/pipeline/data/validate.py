"""Validate stage: run the dataset's Great Expectations suite on every split of data/raw/<name>.

Writes data/validation/<name>.json (success, per split and expectation: observed values, unexpected
counts, a few offending rows) and GX Data Docs under data/validation/docs/<name>/, both atomically.
Any failed expectation raises DataValidationError with a readable summary, so the flow exits non-zero
and DVC stops the stages downstream.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import pandas as pd

from pipeline.core.config import DATASETS, Params
from pipeline.core.io import atomic_dir, write_json
from pipeline.core.paths import raw_dir, validation_docs, validation_report
from pipeline.data.expectations import DISPLAY_COLUMNS, ROW, build_frames, build_suite, failure_hint
from pipeline.data.readers import FEATURES

log = logging.getLogger(__name__)

SITE = "local_site"
MAX_OFFENDING_ROWS = 5
MAX_SHOWN_CHARS = 100
# aggregate expectations on a boolean helper column: the offending rows are those where it is True
FLAG_COLUMNS = {"is_duplicate", "in_test", "is_blank"}


class DataValidationError(ValueError):
    """The data broke at least one expectation; the message says which, where, and shows offending rows."""


def validate_dataset(name: str, params: Params) -> dict:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")
    source = raw_dir(name)
    if not source.is_dir():
        raise FileNotFoundError(f"{source} not found: run the ingest stage first (python -m flows.data ingest {name})")
    dsdict = datasets.load_from_disk(str(source))
    checks = params.validate_.datasets[name]
    log.info("validate %s: %s", name, ", ".join(f"{s} {len(d)} rows" for s, d in dsdict.items()))

    report = {"dataset": name, "source": str(source), "success": True, "splits": {}}
    missing = {s: sorted(set(FEATURES[name]) - set(d.column_names)) for s, d in dsdict.items()}
    if any(missing.values()):  # no frame can be built: report the schema alone
        for split, ds in dsdict.items():
            result = _schema_result(name, ds)
            report["splits"][split] = {"rows": len(ds), "success": result["success"], "results": [result]}
        report["success"] = False
        write_json(validation_report(name), report)
        raise DataValidationError(
            summarize_failures(report) + "\nMissing columns: " + "; ".join(f"{s}: {m}" for s, m in missing.items() if m)
        )
    docs_target = validation_docs(name)
    with atomic_dir(docs_target) as docs_tmp:
        schema_results = {split: _schema_result(name, ds) for split, ds in dsdict.items()}
        frames = build_frames(name, dsdict)
        runs = run_suite(name, checks, frames, docs_tmp)
        for split, frame in frames.items():
            results = [schema_results[split], *(_result_entry(r, frame, name) for r in runs[split])]
            ok = all(r["success"] for r in results)
            report["splits"][split] = {"rows": len(frame), "success": ok, "results": results}
            report["success"] &= ok
        results = [r for split_report in report["splits"].values() for r in split_report["results"]]
        report["evaluated_expectations"] = len(results)
        report["failed_expectations"] = sum(not r["success"] for r in results)
        report["docs"] = str(docs_target / "index.html")
    write_json(validation_report(name), report)
    if not report["success"]:
        raise DataValidationError(summarize_failures(report))
    log.info("validate %s: all expectations passed (%s; Data Docs %s)", name, validation_report(name), report["docs"])
    return report


# ---------------------------------------------------------------- Great Expectations
def run_suite(name: str, checks, frames: dict[str, pd.DataFrame], docs_dir: Path) -> dict[str, list]:
    """Run the suite on each split's frame through a Checkpoint, then build the Data Docs site once."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    # the ephemeral context comes with a `local_site` in a fresh temp folder: point it at ours, drop that folder
    default_dir = context.list_data_docs_sites().get(SITE, {}).get("store_backend", {}).get("base_directory")
    if default_dir and Path(default_dir).is_dir() and not any(Path(default_dir).iterdir()):
        Path(default_dir).rmdir()
    context.update_data_docs_site(
        SITE,
        {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    suite = context.suites.add(build_suite(name, checks))
    source = context.data_sources.add_pandas(f"raw_{name}")
    result_format = {
        "result_format": "SUMMARY",
        "unexpected_index_column_names": [ROW],
        "partial_unexpected_count": MAX_OFFENDING_ROWS,
    }
    out = {}
    for split, frame in frames.items():
        batch = source.add_dataframe_asset(split).add_batch_definition_whole_dataframe(split)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}-{split}", data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"{name}-{split}",
                validation_definitions=[definition],
                # no UpdateDataDocsAction: it rebuilds the whole site after every split (slow); one build below
                actions=[],
                result_format=result_format,
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        (suite_result,) = result.run_results.values()
        out[split] = list(suite_result.results)
    context.build_data_docs(site_names=[SITE])  # renders every stored validation result + the suite + index
    return out


def _result_entry(result, frame: pd.DataFrame, name: str) -> dict:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "result_format")}
    details = result.result or {}
    entry = {
        "expectation": config.type,
        "column": kwargs.get("column")
        or (f"{kwargs['column_A']},{kwargs['column_B']}" if "column_A" in kwargs else None),
        "kwargs": _jsonable(kwargs),
        "success": bool(result.success),
    }
    if config.description:
        entry["description"] = config.description
    if result.exception_info and result.exception_info.get("raised_exception"):
        entry["error"] = result.exception_info.get("exception_message")
    if "observed_value" in details:
        entry["observed_value"] = _jsonable(details["observed_value"])
    if "unexpected_count" in details:
        entry["unexpected_count"] = int(details["unexpected_count"])
        entry["unexpected_percent"] = round(float(details.get("unexpected_percent") or 0.0), 4)
    if not entry["success"]:
        entry["offending_rows"] = _offending_rows(entry, details, frame, name)
        if "unexpected_count" not in entry and entry["column"] in FLAG_COLUMNS:
            entry["unexpected_count"] = int(frame[entry["column"]].sum())
    return entry


def _offending_rows(entry: dict, details: dict, frame: pd.DataFrame, name: str) -> list[dict]:
    rows: list[int] = []
    for item in details.get("partial_unexpected_index_list") or []:
        rows.append(int(item[ROW] if isinstance(item, dict) else item))
    if not rows and entry["column"] in FLAG_COLUMNS:
        rows = frame.index[frame[entry["column"]].astype(bool)].tolist()
    return [_show_row(frame, name, r) for r in rows[:MAX_OFFENDING_ROWS]]


def _show_row(frame: pd.DataFrame, name: str, row: int) -> dict:
    shown = {ROW: int(row)}
    for column in DISPLAY_COLUMNS[name]:
        value = frame.at[row, column]
        if column == "label" and pd.notna(value) and 0 <= int(value) < FEATURES[name]["label"].num_classes:
            value = f"{int(value)} ({FEATURES[name]['label'].int2str(int(value))})"
        elif isinstance(value, str) and len(value) > MAX_SHOWN_CHARS:
            value = value[: MAX_SHOWN_CHARS - 3] + "..."
        shown[column] = None if value is None or (not isinstance(value, str) and pd.isna(value)) else _jsonable(value)
    return shown


def _schema_result(name: str, ds: datasets.Dataset) -> dict:
    """The saved features must be the canonical ones (column names, types, label names and order)."""
    expected, found = FEATURES[name], ds.features
    ok = expected == found
    entry = {
        "expectation": "raw_features_match_canonical",
        "column": None,
        "kwargs": {"features": str(expected)},
        "success": ok,
        "observed_value": str(found),
    }
    if not ok:
        entry["unexpected_count"] = len(set(expected) ^ set(found)) or 1
        entry["offending_rows"] = []
    return entry


# ---------------------------------------------------------------- reporting
def summarize_failures(report: dict) -> str:
    name = report["dataset"]
    lines = [f"Data validation failed for dataset {name!r} ({report['source']}):"]
    for split, split_report in report["splits"].items():
        for r in split_report["results"]:
            if r["success"]:
                continue
            args = ", ".join(f"{k}={v}" for k, v in r["kwargs"].items() if k not in ("column", "column_A", "column_B"))
            where = f"column {r['column']!r}" if r["column"] else "table"
            what = (
                f"{r['unexpected_count']} unexpected of {split_report['rows']} rows" if "unexpected_count" in r else ""
            )
            observed = f"observed {r['observed_value']}" if "observed_value" in r else ""
            detail = "; ".join(x for x in (what, observed, r.get("error", "")) if x)
            lines.append(f"  - split {split!r}: {r['expectation']} on {where} ({args}) failed: {detail}")
            hint = failure_hint(name, split, r["column"])
            if hint:
                lines.append(f"      {hint}")
            for row in r.get("offending_rows", [])[:3]:
                lines.append(f"      e.g. {json.dumps(row, ensure_ascii=False)}")
    lines.append(
        f"Full report: {validation_report(name)}; Data Docs: {validation_docs(name)}/index.html. Fix the source data "
        f"(then re-run ingest) or, if the data is right, the thresholds in params.yaml validate.datasets.{name}."
    )
    return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return str(value)  # plain JSON has no Infinity
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
