"""Serving: latency and throughput of `models:/emotion@champion` behind `mlflow models serve` (127.0.0.1).

The served model is the classification task's champion (pipeline.compare.champion) of a finished run (the
workspaces the other pipeline-level benchmarks use, pipeline.tracking.runs' store of each); without one, a tiny
rnn is trained here (a few steps on a subsample of the real emotion data, its real test score, registered and
championed by the pipeline's own code) in HT_BENCH_WORKDIR/serving, so the benchmark runs on any checkout.
The server is started like `make serve-model` does (pipeline.tracking.serving) and stopped after.

Measured with a plain HTTP client (JSON {"inputs": [texts]} to /invocations), after warm-up requests:
- latency p50/p95 of one request at batch 1 and at batch 32, one client;
- requests/s with CLIENTS concurrent clients (threads), each sending a fixed number of batch-1 requests;
- errors: every request must answer 200 with one prediction per text in the classification shape.
- for scale: the in-process `mlflow.pyfunc` predict at batch 1 of the same model (the HTTP + JSON overhead).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from bench.common import REPO_ROOT, REPORT, BenchOptions, result_body, row, summarize, verdict
from bench.workspace import DEFAULT_WORKDIR, candidate_workspaces

log = logging.getLogger("bench")

NAME = "serving"
TASK = "emotion"
CLIENTS = 4
BATCHES = (1, 32)
TINY_SIZES = {"train": 1500, "validation": 100, "test": 200}  # the fallback model's subsample of the mirror


# ---------------------------------------------------------------- load generation (no server needed)
def timed_requests(send: Callable[[dict], None], bodies: Sequence[dict]) -> tuple[list[float], list[str]]:
    """Send each body in turn; (milliseconds of each successful request, error messages)."""
    ms, errors = [], []
    for body in bodies:
        t0 = time.perf_counter()
        try:
            send(body)
        except Exception as err:  # noqa: BLE001 - an error is a result here, counted and reported
            errors.append(f"{type(err).__name__}: {err}")
            continue
        ms.append((time.perf_counter() - t0) * 1000)
    return ms, errors


def concurrent_load(send: Callable[[dict], None], bodies: Sequence[dict], clients: int) -> dict:
    """`clients` threads, each sending every body once (a bounded loop); requests/s over the whole wall time."""
    if clients < 1 or not bodies:
        raise ValueError(f"need at least one client and one body, got {clients} and {len(bodies)}")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(lambda _: timed_requests(send, bodies), range(clients)))
    wall = time.perf_counter() - t0
    ms = [x for r, _ in results for x in r]
    errors = [e for _, es in results for e in es]
    return {
        "clients": clients,
        "requests": clients * len(bodies),
        "ok": len(ms),
        "errors": errors,
        "wall_s": wall,
        "requests_per_s": len(ms) / wall if wall > 0 else 0.0,
        "ms": ms,
        **({"latency": summarize(ms)} if ms else {}),
    }


def checked_sender(port: int, labels: Sequence[str] | None) -> Callable[[dict], None]:
    """send(body): POST it, and fail unless the answer has one {"label", "score"} per text (a known label)."""
    from pipeline.tracking.serving import invoke

    def send(body: dict) -> None:
        answers = invoke(port, body)
        if len(answers) != len(body["inputs"]):
            raise ValueError(f"{len(answers)} answers to {len(body['inputs'])} texts")
        for a in answers:
            if not isinstance(a, dict) or set(a) != {"label", "score"} or (labels and a["label"] not in labels):
                raise ValueError(f"not a classification answer: {a!r}")

    return send


# ---------------------------------------------------------------- the model to serve
def workspace_champion() -> tuple[str, Path] | None:
    """(tracking URI, repo root) of the first workspace whose store has `<TASK>@champion`."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipeline.core.config import load_params
    from pipeline.tracking.runs import tracking_uri
    from pipeline.tracking.serving import CHAMPION_ALIAS

    for root in candidate_workspaces(None):
        db = root / "mlflow" / "mlflow.db"
        if not (root / "params.yaml").exists() or not db.exists():
            continue
        uri = tracking_uri(load_params(root / "params.yaml"), root)
        try:
            MlflowClient(uri, uri).get_model_version_by_alias(TASK, CHAMPION_ALIAS)
        except MlflowException:
            continue
        return uri, root
    return None


