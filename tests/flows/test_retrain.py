"""The retrain flow on a tiny git+DVC repository, against a real Prefect server and real DVC.

One test walks a repository through four retrains (each costs seconds of process start-up on a small machine):
everything out of date -> only the changed stage -> nothing changed -> a broken stage. The stage flows report
to the same server; the leaderboard is an artifact of each retrain run; a failure leaves dvc.lock as it was.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.fixtures.orchestration import artifacts_with_key, read_flow_run, wait_for_logs

pytestmark = pytest.mark.integration


def _retrain(repo, **kwargs):
    from flows.retrain import retrain_flow

    state = retrain_flow(repo_dir=str(repo), return_state=True, **kwargs)
    return state, state.state_details.flow_run_id


def test_retrain_reruns_only_what_changed_publishes_the_leaderboard_and_fails_cleanly(prefect_api, tiny_repo):
    state, first_id = _retrain(tiny_repo)
    assert state.is_completed(), state.message
    first = state.result()
    assert first["out_of_date"] == ["compare", "count"] and first["rerun"] == ["compare", "count"]
    counts = json.loads((tiny_repo / "data/out/counts.json").read_text())
    assert counts["words"] == 9
    # the stage ran as its own flow run on the same server as the retrain
    stage_run = read_flow_run(counts["flow_run_id"])
    assert stage_run.state.is_completed()
    assert stage_run.start_time >= read_flow_run(first_id).start_time
    (board,) = [a for a in artifacts_with_key("leaderboard") if a.flow_run_id == first_id]
    assert "| emotion | tiny | 0.09 |" in board.data and "re-ran 2 stage(s)" in board.description
    (table,) = [a for a in artifacts_with_key("leaderboard-table") if a.flow_run_id == first_id]
    assert json.loads(table.data)[0]["accuracy"] == 0.09

    # change the stand-in compare only: count must not run again
    script = tiny_repo / "tiny_compare.py"
    script.write_text(script.read_text().replace('counts["words"] / 100', 'counts["words"] / 10'))
    state, second_id = _retrain(tiny_repo)
    second = state.result()
    assert second["out_of_date"] == ["compare"] and second["rerun"] == ["compare"]
    assert json.loads((tiny_repo / "data/out/counts.json").read_text())["flow_run_id"] == counts["flow_run_id"]
    assert json.loads((tiny_repo / "reports/comparison.json").read_text())["emotion"]["tiny"]["accuracy"] == 0.9

    state, third_id = _retrain(tiny_repo)
    third = state.result()
    assert third["nothing_changed"] and third["rerun"] == [] and third["out_of_date"] == []
    logs = wait_for_logs(third_id, "Nothing changed")
    assert "Nothing changed: every stage" in logs and "dvc repro" not in logs
    (board,) = [a for a in artifacts_with_key("leaderboard") if a.flow_run_id == third_id]
    assert "0.90" in board.data and "nothing changed" in board.description

    # a stage that breaks fails the retrain run; dvc.lock keeps describing the last good outputs
    lock_before = (tiny_repo / "dvc.lock").read_text()
    stage = tiny_repo / "tiny_stage.py"
    stage.write_text(stage.read_text().replace('words = Path("data/input.txt")', 'words = Path("data/missing.txt")'))
    state, failed_id = _retrain(tiny_repo)
    assert state.is_failed()
    assert "`dvc repro` failed" in state.message
    assert "missing.txt" in wait_for_logs(failed_id, "missing.txt")  # the stage's own error reaches these logs
    assert (tiny_repo / "dvc.lock").read_text() == lock_before
    assert set(yaml.safe_load(lock_before)["stages"]) == {"count", "compare"}


def test_one_job_is_dvcs_own_repro(prefect_api, tiny_repo):
    state, _ = _retrain(tiny_repo, jobs=1)
    assert state.is_completed(), state.message
    assert state.result()["rerun"] == ["compare", "count"]
    assert not (tiny_repo / ".dvc/tmp/stage-history.json").exists()  # the parallel runner's history: not used
