"""Baseline flow for one summarization task (the baseline@ stages of dvc.yaml): the lead-n-words summary.

    python -m flows.baseline TASK      e.g. python -m flows.baseline samsum

Writes data/models/lead-<task>/metrics.json (the training stages' format, so the leaderboard shows it) and logs
an MLflow run (tag family=baseline) in the task's experiment; nothing is registered (pipeline.train.baseline).
"""

from __future__ import annotations

import sys

from prefect import flow

from flows.common import external_task, mark_flow_run, params_or_exit, run_cli
from pipeline.core.config import TASK_SPECS, Params

SUMMARIZATION_TASKS = tuple(t for t, spec in TASK_SPECS.items() if spec.kind == "summarization")


def baseline(task: str, params: Params) -> dict:
    from pipeline.train.baseline import run_lead_baseline

    return run_lead_baseline(task, params)


@flow(name="baseline", flow_run_name="lead-{task}", log_prints=True)
def baseline_flow(task: str) -> dict:
    params = params_or_exit()
    mark_flow_run()
    return external_task(baseline, f"baseline-lead-{task}", params)(task, params)


def main(argv: list[str]) -> None:
    params_or_exit()  # fail on bad params before Prefect starts
    if len(argv) != 1 or argv[0] not in SUMMARIZATION_TASKS:
        raise SystemExit(
            f"usage: python -m flows.baseline TASK ({'|'.join(SUMMARIZATION_TASKS)})\n(got {' '.join(argv)!r})"
        )
    run_cli(baseline_flow, *argv)


if __name__ == "__main__":
    main(sys.argv[1:])
