"""Shared benchmark plumbing: machine info, A/B interleaved timing, statistics, result files, summary rows.

A benchmark module exposes `run(opts: BenchOptions) -> dict` returning the body of its result
(see `result_body`); `bench.run_all` adds the envelope (machine, versions, commit, timing) and writes
bench/results/<name>.json. Benchmarks are not tests: they never raise on a slow machine, they report.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import importlib.metadata
import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pipeline.core.io import write_text
from pipeline.tracking.runs import git_commit

log = logging.getLogger("bench")

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(os.environ.get("HT_BENCH_RESULTS", REPO_ROOT / "bench" / "results"))
SCHEMA_VERSION = 1

# Status of one summary row.
MET, MISSED, REPORT, NOT_MEASURED, SKIPPED, ERROR = "met", "missed", "report", "not measured", "skipped", "error"
STATUSES = (MET, MISSED, REPORT, NOT_MEASURED, SKIPPED, ERROR)

PACKAGES = (
    "torch",
    "transformers",
    "datasets",
    "tokenizers",
    "accelerate",
    "prefect",
    "mlflow",
    "dvc",
    "great_expectations",
    "pandas",
    "numpy",
    "psutil",
)


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """What run_all passes to every benchmark."""

    quick: bool = False  # fewer reps/steps (smoke runs, shared machines)
    full: bool = False  # also run the whole pipeline (~30 min) in a workspace copy
    workspace: Path | None = None  # a repo copy that has a complete pipeline run (overrides discovery)
    reps: int | None = None  # override the repetition count of interleaved benchmarks

    def pick(self, full: int, quick: int) -> int:
        """A repetition count: --reps when given, else the full or the quick value."""
        return self.reps if self.reps else (quick if self.quick else full)

    def size(self, full: int, quick: int) -> int:
        """A workload size (steps, examples): the full or the quick value (--reps does not change it)."""
        return quick if self.quick else full


# ---------------------------------------------------------------- machine & environment
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import psutil
    import torch

    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 2),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cuda": torch.cuda.is_available(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM")},
    }
    if info["cuda"]:
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            try:
                out[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                out[name] = None
    return out


# ---------------------------------------------------------------- timing
def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleave(
    a_fn: Callable[[], Any],
    b_fn: Callable[[], Any],
    reps: int,
    warmup: int = 1,
    measure: Callable[[Callable[[], Any]], float] = timed,
) -> dict[str, list]:
    """A/B interleaved samples: warmup, then `reps` rounds in balanced alternating order (AB, BA, BA, AB, ...).

    Alternating the order within a round cancels drift (thermal, a neighbour's load) that would otherwise
    always hit the second of the pair. `measure(fn)` returns one sample (default: wall seconds of a call;
    pass e.g. `lambda fn: fn()` when the function returns its own sample, such as tokens/s).
    Returns {"a": [...], "b": [...], "order": ["ab", "ba", ...]}.
    """
    out = interleave_many({"a": a_fn, "b": b_fn}, reps, warmup, measure)
    out["order"] = ["".join(o) for o in out["order"]]
    return out


def interleave_many(
    fns: dict[str, Callable[[], Any]],
    reps: int,
    warmup: int = 1,
    measure: Callable[[Callable[[], Any]], float] = timed,
) -> dict[str, list]:
    """Interleaved samples of several arms: round i runs them in the order rotated by i (and reversed on odd
    rounds), so no arm always runs first or right after the same neighbour. {arm: [samples], "order": [...]}."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if not fns or "order" in fns:
        raise ValueError("need at least one arm, none named 'order'")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list] = {name: [] for name in names}
    samples["order"] = []
    for i in range(reps):
        k = (i // 2) % len(names)
        order = names[k:] + names[:k]
        if i % 2:
            order = order[::-1]
        for name in order:
            gc.collect()
            samples[name].append(float(measure(fns[name])))
        samples["order"].append(order)
    return samples


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]), numpy's default method."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    """n, median, p50, p95, min, max, mean, stdev (0 for one sample)."""
    if not values:
        raise ValueError("summarize of no values")
    return {
        "n": len(values),
        "median": float(statistics.median(values)),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "min": float(min(values)),
        "max": float(max(values)),
        "mean": float(statistics.fmean(values)),
        "stdev": float(statistics.stdev(values)) if len(values) > 1 else 0.0,
    }


