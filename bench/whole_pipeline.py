"""Whole pipeline: wall time and peak memory of `make run` on the default params, per stage.

Opt-in (`make bench FULL=1`, ~100 min): copies the repo to a workspace (bench.workspace, default
/tmp/ht-bench/full/repo), runs what `make run` runs there (`python -m flows.run_pipeline`; plain `dvc repro`
while that flow does not exist), timing each DVC stage from its 'Running stage' line and sampling the RSS of the
whole process tree. The workspace is kept: later `make bench` runs measure no-op/incremental repro, quality and
inference on it. Without FULL=1 the last full run's result is re-reported (marked with its date), or
"not measured". With HT_BENCH_SMOKE=1 the run uses the smoke profile (profiles/smoke.yaml: every stage, tiny sizes)
to check this machinery in minutes; its numbers are not the default run's, so they are reported without a verdict.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
from pathlib import Path

from bench.common import (
    ERROR,
    NOT_MEASURED,
    REPO_ROOT,
    REPORT,
    BenchOptions,
    fmt_s,
    read_result,
    result_body,
    row,
    verdict,
)
from bench.workspace import DEFAULT_WORKDIR, bench_env, clone_repo, run_tracked

log = logging.getLogger("bench")

NAME = "whole_pipeline"
# the performance issue's budget for the whole default run: 35 min on 2 cores whose fp32 matmul peak is ~300
# GFLOP/s; a slower machine's budget scales with its measured peak (wall_target_s)
WALL_TARGET_S = 35 * 60
WALL_TARGET_PEAK_FLOPS = 300e9
RSS_TARGET_GIB = 8.0
TIMEOUT_S = 3 * 3600
SMOKE_ENV = "HT_BENCH_SMOKE"
SMOKE_PROFILE = "smoke"
# fixed cost of a training stage = its wall time - its training loop - its test prediction (metrics.json timing)
FIXED_MEDIAN_TARGET_S = 5.0
FIXED_MAX_TARGET_S = 15.0
COMPARE_TARGET_S = 20.0
TRAINING_STAGE_PREFIXES = ("finetune@", "train@", "scratch@")


def smoke_enabled() -> bool:
    return os.environ.get(SMOKE_ENV, "") not in ("", "0", "false", "no")


def run_env(smoke: bool) -> dict[str, str]:
    """The run's environment: the smoke profile, or none (bench_env drops a profile the caller's shell selected)."""
    return bench_env({"HT_PROFILE": SMOKE_PROFILE} if smoke else None)


def make_run_command(repo: Path) -> list[str]:
    python = str(REPO_ROOT / ".venv" / "bin" / "python")
    if (repo / "flows" / "run_pipeline.py").exists():
        return [python, "-m", "flows.run_pipeline"]
    return ["dvc", "repro"]


def run_in_fresh_copy(name: str, smoke: bool, timeout_s: float) -> tuple[Path, Path, list[str], dict]:
    """`make run` (the smoke profile or none) in a fresh copy of the repo at DEFAULT_WORKDIR/<name>/repo, each
    stage timed: (workdir, repo, command, the tracked run as a dict); the log is <workdir>/run.log."""
    workdir = DEFAULT_WORKDIR / name
    if workdir.exists():
        shutil.rmtree(workdir)
    repo = clone_repo(REPO_ROOT, workdir)
    cmd = make_run_command(repo)
    log.info("%s pipeline: %s in %s (log: %s)", name, " ".join(cmd), repo, workdir / "run.log")
    tracked = run_tracked(cmd, repo, run_env(smoke), timeout=timeout_s, log_file=workdir / "run.log")
    return workdir, repo, cmd, tracked.to_dict()


def stage_costs(stages: list[dict], repo: Path) -> dict:
    """Per stage: wall time, and for training stages the driver's phases from data/models/<model>-<task>/
    metrics.json `timing` (fit_s: the training loop incl. its validation; test_s: the test prediction), so
    fixed_s = wall - fit - test: process start, imports, Prefect, MLflow run, latency meter, registration, plots."""
    out = {}
    for stage in stages:
        name, wall = stage["name"], stage["wall_s"]
        entry: dict = {"wall_s": round(wall, 3)}
        if name.startswith(TRAINING_STAGE_PREFIXES):
            path = repo / "data" / "models" / name.split("@", 1)[1] / "metrics.json"
            try:
                timing = json.loads(path.read_text(encoding="utf-8")).get("timing") or {}
            except (OSError, ValueError):
                timing = {}
            if timing:
                entry.update(timing)
                entry["train_s"], entry["predict_s"] = timing.get("fit_s", 0.0), timing.get("test_s", 0.0)
                entry["fixed_s"] = round(wall - entry["train_s"] - entry["predict_s"], 3)
                entry["outside_driver_s"] = round(wall - timing.get("total_s", 0.0), 3)
        out[name] = entry
    return out


def fixed_cost_rows(costs: dict, peak: dict | None, judge) -> list[dict]:
    """Training stages' fixed cost (median/max vs the targets) and the compare stage's wall time."""
    peak_note = f"; fp32 matmul peak {peak['peak_flops'] / 1e9:.1f} GFLOP/s ({peak['threads']} threads)" if peak else ""
    rows = []
    fixed = {name: c["fixed_s"] for name, c in costs.items() if "fixed_s" in c}
    if fixed:
        median, (worst, worst_s) = statistics.median(fixed.values()), max(fixed.items(), key=lambda kv: kv[1])
        phases = {
            key: statistics.median(c[key] for c in costs.values() if key in c)
            for key in ("load_s", "latency_s", "register_s", "plots_s", "outside_driver_s")
        }
        rows.append(
            row(
                "training stages: fixed cost (wall - training loop - test prediction)",
                f"median <= {FIXED_MEDIAN_TARGET_S:.0f} s, max <= {FIXED_MAX_TARGET_S:.0f} s",
                f"median {median:.1f} s, max {worst_s:.1f} s ({worst})",
                judge(median <= FIXED_MEDIAN_TARGET_S and worst_s <= FIXED_MAX_TARGET_S),
                f"{len(fixed)} stages; phase medians: "
                + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in phases.items())
                + peak_note,
            )
        )
    if "compare" in costs:
        wall = costs["compare"]["wall_s"]
        rows.append(
            row(
                "compare stage wall time",
                f"<= {COMPARE_TARGET_S:.0f} s",
                fmt_s(wall),
                judge(wall <= COMPARE_TARGET_S),
                "",
            )
        )
    return rows


def wall_target_s(peak: dict | None) -> float:
    """35 min, scaled up on a machine slower than the ~300 GFLOP/s the budget was set on (never down)."""
    if not peak or not peak.get("peak_flops"):
        return WALL_TARGET_S
    return WALL_TARGET_S * max(1.0, WALL_TARGET_PEAK_FLOPS / peak["peak_flops"])


def wall_target_text(peak: dict | None) -> str:
    return f"<= {wall_target_s(peak) / 60:.0f} min on 2 cores"


def rows_for(run: dict, when: str = "", smoke: bool = False) -> list[dict]:
    suffix = f" (full run of {when})" if when else ""
    if smoke:
        suffix += f"; profile {SMOKE_PROFILE} ({SMOKE_ENV}=1), not the default run: no verdict"
    if run["rc"] != 0:
        tail = " / ".join(run.get("log_tail", [])[-3:])
        return [
            row(
                "make run (default params)",
                wall_target_text(run.get("matmul_peak")),
                fmt_s(run["wall_s"]),
                ERROR,
                f"exited {run['rc']}{suffix}: {tail}",
            )
        ]
    stages = sorted(run["stages"], key=lambda s: -s["wall_s"])
    top = ", ".join(f"{s['name']} {fmt_s(s['wall_s'])}" for s in stages[:5])
    heaviest = max(stages, key=lambda s: s["peak_rss_gib"], default=None)
    own = sorted((s for s in stages if s.get("own_peak_rss_gib")), key=lambda s: -s["own_peak_rss_gib"])
    own_top = "; own peaks: " + ", ".join(f"{s['name']} {s['own_peak_rss_gib']:.2f}" for s in own[:3]) if own else ""
    judge = (lambda ok: REPORT) if smoke else verdict
    return [
        row(
            "make run wall time (default params)",
            wall_target_text(run.get("matmul_peak")),
            fmt_s(run["wall_s"]),
            judge(run["wall_s"] <= wall_target_s(run.get("matmul_peak"))),
            f"{len(stages)} stages{suffix}",
        ),
        row(
            "make run peak memory (process tree RSS)",
            f"<= {RSS_TARGET_GIB:.0f} GiB",
            f"{run['peak_rss_gib']:.2f} GiB",
            judge(run["peak_rss_gib"] <= RSS_TARGET_GIB),
            (f"heaviest stage {heaviest['name']} {heaviest['peak_rss_gib']:.2f} GiB" if heaviest else "") + own_top,
        ),
        row("slowest stages", "report", top or "-", REPORT, "all stages in whole_pipeline.json"),
        *fixed_cost_rows(run.get("stage_costs") or {}, run.get("matmul_peak"), judge),
    ]


def run(opts: BenchOptions, ctx: dict) -> dict:
    if not opts.full:
        previous = read_result(NAME)
        if previous and previous.get("run") and not previous.get("reused_from"):
            previous_when = previous["started_at"]
        elif previous and previous.get("reused_from"):
            previous_when = previous["reused_from"]
        else:
            return result_body(
                [
                    row(
                        "make run (default params)",
                        f"{wall_target_text(None)}, <= 8 GiB",
                        "-",
                        NOT_MEASURED,
                        "not measured: opt-in, run `make bench FULL=1` (~100 min)",
                    )
                ]
            )
        body = {k: previous[k] for k in ("run", "workspace", "command", "smoke") if k in previous}
        return result_body(
            rows_for(previous["run"], previous_when, smoke=bool(previous.get("smoke"))),
            reused_from=previous_when,
            **body,
        )

    smoke = smoke_enabled()
    workdir, repo, cmd, result = run_in_fresh_copy("full", smoke, TIMEOUT_S)
    result["stage_costs"] = stage_costs(result.get("stages") or [], repo)
    from bench.flops import matmul_peak  # the machine's fp32 peak, next to the stage costs (as cpu_utilisation)

    result["matmul_peak"] = matmul_peak(reps=opts.pick(5, 3))
    return result_body(
        rows_for(result, smoke=smoke),
        run=result,
        workspace=str(repo),
        command=cmd,
        log_file=str(workdir / "run.log"),
        smoke=smoke,
    )
