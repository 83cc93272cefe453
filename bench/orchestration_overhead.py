"""Orchestration overhead: one stage through `dvc repro` (DVC + Prefect flow + the stage's MLflow/GX work) vs
calling the same pipeline/ function directly; and what that costs over the whole default pipeline.

Three arms (and the DVC CLI's bare start-up), interleaved in rotating order, each a fresh process as in real
use, in a private workspace copy:
  dvc    `dvc repro --force --single-item <stage>`   what `make run` does per stage
  flow   `python -m flows.<x> ...` (the stage's cmd)  Prefect without DVC
  direct `python -c "<pipeline function>(...)"`      no orchestration at all
against one Prefect server started the way `make run` starts it (flows.prefect_server), whose start-up time
is recorded too (paid once per `make run`). overhead = dvc - direct per round (median); the dvc - flow and
flow - direct parts say where it goes. The stage is HT_BENCH_ORCH_STAGE (default prepare@emotion: short, so
the fixed cost shows). Over the whole pipeline: the per-stage overhead times the stages of the last full run,
(less the DVC CLI start-up, which the one `dvc repro` of `make run` pays once) plus one server start, divided
by that run's wall time (needs `make bench FULL=1`; otherwise not measured).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    ERROR,
    NOT_MEASURED,
    REPO_ROOT,
    BenchOptions,
    fmt_pct,
    fmt_s,
    interleave_many,
    read_result,
    result_body,
    row,
    summarize,
    verdict,
)
from bench.workspace import (
    DEFAULT_WORKDIR,
    bench_env,
    break_links,
    clone_repo,
    find_finished_workspace,
    measurement_copy,
    run_tracked,
)

log = logging.getLogger("bench")

NAME = "orchestration_overhead"
SHORT_STAGE_S = 2.0  # a short stage may cost this much orchestration
FRACTION = 0.05  # a long one this share of its time
DEFAULT_STAGE = "prepare@emotion"
# stage kind -> (flows module args, pipeline function, output folder under data/)
STAGES = {
    "ingest": ("flows.data ingest {name}", "pipeline.data.ingest:ingest_dataset", "raw/{name}"),
    "validate": ("flows.data validate {name}", "pipeline.data.validate:validate_dataset", "validation"),
    "prepare": ("flows.data prepare {name}", "pipeline.data.prepare:prepare_task", "prepared/{name}"),
}
DIRECT = """
import json, time
t0 = time.perf_counter()
from pipeline.core.config import load_params
from {module} import {function}
params = load_params()
t1 = time.perf_counter()
{function}({name!r}, params)
print("BENCH " + json.dumps({{"imports_s": t1 - t0, "call_s": time.perf_counter() - t1}}))
"""


def budget_ok(overhead: float, stage_s: float) -> bool:
    """The target: <= 5 % of the stage's time, or <= 2 s for short stages."""
    return overhead <= SHORT_STAGE_S or overhead <= FRACTION * stage_s


def workspace_for(stage: str, env: dict[str, str]) -> tuple[Path | None, str]:
    """A repo copy whose stage inputs exist: a copy of a finished run, else a fresh copy after running the
    stage's upstream once."""
    src, _ = find_finished_workspace(None, check_status=False)
    if src is not None:
        _, copy, why = measurement_copy(src, NAME)
        if copy is not None:
            return copy, f"copy of the finished run in {src}"
    repo = clone_repo(REPO_ROOT, DEFAULT_WORKDIR / NAME)
    setup = run_tracked(["dvc", "repro", stage], repo, env, timeout=1800)
    if setup.rc != 0:
        return None, f"setting up ({' '.join(['dvc', 'repro', stage])}) failed: {' / '.join(setup.tail[-3:])}"
    return repo, f"fresh copy, upstream run once ({', '.join(setup.ran)})"


def start_server(env: dict[str, str]):
    """The Prefect server as `make run` gets it (flows.prefect_server), from the repo under test."""
    sys.path.insert(0, str(REPO_ROOT))
    from flows.prefect_server import LocalServer

    t0 = time.perf_counter()
    server = LocalServer(env={k: v for k, v in env.items() if k.startswith(("PREFECT", "DO_NOT_TRACK"))}).start()
    return server, time.perf_counter() - t0