def tiny_champion(workdir: Path, opts: BenchOptions) -> tuple[str, Path]:
    """Train, register and champion a tiny rnn for TASK in `workdir` (from scratch each time)."""
    import shutil

    from datasets import DatasetDict

    from bench.fixtures import dataset
    from pipeline.compare.champion import update_champions
    from pipeline.core.config import parse_params
    from pipeline.tracking.runs import tracking_uri
    from pipeline.train.driver import train

    shutil.rmtree(workdir, ignore_errors=True)
    full = dataset(TASK)
    data = DatasetDict({s: full[s].select(range(min(n, len(full[s])))) for s, n in TINY_SIZES.items()})
    data.save_to_disk(str(workdir / "data" / "prepared" / TASK))
    raw = copy.deepcopy(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()))
    raw["common"].update(
        num_threads=1, mlflow_tracking_uri="sqlite:///mlflow/mlflow.db", mlflow_artifact_root="mlflow/artifacts"
    )
    raw["models"]["rnn"].update(emb_dim=32, hid_dim=64)
    raw["train"]["overrides"][f"rnn-{TASK}"] = {"epochs": 1, "max_steps": opts.size(30, 10), "batch_size": 64}
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = parse_params(raw)
    with contextlib.chdir(workdir):
        train("rnn", TASK, params)
        update_champions(params, tasks=(TASK,))
    return tracking_uri(params, workdir), workdir


def test_texts(root: Path, n: int) -> list[str]:
    from datasets import load_from_disk

    test = load_from_disk(str(root / "data" / "prepared" / TASK))["test"]
    return list(test.select(range(min(n, len(test))))["text"])


# ---------------------------------------------------------------- the benchmark
def run(opts: BenchOptions, ctx: dict) -> dict:
    import mlflow

    from pipeline.tracking.runs import using_store
    from pipeline.tracking.serving import CHAMPION_ALIAS, champion_uri, running_server

    found = workspace_champion()
    source = "a finished pipeline run"
    if found is None:
        log.info("serving: no %s in a finished run; training a tiny rnn champion", champion_uri(TASK))
        found = tiny_champion(DEFAULT_WORKDIR / NAME, opts)
        source = "a tiny rnn trained by the benchmark (no finished run)"
    tracking, root = found
    texts = test_texts(root, 200)
    version = mlflow.MlflowClient(tracking, tracking).get_model_version_by_alias(TASK, CHAMPION_ALIAS)
    rng = random.Random(0)

    def bodies(batch: int, n: int) -> list[dict]:
        return [{"inputs": rng.sample(texts, min(batch, len(texts)))} for _ in range(n)]

    label_set = prepared_labels(root)
    out: dict = {
        "model_uri": champion_uri(TASK),
        "tracking_uri": tracking,
        "source": source,
        "version_tags": dict(version.tags),
    }
    with running_server(champion_uri(TASK), tracking, DEFAULT_WORKDIR / NAME / "server.log") as server:
        send = checked_sender(server.port, label_set)
        timed_requests(send, bodies(1, 3))  # warm-up
        for batch in BATCHES:
            n = opts.pick(50, 15) if batch == 1 else opts.pick(10, 3)
            ms, errors = timed_requests(send, bodies(batch, n))
            out[f"batch_{batch}"] = {"ms": ms, "errors": errors, **(summarize(ms) if ms else {})}
        out["concurrent"] = concurrent_load(send, bodies(1, opts.pick(25, 8)), CLIENTS)
    with using_store(tracking):
        model = mlflow.pyfunc.load_model(champion_uri(TASK))
        ms, _ = timed_requests(lambda b: model.predict(b["inputs"]), bodies(1, opts.pick(50, 15)))
        out["in_process_batch_1"] = {"ms": ms, **summarize(ms)}
    return result_body(rows_of(out), **out)


def prepared_labels(root: Path) -> list[str]:
    from datasets import load_from_disk

    return list(load_from_disk(str(root / "data" / "prepared" / TASK))["train"].features["label"].names)


def rows_of(out: dict) -> list[dict]:
    """The summary rows of one measurement (see run)."""
    family = out.get("version_tags", {}).get("model", "?")
    note = f"{out['model_uri']} = {family}, from {out['source']}"
    rows = []
    for batch in BATCHES:
        r = out[f"batch_{batch}"]
        measured = f"p50 {r['p50']:.1f} / p95 {r['p95']:.1f} ms" if r.get("ms") else "no successful request"
        rows.append(row(f"served {TASK}@champion, batch {batch}, 1 client", "report", measured, REPORT, note))
    c = out["concurrent"]
    measured = f"{c['requests_per_s']:.1f} req/s" + (
        f"; p50 {c['latency']['p50']:.1f} / p95 {c['latency']['p95']:.1f} ms" if c.get("latency") else ""
    )
    rows.append(row(f"served, {c['clients']} concurrent clients, batch 1", "report", measured, REPORT, note))
    errors = [e for b in BATCHES for e in out[f"batch_{b}"]["errors"]] + c["errors"]
    total = sum(len(out[f"batch_{b}"]["ms"]) + len(out[f"batch_{b}"]["errors"]) for b in BATCHES) + c["requests"]
    rows.append(
        row(
            "served requests without error",
            "0 errors",
            f"{len(errors)} of {total}",
            verdict(not errors),
            errors[0][:200] if errors else "",
        )
    )
    if "in_process_batch_1" in out:
        p = out["in_process_batch_1"]
        rows.append(
            row("in-process pyfunc predict, batch 1", "report", f"p50 {p['p50']:.1f} / p95 {p['p95']:.1f} ms", REPORT)
        )
    return rows
