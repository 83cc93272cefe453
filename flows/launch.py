"""Run a Trainer-based stage in N processes: `torchrun --nproc_per_node=N` when params.common.torchrun_nproc = N.

The stage's flow (flows/train.py, flows/pretrain.py) stays one Prefect flow run in one process; it starts torchrun,
whose N workers run this module's `worker` (`python -m flows.launch pretrain gpt` / `... train MODEL TASK`): each
joins the process group (gloo on CPU, NCCL on GPU) and runs the pipeline function; the HF Trainer trains the
model with DDP, and only rank 0 logs to MLflow, saves and registers (pipeline/core/distributed.py). The flow then
reads the stage's metrics.json that rank 0 wrote. The workers carry the flow run's id (HT_PREFECT_FLOW_RUN_ID), so
the MLflow run is still tagged with it. The rnn and encdec stages (hand loop / Seq2SeqTrainer) stay one process.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    """torchrun failed; its workers' output (above in the log) says why."""


def torchrun_command(nproc: int, entry: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "flows.launch",
        *entry,
    ]


def run_under_torchrun(nproc: int, entry: list[str], result_file: Path) -> dict:
    """Run `entry` (pretrain FAMILY | train MODEL TASK) in `nproc` processes; returns rank 0's result_file."""
    cmd = torchrun_command(nproc, entry)
    log.info("%s in %d processes: %s", " ".join(entry), nproc, " ".join(cmd))
    result_file = Path(result_file)
    before = result_file.stat().st_mtime_ns if result_file.exists() else None
    proc = subprocess.run(cmd, env=dict(os.environ))
    if proc.returncode != 0:
        raise LaunchError(
            f"torchrun ({nproc} processes) of {' '.join(entry)} failed with exit status {proc.returncode}"
        )
    if not result_file.exists() or result_file.stat().st_mtime_ns == before:
        raise LaunchError(f"torchrun of {' '.join(entry)} finished but rank 0 did not write {result_file}")
    return json.loads(result_file.read_text(encoding="utf-8"))


def worker(argv: list[str]) -> None:
    """One torchrun worker: join the process group, run the stage's pipeline function, leave the group."""
    import torch
    import torch.distributed as dist

    from flows.common import params_or_exit, setup_logging

    setup_logging()
    params = params_or_exit()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        if argv[:1] == ["pretrain"] and len(argv) == 2:
            from pipeline.pretrain.run import pretrain

            pretrain(argv[1], params)
        elif argv[:1] == ["train"] and len(argv) == 3:
            from pipeline.train.driver import train

            train(argv[1], argv[2], params)
        else:
            raise SystemExit(f"usage: python -m flows.launch pretrain FAMILY | train MODEL TASK (got {argv})")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    worker(sys.argv[1:])