def run(opts: BenchOptions, ctx: dict) -> dict:
    stage = os.environ.get("HT_BENCH_ORCH_STAGE", DEFAULT_STAGE)
    kind, _, name = stage.partition("@")
    item = f"{stage}: dvc repro vs direct call"
    target = f"<= {FRACTION:.0%} of the stage or <= {SHORT_STAGE_S:g} s"
    if kind not in STAGES or not name:
        return result_body(
            [
                row(
                    item,
                    target,
                    "-",
                    ERROR,
                    f"HT_BENCH_ORCH_STAGE must be one of {sorted(STAGES)}@<name>, got {stage!r}",
                )
            ]
        )
    flow_args, function, out = STAGES[kind]
    module, fn = function.split(":")
    env = bench_env()
    server, server_start_s = start_server(env)
    env["PREFECT_API_URL"] = server.api_url
    try:
        repo, origin = workspace_for(stage, env)
    except BaseException:
        server.stop()
        raise
    if repo is None:
        server.stop()
        return result_body([row(item, target, "-", NOT_MEASURED, origin)])
    break_links(repo / "data" / out.format(name=name))
    python = str(REPO_ROOT / ".venv" / "bin" / "python")
    inner: list[dict] = []

    def call(cmd: list[str]):
        def go() -> float:
            t0 = time.perf_counter()
            out = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
            elapsed = time.perf_counter() - t0
            if out.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd[:4])} exited {out.returncode}: {out.stderr.strip()[-400:]}")
            for line in out.stdout.splitlines():
                if line.startswith("BENCH "):
                    inner.append(json.loads(line[6:]))
            return elapsed

        return go

    arms = {
        "dvc": call(["dvc", "repro", "--force", "--single-item", stage]),
        "flow": call([python, "-m", *flow_args.format(name=name).split()]),
        "direct": call([python, "-c", DIRECT.format(module=module, function=fn, name=name)]),
        # The DVC CLI's start-up: paid once by the single `dvc repro` of `make run`, not per stage.
        "dvc_cli": call(["dvc", "config", "core.analytics"]),
    }
    try:
        samples = interleave_many(arms, reps=opts.pick(5, 3), warmup=1)
    finally:
        server.stop()
    overhead = [d - x for d, x in zip(samples["dvc"], samples["direct"])]
    dvc_part = [d - f for d, f in zip(samples["dvc"], samples["flow"])]
    prefect_part = [f - x for f, x in zip(samples["flow"], samples["direct"])]
    in_repro = [o - c for o, c in zip(overhead, samples["dvc_cli"])]
    med = statistics.median(overhead)
    direct = statistics.median(samples["direct"])
    call_s = statistics.median(i["call_s"] for i in inner) if inner else None
    stats = {
        k: summarize(v)
        for k, v in (
            ("dvc", samples["dvc"]),
            ("flow", samples["flow"]),
            ("direct", samples["direct"]),
            ("overhead", overhead),
            ("dvc_part", dvc_part),
            ("prefect_part", prefect_part),
            ("dvc_cli", samples["dvc_cli"]),
            ("per_stage_in_repro", in_repro),
        )
    }
    note = (
        f"DVC {fmt_s(statistics.median(dvc_part))} + Prefect flow {fmt_s(statistics.median(prefect_part))}; "
        f"direct process {fmt_s(direct)}"
        + (f" (function itself {fmt_s(call_s)})" if call_s else "")
        + f"; inside one whole `dvc repro` ~{fmt_s(statistics.median(in_repro))} per stage (DVC CLI start-up "
        f"{fmt_s(statistics.median(samples['dvc_cli']))} paid once); Prefect server start {fmt_s(server_start_s)} "
        f"once per make run; {origin}"
    )
    rows = [row(item, target, f"+{fmt_s(med)} ({fmt_pct(med / direct)})", verdict(budget_ok(med, direct)), note)]

    whole = ctx.get("whole_pipeline") or read_result("whole_pipeline") or {}
    run_data = whole.get("run") or {}
    if run_data.get("stages") and run_data.get("rc") == 0:
        stages = run_data["stages"]
        jobs = run_data.get("jobs") or 1
        per_stage = statistics.median(in_repro)
        # with N stages at once, each stage's overhead runs beside another stage's work: 1/N of it in wall time
        total = per_stage * len(stages) / jobs + statistics.median(samples["dvc_cli"]) + server_start_s
        over = [s["name"] for s in stages if not budget_ok(per_stage, max(s["wall_s"] - per_stage, 0.0))]
        rows.append(
            row(
                "whole default pipeline (estimate)",
                f"<= {FRACTION:.0%}",
                f"{fmt_s(total)} of {fmt_s(run_data['wall_s'])} ({fmt_pct(total / run_data['wall_s'])})",
                verdict(total <= FRACTION * run_data["wall_s"]),
                f"{len(stages)} stages x {fmt_s(per_stage)} (the per-stage overhead less the DVC CLI "
                f"start-up, paid once)"
                + (f" / {jobs} stages at once" if jobs > 1 else "")
                + f" + one DVC start-up + one Prefect server start; stages over the per-stage budget: {over or 'none'}",
            )
        )
    else:
        rows.append(
            row(
                "whole default pipeline",
                f"<= {FRACTION:.0%}",
                "-",
                NOT_MEASURED,
                "not measured: needs a full run's per-stage times (`make bench FULL=1`)",
            )
        )
    shutil.rmtree(DEFAULT_WORKDIR / NAME, ignore_errors=True)
    return result_body(
        rows,
        stage=stage,
        workspace=origin,
        samples=samples,
        inner=inner,
        stats=stats,
        server_start_s=server_start_s,
        overhead_s=med,
        per_stage_in_repro_s=statistics.median(in_repro),
    )
