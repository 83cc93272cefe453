"""Multi-process training: GPT pretraining in 2 processes (torchrun, DDP over gloo) vs 1, same global batch.

The pipeline's own path (flows.pretrain.pretrain -> flows/launch.py -> pipeline.pretrain.run) in a copy of the
bench's stand-in root, with params.yaml's default GPT size and `steps` steps, alternating 1- and 2-process runs.
Reported: training tokens/s of each (the Trainer's non-padding tokens over train() wall time, from metrics.json)
and their ratio. On this 2-core machine the expected ratio is about 1x (the point here is correctness; the
scale-out is for a multi-GPU machine); on a lent GPU, run it with torchrun_nproc=1 to check the single-GPU path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import yaml

from bench import fixtures
from bench.common import REPO_ROOT, BenchOptions, fmt_ratio, result_body, row

log = logging.getLogger("bench")

NAME = "ddp"


def _one_run(root: Path, nproc: int, steps: int) -> float:
    from flows.pretrain import pretrain
    from pipeline.core.config import parse_params

    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["common"].update(
        torchrun_nproc=nproc,
        num_threads=1 if nproc else 2,  # the same 2 cores in both arms
        mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        mlflow_artifact_root=str(root / "mlartifacts"),
    )
    raw["pretrain"]["gpt"].update(max_steps=steps, eval_steps=steps, save_steps=steps, warmup_steps=1)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    with contextlib.chdir(root):
        metrics = pretrain("gpt", parse_params(raw))
    shutil.rmtree(root / "data" / "pretrain", ignore_errors=True)
    return float(metrics["tokens_per_s"])


def run(opts: BenchOptions, ctx: dict) -> dict:
    steps, reps = opts.size(60, 16), opts.pick(3, 1)
    source = fixtures.stand_in_root()
    workdir = Path(tempfile.mkdtemp(prefix="ht-bench-ddp-"))
    root = workdir / "root"
    shutil.copytree(source / "data", root / "data")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    samples: dict[int, list[float]] = {0: [], 2: []}
    try:
        for rep in range(reps):
            for nproc in (0, 2) if rep % 2 == 0 else (2, 0):
                samples[nproc].append(_one_run(root, nproc, steps))
                log.info("ddp: %d process(es): %.0f tokens/s", max(nproc, 1), samples[nproc][-1])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    one, two = statistics.median(samples[0]), statistics.median(samples[2])
    rows = [
        row("GPT pretraining tokens/s, 1 process", "-", f"{one:.0f}", "report", f"{steps} steps, median of {reps}"),
        row("GPT pretraining tokens/s, 2 processes", "-", f"{two:.0f}", "report", "torchrun, gloo, 1 thread each"),
        row(
            "2 vs 1 process throughput",
            "~1x on 2 cores",
            fmt_ratio(two / one),
            "report",
            "same global batch; a multi-GPU machine is where it scales",
        ),
    ]
    return result_body(rows, samples={str(k): v for k, v in samples.items()}, steps=steps)
