"""Multi-process training (torchrun / DDP) as the pipeline sees it: which process this is, and the per-process batch.

Under `torchrun --nproc_per_node=N` (params.common.torchrun_nproc = N; flows/launch.py starts it) every process
trains (the HF Trainer wraps the model in DDP: gloo on CPU, NCCL on GPU) and only rank 0 does what must happen
once: the MLflow run, held-out evaluations outside the Trainer, saving, registering, writing the stage outputs.
Without torchrun this is one process of rank 0 in a world of 1, and nothing changes.
"""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """True in the process that logs, saves and registers (rank 0, or the only process)."""
    return rank() == 0


def per_process_batch(global_batch: int, what: str) -> int:
    """`global_batch` split over the processes, so N processes train on the same batches as one: an error (naming
    `what`) when it does not divide."""
    n = world_size()
    if global_batch % n:
        raise ValueError(
            f"{what}: batch size {global_batch} does not split over {n} processes (torchrun_nproc); "
            f"choose a multiple of {n}"
        )
    return global_batch // n


def barrier() -> None:
    """Wait for every process (a no-op in a single process, or before the process group exists)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
