"""Compare flow: leaderboard of every model on every task, champion aliases, reports, MLflow parent run.

python -m flows.compare                      # the DVC compare stage
python -m flows.compare rollback emotion     # undo the last champion move of a task ...
python -m flows.compare rollback emotion-bert   # ... or of one registered model (also: make rollback TASK=...)
python -m flows.compare history [TARGET]     # print the champion history (all, a task or a registered model)
"""

from __future__ import annotations

import json
import sys

from prefect import flow

from flows.artifacts import publish_leaderboard
from flows.common import external_task, mark_flow_run, params_or_exit, run_cli, setup_logging

USAGE = (
    "usage: python -m flows.compare                  (the compare stage)\n"
    "       python -m flows.compare rollback TARGET  (a task, e.g. emotion, or a model, e.g. emotion-bert)\n"
    "       python -m flows.compare history [TARGET]"
)


@flow(name="compare", log_prints=True)
def compare_flow() -> dict:
    from pipeline.compare.stage import compare

    params = params_or_exit()
    mark_flow_run()
    # retried on transient errors (MLflow server, registry); a retry resumes the same parent run and
    # re-reads the champions, so nothing is logged or promoted twice
    result = external_task(compare, "compare", params)(params)
    publish_leaderboard()  # Prefect artifacts `leaderboard` (markdown) + `leaderboard-table`
    return {"best": result["best"], "parent_run_id": result["parent_run_id"], "outputs": result["outputs"]}


@flow(name="champion-rollback", log_prints=True)
def rollback_flow(target: str) -> dict:
    from pipeline.compare.champion import rollback

    params = params_or_exit()
    mark_flow_run()
    event = rollback(target, params)
    print(
        f"{event['registered_model']}: alias {event['alias']!r} moved back from version {event['old_version']} "
        f"to {event['new_version'] or '(none)'}; version {event['old_version']} is blocked from promotion"
    )
    return event


def check_target(target: str) -> None:
    """A wrong rollback target fails here, before Prefect starts."""
    from pipeline.compare.champion import ChampionError, resolve_target

    try:
        resolve_target(target, params_or_exit())
    except ChampionError as err:
        print(str(err), file=sys.stderr)
        raise SystemExit(2) from None


def show_history(target: str | None) -> None:
    from pipeline.compare.champion import read_history

    for event in read_history(params_or_exit()):
        if target in (None, event.get("task"), event.get("registered_model")):
            print(json.dumps(event, sort_keys=True))


def main(argv: list[str]) -> None:
    params_or_exit()  # fail on bad params before Prefect starts
    if not argv:
        return run_cli(compare_flow)
    if argv[0] == "rollback" and len(argv) == 2:
        check_target(argv[1])
        return run_cli(rollback_flow, argv[1])
    if argv[0] == "history" and len(argv) <= 2:
        setup_logging()
        return show_history(argv[1] if len(argv) == 2 else None)
    raise SystemExit(f"{USAGE}\n(got {' '.join(argv)!r})")


if __name__ == "__main__":
    main(sys.argv[1:])
