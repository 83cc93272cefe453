"""Smoke profile: wall time of `make run PROFILE=smoke`, what the end-to-end test runs, against its budget.

Opt-in (`make bench FULL=1`, a few minutes): copies the repo to its own workspace (bench.workspace, default
/tmp/ht-bench/smoke/repo, apart from the default run's), runs the pipeline there with profiles/smoke.yaml (every
stage, tiny sizes) as `make run PROFILE=smoke` does, and times each stage. The suite's e2e smoke tests run this
profile, so its time bounds how long CI takes as the suite grows. Without FULL=1 the last measured result is
re-reported (marked with its date), or "not measured".
"""

from __future__ import annotations

from bench.common import ERROR, NOT_MEASURED, BenchOptions, fmt_s, read_result, result_body, row, verdict
from bench.whole_pipeline import run_in_fresh_copy

NAME = "smoke_pipeline"
WALL_TARGET_S = 8 * 60  # on 2 cores (the performance issue's budget for the smoke profile)
TIMEOUT_S = 3600
ITEM = "make run PROFILE=smoke wall time"
TARGET = f"<= {WALL_TARGET_S // 60} min on 2 cores"


def rows_for(run: dict, when: str = "") -> list[dict]:
    suffix = f" (run of {when})" if when else ""
    if run["rc"] != 0:
        tail = " / ".join(run.get("log_tail", [])[-3:])
        return [row(ITEM, TARGET, fmt_s(run["wall_s"]), ERROR, f"exited {run['rc']}{suffix}: {tail}")]
    stages = sorted(run["stages"], key=lambda s: -s["wall_s"])
    top = ", ".join(f"{s['name']} {fmt_s(s['wall_s'])}" for s in stages[:3])
    note = f"{len(stages)} stages, peak RSS {run['peak_rss_gib']:.2f} GiB; slowest: {top or '-'}{suffix}"
    return [row(ITEM, TARGET, fmt_s(run["wall_s"]), verdict(run["wall_s"] <= WALL_TARGET_S), note)]


def run(opts: BenchOptions, ctx: dict) -> dict:
    if not opts.full:
        previous = read_result(NAME)
        if not previous or not previous.get("run"):
            note = "not measured: opt-in, run `make bench FULL=1`"
            return result_body([row(ITEM, TARGET, "-", NOT_MEASURED, note)])
        when = previous.get("reused_from") or previous["started_at"]
        return result_body(rows_for(previous["run"], when), reused_from=when, run=previous["run"])

    _, repo, cmd, result = run_in_fresh_copy("smoke", smoke=True, timeout_s=TIMEOUT_S)
    return result_body(rows_for(result), run=result, workspace=str(repo), command=cmd)
