"""Run every benchmark, write bench/results/<name>.json each, print and write the summary table.

    python -m bench.run_all                      # all benchmarks (reuses a finished pipeline run when present)
    python -m bench.run_all --full               # also run the whole default pipeline first (~30 min)
    python -m bench.run_all --only data,gpu      # a subset, by name
    python -m bench.run_all --quick              # fewer repetitions (smoke run on a busy machine)
    python -m bench.run_all --update-readme      # also copy the summary into bench/README.md

Benchmarks are not tests: a missed target or a benchmark that cannot run is reported, the exit code stays 0
(only a bad command line exits non-zero).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from bench.common import (
    ERROR,
    RESULTS_DIR,
    BenchOptions,
    envelope,
    read_result,
    row,
    summary_markdown,
    summary_text,
    write_result,
)
from pipeline.core.env import apply_quiet_env

log = logging.getLogger("bench")

# Run order matters: whole_pipeline (opt-in) creates the workspace the pipeline-level benchmarks reuse;
# cpu_utilisation reuses training_engine's GPT samples from the same run.
BENCHMARKS: dict[str, str] = {
    "whole_pipeline": "bench.whole_pipeline",
    "smoke_pipeline": "bench.smoke_pipeline",
    "quality": "bench.quality",
    "noop_repro": "bench.noop_repro",
    "incremental_repro": "bench.incremental_repro",
    "orchestration_overhead": "bench.orchestration_overhead",
    "inference": "bench.inference",
    "eval_order": "bench.eval_order",
    "serving": "bench.serving",
    "data_tokenization": "bench.data_tokenization",
    "training_engine": "bench.training_engine",
    "ddp": "bench.ddp",
    "cpu_utilisation": "bench.cpu_utilisation",
    "gpu": "bench.gpu",
}
SUMMARY_MD = "summary.md"
README = Path(__file__).resolve().parent / "README.md"
README_BEGIN = "<!-- bench-summary:begin -->"
README_END = "<!-- bench-summary:end -->"


def run_one(name: str, opts: BenchOptions, ctx: dict) -> dict | None:
    """Run one benchmark; an exception becomes an 'error' row (with the traceback in the JSON), never a crash.
    None when it was skipped (no CUDA device, say) and an earlier measured result exists: that one is kept, so a
    CPU machine's bench run does not erase the last GPU measurement."""
    started = time.time()
    try:
        module = importlib.import_module(BENCHMARKS[name])
        body = module.run(opts, ctx)
    except Exception as err:  # noqa: BLE001 - a broken benchmark must not stop the others
        log.exception("benchmark %s failed", name)
        body = {
            "rows": [row(name, "-", "-", ERROR, f"{type(err).__name__}: {err}")],
            "traceback": traceback.format_exc(),
        }
    previous = read_result(name)
    if body.get("skipped") and previous and not previous.get("skipped"):
        log.info("%s: skipped (%s); keeping the measured result of %s", name, body["skipped"], previous["started_at"])
        return None
    result = envelope(name, body, started, time.time())
    path = write_result(name, result)
    log.info("%s: wrote %s (%.1f s)", name, path, result["duration_s"])
    return result


def update_readme(markdown: str, readme: Path = README) -> bool:
    """Replace the summary section between the markers in bench/README.md; False when the markers are missing."""
    if not readme.exists():
        return False
    text = readme.read_text(encoding="utf-8")
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_BEGIN}\n{markdown}{README_END}{tail}", encoding="utf-8")
    return True


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help=f"comma-separated subset of: {','.join(BENCHMARKS)}")
    p.add_argument("--skip", help="comma-separated benchmarks to leave out")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and steps (noisier)")
    p.add_argument(
        "--full",
        action="store_true",
        default=os.environ.get("FULL") in ("1", "true", "yes"),
        help="run the whole default pipeline first in a workspace copy (~30 min; env FULL=1)",
    )
    p.add_argument(
        "--workspace",
        type=Path,
        default=os.environ.get("HT_BENCH_WORKSPACE") or None,
        help="a repo copy holding a finished pipeline run to measure (default: discover)",
    )
    p.add_argument("--reps", type=int, help="override the repetition count of the interleaved benchmarks")
    p.add_argument("--update-readme", action="store_true", help="copy the summary table into bench/README.md")
    args = p.parse_args(argv)
    for flag in ("only", "skip"):
        names = [n for n in (getattr(args, flag) or "").split(",") if n]
        unknown = sorted(set(names) - set(BENCHMARKS))
        if unknown:
            p.error(f"--{flag}: unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
        setattr(args, flag, names)
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("HT_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    apply_quiet_env()
    # benchmarks train in scratch workspaces whose params they edit: registering from them is expected
    os.environ.setdefault("HT_ALLOW_DIRTY", "1")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    opts = BenchOptions(quick=args.quick, full=args.full, workspace=args.workspace, reps=args.reps)
    names = [n for n in BENCHMARKS if (not args.only or n in args.only) and n not in args.skip]
    ctx: dict[str, dict] = {}
    for name in names:
        log.info("=== %s ===", name)
        result = run_one(name, opts, ctx)
        if result is not None:
            ctx[name] = result
    # The summary covers every benchmark: this run's results, and the latest earlier one of those not run now.
    earlier = {n: read_result(n) for n in BENCHMARKS if n not in ctx}
    earlier = {n: r for n, r in earlier.items() if r}
    results = [ctx.get(n) or earlier[n] for n in BENCHMARKS if n in ctx or n in earlier]
    markdown = summary_markdown(results)
    if earlier:
        markdown += "\nFrom earlier runs: " + ", ".join(f"{n} ({r['started_at']})" for n, r in earlier.items()) + "\n"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / SUMMARY_MD).write_text(markdown, encoding="utf-8")
    print("\n" + summary_text(results))
    if earlier:
        print("\nFrom earlier runs (not run now): " + ", ".join(f"{n} ({r['started_at']})" for n, r in earlier.items()))
    print(f"\nResults: {RESULTS_DIR}/<name>.json; summary: {RESULTS_DIR / SUMMARY_MD}")
    if args.update_readme:
        if update_readme(markdown):
            print(f"Summary copied into {README}")
        else:
            print(f"{README} has no {README_BEGIN} ... {README_END} section; not updated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
