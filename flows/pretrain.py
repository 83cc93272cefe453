"""Pretraining flow: this pipeline's own GPT (causal LM) or BERT (MLM + NSP) on the corpus.

    python -m flows.pretrain gpt
    python -m flows.pretrain bert

A killed run resumes from its last checkpoint (checkpoints/pretrain-<family>/) and continues the same MLflow run.
For GPU-sized models: HT_PROFILE=gpu python -m flows.pretrain gpt (see pipeline/pretrain/run.py).
"""

from __future__ import annotations

import sys

from prefect import flow

from flows.common import external_task, mark_flow_run, params_or_exit, run_cli
from pipeline.core.config import PRETRAINED_FAMILIES

USAGE = f"usage: python -m flows.pretrain FAMILY ({'|'.join(PRETRAINED_FAMILIES)})"


@flow(name="pretrain", log_prints=True)
def pretrain_flow(family: str) -> dict:
    from pipeline.pretrain.run import pretrain

    params = params_or_exit()
    mark_flow_run()
    # transient MLflow errors are retried; a retry resumes the same run from its checkpoint
    return external_task(pretrain, f"pretrain-{family}", params)(family, params)


def main(argv: list[str]) -> None:
    params_or_exit()  # fail on bad params before Prefect starts
    if len(argv) != 1 or argv[0] not in PRETRAINED_FAMILIES:
        raise SystemExit(f"{USAGE}\n(got {' '.join(argv)!r})")
    run_cli(pretrain_flow, argv[0])


if __name__ == "__main__":
    main(sys.argv[1:])