def ratio_of_medians(a: Sequence[float], b: Sequence[float]) -> float:
    """median(a) / median(b)."""
    mb = statistics.median(b)
    if mb == 0:
        raise ZeroDivisionError("median of the baseline is 0")
    return float(statistics.median(a) / mb)


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a[i]/b[i] for each interleaved round (each round ran A and B back to back)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} A samples but {len(b)} B samples")
    return [x / y for x, y in zip(a, b)]


# ---------------------------------------------------------------- results
def row(item: str, target: str, measured: str, status: str, note: str = "") -> dict[str, str]:
    """One summary line: what, the target, the measured value, met/missed/report/not measured/skipped, why."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    return {"item": item, "target": target, "measured": measured, "status": status, "note": note}


def verdict(ok: bool) -> str:
    return MET if ok else MISSED


def result_body(rows: list[dict], **data: Any) -> dict[str, Any]:
    """What a benchmark's run() returns: its summary rows plus any raw data (samples, stats, ratios)."""
    return {"rows": rows, **data}


def envelope(name: str, body: dict[str, Any], started: float, finished: float) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "started_at": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        "duration_s": round(finished - started, 3),
        "git_commit": git_commit(REPO_ROOT, mark_dirty=True),
        "machine": machine_info(),
        "versions": package_versions(),
        **body,
    }


REQUIRED_KEYS = {"schema_version", "name", "started_at", "duration_s", "git_commit", "machine", "versions", "rows"}


def check_result(result: dict[str, Any]) -> None:
    """Raise ValueError naming what is missing or wrong in a result document."""
    missing = sorted(REQUIRED_KEYS - set(result))
    if missing:
        raise ValueError(f"result {result.get('name', '?')!r} lacks key(s) {missing}")
    if not isinstance(result["rows"], list) or not result["rows"]:
        raise ValueError(f"result {result['name']!r}: rows must be a non-empty list")
    for i, r in enumerate(result["rows"]):
        for key in ("item", "target", "measured", "status", "note"):
            if key not in r:
                raise ValueError(f"result {result['name']!r} row {i}: missing {key!r}")
        if r["status"] not in STATUSES:
            raise ValueError(f"result {result['name']!r} row {i}: bad status {r['status']!r}")


def _jsonable(obj: Any) -> Any:
    """JSON-ready copy: NaN/inf -> None (not valid JSON), paths -> str, numpy/torch scalars -> numbers."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return _jsonable(obj.item())
    return str(obj)


def write_result(name: str, result: dict[str, Any], results_dir: Path | None = None) -> Path:
    """Write bench/results/<name>.json atomically (temp file + rename)."""
    check_result(result)
    out_dir = Path(results_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_text(out_dir / f"{name}.json", json.dumps(_jsonable(result), indent=2, allow_nan=False) + "\n")


def read_result(name: str, results_dir: Path | None = None) -> dict[str, Any] | None:
    path = Path(results_dir or RESULTS_DIR) / f"{name}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- summary table
def summary_rows(results: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    for res in results:
        for r in res["rows"]:
            out.append({"benchmark": res["name"], **r})
    return out


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def summary_markdown(results: Sequence[dict[str, Any]]) -> str:
    """The summary table as Markdown: benchmark, item, target, measured, status, note."""
    lines = [
        "| benchmark | item | target | measured | status | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary_rows(results):
        status = {MET: "met", MISSED: "**missed**"}.get(r["status"], r["status"])
        lines.append(
            "| "
            + " | ".join(_cell(x) for x in (r["benchmark"], r["item"], r["target"], r["measured"], status, r["note"]))
            + " |"
        )
    return "\n".join(lines) + "\n"


def summary_text(results: Sequence[dict[str, Any]], width: int = 60) -> str:
    """The summary as a fixed-width console table (long notes wrapped under their row)."""
    rows = summary_rows(results)
    head = ("benchmark", "item", "target", "measured", "status")
    widths = [max([len(h)] + [len(str(r[k])) for r in rows]) for h, k in zip(head, head)]
    widths = [min(w, 40) for w in widths]

    def fmt(values):
        return "  ".join(str(v)[:w].ljust(w) for v, w in zip(values, widths)).rstrip()

    lines = [fmt(head), fmt(["-" * w for w in widths])]
    for r in rows:
        lines.append(fmt([r[k] for k in head]))
        if r["note"]:
            lines.append(" " * 4 + "↳ " + r["note"][: width * 3])
    return "\n".join(lines)


# ---------------------------------------------------------------- formatting helpers
def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f} %"
