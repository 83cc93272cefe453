"""The scheduled retrain deployment (flows/serve.py) on a real Prefect server, over a tiny git+DVC repository.

`python -m flows.serve` serves the retrain deployment on a short interval: the first scheduled run
reproduces the tiny pipeline and publishes the leaderboard, the next one finds nothing changed. The
work-pool variant registers the deployment with the cron and parameters of the repository's params.yaml.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from tests.fixtures.orchestration import (
    artifacts_with_key,
    create_process_pool,
    deployment_runs,
    dvc_status,
    flow_run_logs,
    read_deployment,
    wait_for_logs,
)

pytestmark = pytest.mark.integration

INTERVAL_S = 5
WAIT_S = 300  # two runs take ~1 min on an idle 2-core machine; leave room for a loaded one


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the group started for it: serve and its flow-run processes
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _wait_for_completed_runs(proc, name: str, count: int, log_path) -> list:
    deadline = time.monotonic() + WAIT_S
    while True:
        runs = deployment_runs("retrain", name)
        bad = [r for r in runs if r.state and (r.state.is_failed() or r.state.is_crashed())]
        assert not bad, f"scheduled run {bad[0].name} ended {bad[0].state.type}:\n{flow_run_logs(bad[0].id)}"
        done = sorted((r for r in runs if r.state and r.state.is_completed()), key=lambda r: r.start_time)
        if len(done) >= count:
            return done[:count]
        assert proc.poll() is None, f"serve exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no {count} completed runs in {WAIT_S} s:\n{log_path.read_text()[-4000:]}"
        time.sleep(2)


def test_scheduled_retrain_completes_then_finds_nothing_changed(prefect_api, prefect_env, tiny_repo, tmp_path):
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flows.serve",
                "--repo-dir",
                str(tiny_repo),
                "--interval",
                str(INTERVAL_S),
                "--name",
                name,
            ],
            cwd=tiny_repo,
            env=prefect_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        first, second = _wait_for_completed_runs(proc, name, 2, log_path)
        # Read the logs while `serve` still runs: a run's logs reach the API after its state does, and
        # stopping the process group right after "Completed" can drop the last batch.
        first_logs = wait_for_logs(first.id, "Retrain done")
        second_logs = wait_for_logs(second.id, "Retrain done")
    finally:
        _stop(proc)

    deployment = read_deployment("retrain", name)
    assert deployment.schedules[0].schedule.interval == datetime.timedelta(seconds=INTERVAL_S)
    assert deployment.parameters["repo_dir"] == str(tiny_repo)
    assert first.deployment_id == second.deployment_id == deployment.id

    assert "Out of date: compare, count" in first_logs and "re-ran 2 stage(s)" in first_logs
    (board,) = [a for a in artifacts_with_key("leaderboard") if a.flow_run_id == first.id]
    assert "| emotion | tiny | 0.09 |" in board.data
    assert json.loads((tiny_repo / "reports/comparison.json").read_text())["emotion"]["tiny"]["accuracy"] == 0.09

    assert "Nothing changed: every stage" in second_logs and "dvc repro" not in second_logs
    assert second.total_run_time < first.total_run_time

    assert dvc_status(tiny_repo, prefect_env) == {}


def test_work_pool_deployment_takes_cron_and_parameters_from_params(prefect_api, prefect_env, tiny_repo):
    params_file = tiny_repo / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["orchestration"].update(retrain_cron="30 4 * * 1", lock_timeout_seconds=900)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    pool, name = f"pool-{uuid.uuid4().hex[:6]}", f"pooled-{uuid.uuid4().hex[:6]}"
    create_process_pool(pool)

    result = subprocess.run(
        [sys.executable, "-m", "flows.serve", "--work-pool", pool, "--repo-dir", str(tiny_repo), "--name", name],
        cwd=tiny_repo,
        env=prefect_env,
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    deployment = read_deployment("retrain", name)
    assert deployment.work_pool_name == pool
    assert [s.schedule.cron for s in deployment.schedules] == ["30 4 * * 1"]
    assert deployment.parameters == {"repo_dir": str(tiny_repo), "lock_timeout_seconds": 900}
    assert deployment.entrypoint == "flows/retrain.py:retrain_flow"


def test_work_pool_deployment_needs_a_server_url(tiny_repo):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "flows.serve", "--work-pool", "p", "--repo-dir", str(tiny_repo)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "set PREFECT_API_URL" in result.stderr
