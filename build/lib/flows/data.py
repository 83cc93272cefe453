"""Data flows: ingest, validate, prepare (per task) and the pretraining corpus.

python -m flows.data ingest emotion
python -m flows.data validate emotion
python -m flows.data prepare emotion
python -m flows.data corpus
"""

from __future__ import annotations

import sys

from prefect import flow

from flows.artifacts import publish_validation, publish_validation_failure
from flows.common import external_task, mark_flow_run, params_or_exit, run_cli
from pipeline.core.config import DATASETS, TASKS

USAGE = (
    f"usage: python -m flows.data ingest|validate DATASET ({'|'.join(DATASETS)})"
    f" | prepare TASK ({'|'.join(TASKS)}) | corpus"
)


# log_prints stays off for ingest/validate: Prefect's print patch breaks dill's stdout capture (dill.detect),
# used by datasets' fingerprinting, and floods the log with bytecode listings. pipeline/ logs via `logging`.
@flow(name="ingest", log_prints=False)
def ingest_flow(dataset: str) -> str:
    from pipeline.data.ingest import ingest_dataset

    params = params_or_exit()
    mark_flow_run()
    # a hub download may fail transiently: retried (params.orchestration); bad mirror files fail at once
    ingest = external_task(ingest_dataset, f"ingest-{dataset}", params)
    return str(ingest(dataset, params))


@flow(name="validate", log_prints=False)
def validate_flow(dataset: str) -> dict:
    """Run the GX suite; results (and on failure the GX summary, also logged) become Prefect artifacts."""
    from pipeline.data.validate import DataValidationError, validate_dataset

    params = params_or_exit()
    mark_flow_run()
    try:
        report = validate_dataset(dataset, params)
    except DataValidationError as err:
        publish_validation_failure(dataset, str(err))
        raise
    publish_validation(dataset, report)
    return report


@flow(name="prepare", log_prints=False)
def prepare_flow(task_name: str) -> str:
    from pipeline.data.prepare import prepare_task

    params = params_or_exit()
    mark_flow_run()
    return str(prepare_task(task_name, params))


@flow(name="corpus", log_prints=False)
def corpus_flow() -> str:
    from pipeline.data.prepare import build_corpus

    params = params_or_exit()
    mark_flow_run()
    return str(build_corpus(params))


def main(argv: list[str]) -> None:
    params_or_exit()  # fail on bad params before Prefect starts
    if argv[:1] == ["corpus"] and len(argv) == 1:
        return run_cli(corpus_flow)
    if len(argv) != 2:
        raise SystemExit(USAGE)
    step, name = argv
    allowed = TASKS if step == "prepare" else DATASETS
    if step not in ("ingest", "validate", "prepare") or name not in allowed:
        raise SystemExit(f"{USAGE}\n(got {' '.join(argv)!r})")
    run_cli({"ingest": ingest_flow, "validate": validate_flow, "prepare": prepare_flow}[step], name)


if __name__ == "__main__":
    main(sys.argv[1:])
