"""Whole pipeline: wall time and peak memory of `make run` on the default params, per stage.

Opt-in (`make bench FULL=1`, ~30 min): copies the repo to a workspace (bench.workspace, default
/tmp/ht-bench/full/repo), runs what `make run` runs there (`python -m flows.run_pipeline`; plain `dvc repro`
while that flow does not exist), timing each DVC stage from its 'Running stage' line and sampling the RSS of the
whole process tree. The workspace is kept: later `make bench` runs measure no-op/incremental repro, quality and
inference on it. Without FULL=1 the last full run's result is re-reported (marked with its date), or
"not measured". With HT_BENCH_SMOKE=1 the run uses the smoke profile (profiles/smoke.yaml: every stage, tiny sizes)
to check this machinery in minutes; its numbers are not the default run's, so they are reported without a verdict.
"""

from __future__ import annotations

import logging
import os
import shutil
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
WALL_TARGET_S = 30 * 60
RSS_TARGET_GIB = 8.0
TIMEOUT_S = 3 * 3600
SMOKE_ENV = "HT_BENCH_SMOKE"
SMOKE_PROFILE = "smoke"


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


def rows_for(run: dict, when: str = "", smoke: bool = False) -> list[dict]:
    suffix = f" (full run of {when})" if when else ""
    if smoke:
        suffix += f"; profile {SMOKE_PROFILE} ({SMOKE_ENV}=1), not the default run: no verdict"
    if run["rc"] != 0:
        tail = " / ".join(run.get("log_tail", [])[-3:])
        return [
            row(
                "make run (default params)",
                "<= 30 min on 2 cores",
                fmt_s(run["wall_s"]),
                ERROR,
                f"exited {run['rc']}{suffix}: {tail}",
            )
        ]
    stages = sorted(run["stages"], key=lambda s: -s["wall_s"])
    top = ", ".join(f"{s['name']} {fmt_s(s['wall_s'])}" for s in stages[:5])
    heaviest = max(stages, key=lambda s: s["peak_rss_gib"], default=None)
    judge = (lambda ok: REPORT) if smoke else verdict
    return [
        row(
            "make run wall time (default params)",
            "<= 30 min on 2 cores",
            fmt_s(run["wall_s"]),
            judge(run["wall_s"] <= WALL_TARGET_S),
            f"{len(stages)} stages{suffix}",
        ),
        row(
            "make run peak memory (process tree RSS)",
            f"<= {RSS_TARGET_GIB:.0f} GiB",
            f"{run['peak_rss_gib']:.2f} GiB",
            judge(run["peak_rss_gib"] <= RSS_TARGET_GIB),
            f"heaviest stage {heaviest['name']} {heaviest['peak_rss_gib']:.2f} GiB" if heaviest else "",
        ),
        row("slowest stages", "report", top or "-", REPORT, "all stages in whole_pipeline.json"),
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
                        "<= 30 min on 2 cores, <= 8 GiB",
                        "-",
                        NOT_MEASURED,
                        "not measured: opt-in, run `make bench FULL=1` (~30 min)",
                    )
                ]
            )
        body = {k: previous[k] for k in ("run", "workspace", "command", "smoke") if k in previous}
        return result_body(
            rows_for(previous["run"], previous_when, smoke=bool(previous.get("smoke"))),
            reused_from=previous_when,
            **body,
        )

    workdir = DEFAULT_WORKDIR / "full"
    if workdir.exists():
        shutil.rmtree(workdir)
    repo = clone_repo(REPO_ROOT, workdir)
    smoke = smoke_enabled()
    cmd = make_run_command(repo)
    log.info("whole pipeline: %s in %s (log: %s)", " ".join(cmd), repo, workdir / "run.log")
    tracked = run_tracked(cmd, repo, run_env(smoke), timeout=TIMEOUT_S, log_file=workdir / "run.log")
    result = tracked.to_dict()
    return result_body(
        rows_for(result, smoke=smoke),
        run=result,
        workspace=str(repo),
        command=cmd,
        log_file=str(workdir / "run.log"),
        smoke=smoke,
    )
