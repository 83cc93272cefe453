"""Inference: p50/p95 latency of each registered model through mlflow.pyfunc, batch 1 and batch 32.

Reads the MLflow registry of a finished run (the last `make bench FULL=1` workspace, else the repo after
`make run`), loads the latest version of every `<task>-<model>` with pipeline.tracking.registry.load_registered and
predicts on that task's test texts (data/prepared/<task>), shaped like the model's logged input example.
Latency = wall time of one `predict` call, after warmup calls. Read-only: nothing is logged or registered.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import get_args

from bench.common import NOT_MEASURED, REPORT, BenchOptions, result_body, row, summarize, verdict
from bench.workspace import NOT_RUN_HINT, find_finished_workspace
from pipeline.core.config import TASK_SPECS, Family

log = logging.getLogger("bench")

NAME = "inference"
CLASSIFICATION_P50_MS = 20.0
TASK_KINDS = {task: spec.kind for task, spec in TASK_SPECS.items()}
BATCHES = (1, 32)
BATCH_32_MAX_RATIO = 5.0  # for transformers models
TRANSFORMER_FAMILIES = tuple(f for f in get_args(Family) if f != "rnn")


def tracking_store(root: Path):
    """Point MLflow at the workspace's local store for the block (the params' default sqlite location)."""
    from pipeline.core.config import load_params
    from pipeline.tracking.runs import tracking_uri, using_store

    return using_store(tracking_uri(load_params(root / "params.yaml"), root))


def test_texts(root: Path, task: str, n: int) -> list:
    """Up to n test inputs of a task (NER: the words joined by spaces, translation: English, summarization: the
    dialogue, QA: {"question", "context"} rows)."""
    from datasets import load_from_disk

    test = load_from_disk(str(root / "data" / "prepared" / task))["test"]
    test = test.select(range(min(n, len(test))))
    if "tokens" in test.column_names:
        return [" ".join(t) for t in test["tokens"]]
    if "question" in test.column_names:
        return [{"question": q, "context": c} for q, c in zip(test["question"], test["context"])]
    for column in ("en", "dialogue"):
        if column in test.column_names:
            return list(test[column])
    return list(test["text"])


def shaped(example, texts: list):
    """`texts` in the form of the model's logged input example (list of str, a DataFrame column, a dict); QA rows
    (dicts) as a DataFrame of their fields or a list of dicts."""
    import pandas as pd

    if texts and isinstance(texts[0], dict):
        return pd.DataFrame(texts) if isinstance(example, pd.DataFrame) else list(texts)
    if isinstance(example, pd.DataFrame):
        column = "text" if "text" in example.columns else example.columns[0]
        if column == "tokens":
            return pd.DataFrame({"tokens": [t.split() for t in texts]})
        return pd.DataFrame({column: texts})
    if isinstance(example, dict):
        key = "text" if "text" in example else next(iter(example))
        return {key: texts}
    return list(texts)


def latencies(model, inputs: list, warmup: int) -> list[float]:
    for x in inputs[:warmup]:
        model.predict(x)
    out = []
    for x in inputs:
        t0 = time.perf_counter()
        model.predict(x)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def measure_model(name: str, texts: list, opts: BenchOptions) -> dict:
    from pipeline.tracking.registry import load_registered

    t0 = time.perf_counter()
    model = load_registered(name, "latest")
    load_s = time.perf_counter() - t0
    example = model.input_example
    out = {"load_s": load_s, "input_type": type(example).__name__}
    for batch in BATCHES:
        calls = opts.pick(20, 5) if batch == 1 else opts.pick(5, 2)
        inputs = [shaped(example, [texts[(i * batch + j) % len(texts)] for j in range(batch)]) for i in range(calls)]
        ms = latencies(model, inputs, warmup=min(3, calls))
        out[f"batch_{batch}"] = {"ms": ms, **summarize(ms)}
    del model
    gc.collect()
    return out


def model_families(root: Path) -> dict[str, str]:
    """model name -> family (rnn, encdec, gpt, bert), from the workspace's params."""
    from pipeline.core.config import load_params

    return {name: m.family for name, m in load_params(root / "params.yaml").models.items()}


def batch_scaling_row(name: str, b1_ms: float, b32_ms: float) -> dict:
    """Batch 32 against batch 1 (target: <= BATCH_32_MAX_RATIO x), with the time per text of each: a ratio near 32
    means a batch-1 call is almost all model compute, which batching cannot share out."""
    ratio = b32_ms / b1_ms
    per_text = b32_ms / 32
    return row(
        name,
        f"batch 32 p50 <= {BATCH_32_MAX_RATIO:g}x batch 1",
        f"{ratio:.1f}x ({b32_ms:.0f} vs {b1_ms:.1f} ms)",
        verdict(ratio <= BATCH_32_MAX_RATIO),
        f"per text: {per_text:.2f} ms at batch 32 vs {b1_ms:.2f} ms at batch 1 ({per_text / b1_ms:.0%})",
    )


def run(opts: BenchOptions, ctx: dict) -> dict:
    root, why = find_finished_workspace(opts.workspace, check_status=False)
    if root is None:
        return result_body(
            [
                row(
                    "registered models, p50 at batch 1",
                    f"classification <= {CLASSIFICATION_P50_MS:g} ms",
                    "-",
                    NOT_MEASURED,
                    f"{NOT_RUN_HINT} ({why})",
                )
            ]
        )
    from mlflow import MlflowClient

    results, rows = {}, []
    with tracking_store(root) as uri:
        names = sorted(m.name for m in MlflowClient().search_registered_models())
        for name in names:
            task, _, model_name = name.partition("-")
            if task not in TASK_KINDS or not model_name:  # `<task>` itself serves a copy of a `<task>-<model>`
                continue
            try:
                texts = test_texts(root, task, 32 * opts.pick(5, 2))
                results[name] = measure_model(name, texts, opts)
            except Exception as err:  # one broken model must not hide the others
                log.exception("inference %s failed", name)
                results[name] = {"error": f"{type(err).__name__}: {err}"}
    families = model_families(root)
    for task, kind in TASK_KINDS.items():
        models = {n: r for n, r in results.items() if n.startswith(f"{task}-")}
        if not models:
            rows.append(
                row(f"{task}: registered models", "report", "-", NOT_MEASURED, f"no registered {task}-<model> in {uri}")
            )
            continue
        for name, r in sorted(models.items()):
            if "error" in r:
                rows.append(row(name, "-", "-", "error", r["error"]))
                continue
            b1, b32 = r["batch_1"], r["batch_32"]
            measured = (
                f"b1 p50 {b1['p50']:.1f} / p95 {b1['p95']:.1f} ms; b32 p50 {b32['p50']:.0f} / p95 {b32['p95']:.0f} ms"
            )
            if kind == "classification":
                rows.append(
                    row(
                        name,
                        f"p50 <= {CLASSIFICATION_P50_MS:g} ms at batch 1",
                        measured,
                        verdict(b1["p50"] <= CLASSIFICATION_P50_MS),
                        f"load {r['load_s']:.1f} s",
                    )
                )
                if families.get(name.partition("-")[2]) in TRANSFORMER_FAMILIES:
                    rows.append(batch_scaling_row(name, b1["p50"], b32["p50"]))
            else:
                rows.append(row(name, "report", measured, REPORT, f"{kind}; load {r['load_s']:.1f} s"))
    return result_body(rows, workspace=str(root), tracking_uri=uri, models=results)
