"""No-op reproduction: `dvc repro` when nothing changed, on the full default pipeline.

Runs in a private copy (hard links) of a finished run (bench.workspace.measurement_copy), never in the
developer's checkout. A/B interleaved with `dvc config core.analytics` (the DVC CLI's start-up: Python, imports,
repo discovery), so the summary can say how much of the no-op time is start-up and how much is checking stages.
"""

from __future__ import annotations

import logging
import subprocess
import time

from bench.common import (
    ERROR,
    NOT_MEASURED,
    REPO_ROOT,
    BenchOptions,
    fmt_s,
    interleave,
    paired_ratios,
    result_body,
    row,
    summarize,
    verdict,
)
from bench.workspace import NOT_RUN_HINT, bench_env, measurement_copy, run_tracked
from pipeline.core.profiles import recorded_profile

log = logging.getLogger("bench")

NAME = "noop_repro"
TARGET_S = 3.0
MAKE_RUN_TARGET_S = 10.0  # `make run` with nothing changed (the performance issue)


def run(opts: BenchOptions, ctx: dict) -> dict:
    src, copy, why = measurement_copy(opts.workspace, NAME)
    if copy is None:
        return result_body(
            [row("dvc repro, nothing changed", f"<= {TARGET_S:g} s", "-", NOT_MEASURED, f"{NOT_RUN_HINT} ({why})")]
        )
    env = bench_env()
    ran: list[list[str]] = []
    skipped = []

    def repro() -> float:
        tracked = run_tracked(["dvc", "repro"], copy, env)
        if tracked.rc != 0:
            raise RuntimeError(f"dvc repro exited {tracked.rc}: {' / '.join(tracked.tail[-3:])}")
        ran.append(tracked.ran)
        skipped.append(len(tracked.skipped))
        return tracked.wall_s

    def startup() -> float:
        t0 = time.perf_counter()
        subprocess.run(["dvc", "config", "core.analytics"], cwd=copy, env=env, capture_output=True, check=True)
        return time.perf_counter() - t0

    samples = interleave(repro, startup, reps=opts.pick(5, 3), warmup=1, measure=lambda fn: fn())
    if any(ran):
        return result_body(
            [
                row(
                    "dvc repro, nothing changed",
                    f"<= {TARGET_S:g} s",
                    "-",
                    ERROR,
                    f"stages ran although the copy was up to date: {sorted({s for r in ran for s in r})}",
                )
            ],
            samples=samples,
        )
    # What a user waits for: `make run` with nothing to do (Prefect server start + retrain flow + dvc status),
    # with the profile the run in the copy was made with (a smoke workspace's: smoke), so nothing is out of date.
    # Twice: a user's `make run` with nothing changed follows an earlier one in the same checkout, which pushed
    # to the DVC remote (.dvc/tmp/last-push); the copy has no such record, so its first run pushes and is not timed.
    profile = recorded_profile(copy) or ""
    command = [str(REPO_ROOT / ".venv" / "bin" / "python"), "-m", "flows.run_pipeline", "--profile", profile]
    first = run_tracked(command, copy, env, timeout=900)
    make_run = run_tracked(command, copy, env, timeout=900) if first.rc == 0 else first
    noop, start = summarize(samples["a"]), summarize(samples["b"])
    share = paired_ratios(samples["b"], samples["a"])
    note = (
        f"{skipped[-1]} stages checked; DVC CLI start-up alone {fmt_s(start['median'])} "
        f"({summarize(share)['median']:.0%} of it)"
    )
    return result_body(
        [
            row(
                "dvc repro, nothing changed",
                f"<= {TARGET_S:g} s",
                fmt_s(noop["median"]),
                verdict(noop["median"] <= TARGET_S),
                note,
            ),
            row(
                "make run, nothing changed",
                f"<= {MAKE_RUN_TARGET_S:g} s",
                fmt_s(make_run.wall_s) if make_run.rc == 0 else "-",
                verdict(make_run.wall_s <= MAKE_RUN_TARGET_S) if make_run.rc == 0 else ERROR,
                f"ran {make_run.ran}"
                if make_run.ran
                else (
                    "the second of two runs (the first, which pushed to the DVC remote: "
                    f"{fmt_s(first.wall_s)}): Prefect server start + retrain flow + dvc status"
                    if make_run.rc == 0
                    else f"exited {make_run.rc}: {' / '.join(make_run.tail[-3:])}"
                ),
            ),
        ],
        source=str(src),
        copy=str(copy),
        samples=samples,
        stats={"noop": noop, "cli_startup": start},
        stages_checked=skipped[-1],
        make_run=make_run.to_dict(),
        make_run_first=first.to_dict(),
    )
