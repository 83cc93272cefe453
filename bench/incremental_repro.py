"""Incremental reproduction: `dvc repro` after changing one fine-tune param runs only the stages it concerns.

In a private copy (hard links) of a finished run, sets `train.overrides.<model>-<task>.max_steps` (a small
value, so the re-run is short) in params.yaml, runs `dvc repro` and records which stages ran and how long it took.
Expected: that model-task's stage, its scratch twin's if it has one (a control trains with its twin's override),
compare, and the `params` stage, which writes params.effective.yaml from params.yaml in a blink. The stage can be
chosen with HT_BENCH_INCREMENTAL=<model>-<task> (default bert-emotion).
"""

from __future__ import annotations

import logging
import os

import yaml

from bench.common import ERROR, NOT_MEASURED, BenchOptions, fmt_s, result_body, row, verdict
from bench.workspace import NOT_RUN_HINT, bench_env, break_links, measurement_copy, run_tracked

log = logging.getLogger("bench")

NAME = "incremental_repro"
DEFAULT_RUN = "bert-emotion"
MAX_STEPS = 20
TIMEOUT_S = 1800


def affected_stages(before, after) -> list[str]:
    """The training stages whose settings (run-params/<model>-<task>.yaml, which each reads) differ
    between two Params: the stages `dvc repro` must re-run, a control following its twin's override."""
    from pipeline.core.effective import effective_runs
    from pipeline.core.run_settings import RunSettings

    old, new = effective_runs(before), effective_runs(after)
    changed = sorted(name for name in new if old.get(name) != new[name])
    return [f"{RunSettings.resolve(*name.split('-', 1), after).stage}@{name}" for name in changed]


def change_param(params_file, model_task: str) -> dict:
    """Set train.overrides.<model_task>.max_steps to a new small value; returns the override written."""
    raw = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    overrides = raw.setdefault("train", {}).setdefault("overrides", {})
    current = dict(overrides.get(model_task) or {})
    current["max_steps"] = MAX_STEPS + 1 if current.get("max_steps") == MAX_STEPS else MAX_STEPS
    overrides[model_task] = current
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return current


def run(opts: BenchOptions, ctx: dict) -> dict:
    from pipeline.core.config import load_params

    model_task = os.environ.get("HT_BENCH_INCREMENTAL", DEFAULT_RUN)
    item = f"dvc repro after changing train.overrides.{model_task}"
    src, copy, why = measurement_copy(opts.workspace, NAME)
    if copy is None:
        return result_body(
            [row(item, "only params, its stage(s) and compare run", "-", NOT_MEASURED, f"{NOT_RUN_HINT} ({why})")]
        )
    before = load_params(copy / "params.yaml")
    override = change_param(copy / "params.yaml", model_task)
    trained = affected_stages(before, load_params(copy / "params.yaml"))
    expected = {"params", *trained, "compare"}
    target = f"only params, {', '.join(trained)} and compare run"
    # The re-run stages and compare rewrite their outputs: give them private files, not links to the source's.
    for folder in [copy / "data" / "models" / s.split("@", 1)[1] for s in trained] + [copy / "reports"]:
        if folder.exists():
            break_links(folder)
    tracked = run_tracked(["dvc", "repro"], copy, bench_env(), timeout=TIMEOUT_S, log_file=copy.parent / "repro.log")
    data = {
        "source": str(src),
        "copy": str(copy),
        "override": {model_task: override},
        "run": tracked.to_dict(),
        "expected": sorted(expected),
    }
    if tracked.rc != 0:
        return result_body(
            [
                row(
                    item,
                    target,
                    f"ran {tracked.ran}",
                    ERROR,
                    f"dvc repro exited {tracked.rc}: {' / '.join(tracked.tail[-3:])}",
                )
            ],
            **data,
        )
    ran = set(tracked.ran)
    extra, missing = sorted(ran - expected), sorted(expected - ran)
    note = f"{len(tracked.skipped)} stages skipped; " + "; ".join(
        x for x in (f"also ran {extra}" if extra else "", f"did not run {missing}" if missing else "") if x
    )
    per_stage = ", ".join(f"{s.name} {fmt_s(s.wall_s)}" for s in tracked.stages)
    return result_body(
        [
            row(
                item,
                target,
                f"ran {len(ran)} stage(s) in {fmt_s(tracked.wall_s)}: {per_stage}",
                verdict(ran == expected),
                note.rstrip("; "),
            )
        ],
        **data,
    )
