"""Pretraining flow: this pipeline's own GPT (causal LM) or BERT (MLM + NSP) on the corpus.

    python -m flows.pretrain gpt
    python -m flows.pretrain bert

A killed run resumes from its last checkpoint (checkpoints/pretrain-<family>/) and continues the same MLflow run.
For GPU-sized models: HT_PROFILE=gpu python -m flows.pretrain gpt (see pipeline/pretrain/run.py).
With params.common.torchrun_nproc = N > 0 it runs in N processes under torchrun (flows/launch.py).
"""

from __future__ import annotations

import sys

from prefect import flow

from flows.common import external_task, mark_flow_run, params_or_exit, run_cli
from pipeline.core import paths
from pipeline.core.config import PRETRAINED_FAMILIES

USAGE = f"usage: python -m flows.pretrain FAMILY ({'|'.join(PRETRAINED_FAMILIES)})"


def pretrain(family: str, params) -> dict:
    if params.common.torchrun_nproc:  # N processes, DDP (flows/launch.py)
        from flows.launch import run_under_torchrun

        metrics = paths.pretrain_dir(family) / "metrics.json"
        return run_under_torchrun(params.common.torchrun_nproc, "flows.pretrain", [family], metrics)
    from pipeline.pretrain.run import pretrain as run_pretraining

    return run_pretraining(family, params)


@flow(name="pretrain", log_prints=True)
def pretrain_flow(family: str) -> dict:
    params = params_or_exit()
    mark_flow_run()
    # transient MLflow errors are retried; a retry resumes the same run from its checkpoint
    return external_task(pretrain, f"pretrain-{family}", params)(family, params)


def worker(family: str) -> None:
    """One torchrun worker (flows/launch.py): pretraining in this process's part of the process group."""
    from flows.common import setup_logging
    from flows.launch import process_group
    from pipeline.pretrain.run import pretrain as run_pretraining

    setup_logging()
    params = params_or_exit()
    with process_group():
        run_pretraining(family, params)


def main(argv: list[str]) -> None:
    from flows.launch import WORKER_FLAG

    if argv[:1] == [WORKER_FLAG]:
        worker(*argv[1:])
        return
    params_or_exit()  # fail on bad params before Prefect starts
    if len(argv) != 1 or argv[0] not in PRETRAINED_FAMILIES:
        raise SystemExit(f"{USAGE}\n(got {' '.join(argv)!r})")
    run_cli(pretrain_flow, argv[0])


if __name__ == "__main__":
    main(sys.argv[1:])
