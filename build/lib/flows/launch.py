"""Run a Trainer-based stage in N processes: `torchrun --nproc_per_node=N` when params.common.torchrun_nproc = N.

The stage's flow (flows/train.py, flows/pretrain.py) stays one Prefect flow run in one process; it starts torchrun,
whose N workers run the same module as plain workers (`python -m flows.pretrain --torchrun-worker gpt`, no Prefect):
each joins the process group (gloo on CPU, NCCL on GPU) and runs the pipeline function; the HF Trainer trains the
model with DDP, and only rank 0 logs to MLflow, saves and registers (pipeline/core/distributed.py). The flow then
reads the stage's metrics.json that rank 0 wrote. The workers carry the flow run's id (HT_PREFECT_FLOW_RUN_ID), so
the MLflow run is still tagged with it. The rnn and encdec stages (hand loop / Seq2SeqTrainer) stay one process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    """torchrun failed; its workers' output (above in the log) says why."""


WORKER_FLAG = "--torchrun-worker"  # argv[1] of a stage module started by torchrun (flows/train.py, flows/pretrain.py)


def torchrun_command(nproc: int, module: str, args: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        module,
        WORKER_FLAG,
        *args,
    ]


def run_under_torchrun(nproc: int, module: str, args: list[str], result_file: Path) -> dict:
    """Run `python -m <module> --torchrun-worker <args>` in `nproc` processes; returns rank 0's result_file."""
    cmd = torchrun_command(nproc, module, args)
    what = f"{module} {' '.join(args)}"
    log.info("%s in %d processes: %s", what, nproc, " ".join(cmd))
    result_file = Path(result_file)
    before = result_file.stat().st_mtime_ns if result_file.exists() else None
    proc = subprocess.run(cmd, env=dict(os.environ))
    if proc.returncode != 0:
        raise LaunchError(f"torchrun ({nproc} processes) of {what} failed with exit status {proc.returncode}")
    if not result_file.exists() or result_file.stat().st_mtime_ns == before:
        raise LaunchError(f"torchrun of {what} finished but rank 0 did not write {result_file}")
    return json.loads(result_file.read_text(encoding="utf-8"))


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """A torchrun worker's membership of the process group (NCCL on GPU, gloo on CPU), left at the end."""
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()
