"""Training flow for one model on one task (the finetune@, train@ and scratch@ stages of dvc.yaml).

    python -m flows.train MODEL TASK      e.g. python -m flows.train minilm emotion

Every model family goes through the one training driver (pipeline.train.driver): gpt/bert-family models are
fine-tuned from pretrained weights, rnn/encdec are trained from scratch as text-to-text models.
A killed run resumes from its last checkpoint (checkpoints/<stage>-<model>-<task>/) in the same MLflow run.
With params.common.torchrun_nproc = N > 0, the gpt/bert-family fine-tuning runs in N processes (flows/launch.py).
"""

from __future__ import annotations

import sys

from prefect import flow

from flows.common import external_task, mark_flow_run, params_or_exit, run_cli
from pipeline.core import paths
from pipeline.core.config import PRETRAINED_FAMILIES, TASKS, Params
from pipeline.core.io import METRICS_FILE


def usage(params: Params) -> str:
    return f"usage: python -m flows.train MODEL ({'|'.join(params.models)}) TASK ({'|'.join(TASKS)})"


def train(model: str, task: str, params: Params) -> dict:
    nproc = params.common.torchrun_nproc
    if nproc and params.models[model].family in PRETRAINED_FAMILIES:  # the Trainer-based families: DDP
        from flows.launch import run_under_torchrun

        return run_under_torchrun(nproc, "flows.train", [model, task], paths.model_dir(model, task) / METRICS_FILE)
    from pipeline.train.driver import train as run_training

    return run_training(model, task, params)


@flow(name="train", flow_run_name="{model}-{task}", log_prints=True)
def train_flow(model: str, task: str) -> dict:
    params = params_or_exit()
    mark_flow_run()
    # MLflow server / registry errors that are transient are retried; a retry resumes the same MLflow run
    # from its checkpoint and reuses a version already registered (pipeline.tracking.runs / .registry).
    return external_task(train, f"train-{model}-{task}", params)(model, task, params)


def worker(model: str, task: str) -> None:
    """One torchrun worker (flows/launch.py): the driver in this process's part of the process group."""
    from flows.common import setup_logging
    from flows.launch import process_group
    from pipeline.train.driver import train as run_training

    setup_logging()
    params = params_or_exit()
    with process_group():
        run_training(model, task, params)


def main(argv: list[str]) -> None:
    from flows.launch import WORKER_FLAG

    if argv[:1] == [WORKER_FLAG]:
        worker(*argv[1:])
        return
    params = params_or_exit()  # fail on bad params before Prefect starts
    if len(argv) != 2 or argv[0] not in params.models or argv[1] not in TASKS:
        raise SystemExit(f"{usage(params)}\n(got {' '.join(argv)!r})")
    run_cli(train_flow, *argv)


if __name__ == "__main__":
    main(sys.argv[1:])
