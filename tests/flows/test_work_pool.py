"""The retrain deployment on a work pool, run by a real worker: `python -m flows.serve --work-pool POOL` registers
it on the Prefect server, `prefect worker start --pool POOL` (a subprocess) picks up a triggered run and executes
the retrain flow on a tiny git+DVC repository; the run completes having reproduced it; the worker stops cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.fixtures.orchestration import create_process_pool, dvc_status, read_flow_run, wait_for_logs

pytestmark = pytest.mark.integration

WAIT_S = 300  # the worker polls every second; the run itself takes ~30 s on an idle 2-core machine


def _trigger(deployment: str):
    from prefect.deployments import run_deployment

    return run_deployment(deployment, timeout=0)  # schedule it now, return without waiting


def _wait_final(flow_run_id, worker: subprocess.Popen, log_path):
    deadline = time.monotonic() + WAIT_S
    while True:
        run = read_flow_run(flow_run_id)
        if run.state and run.state.is_final():
            return run
        assert worker.poll() is None, f"the worker exited with {worker.returncode}:\n{log_path.read_text()[-4000:]}"
        assert time.monotonic() < deadline, (
            f"run not finished in {WAIT_S} s ({run.state}):\n{log_path.read_text()[-4000:]}"
        )
        time.sleep(1)


def _stop_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_worker_runs_the_retrain_deployment_from_its_work_pool(prefect_api, prefect_env, tiny_repo, tmp_path):
    pool, name = f"pool-{uuid.uuid4().hex[:6]}", f"pooled-{uuid.uuid4().hex[:6]}"
    create_process_pool(pool)
    deploy = subprocess.run(
        [sys.executable, "-m", "flows.serve", "--work-pool", pool, "--repo-dir", str(tiny_repo), "--name", name],
        cwd=tiny_repo,
        env=prefect_env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr

    log_path = tmp_path / "worker.log"
    env = {**prefect_env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_HEARTBEAT_SECONDS": "5"}
    with log_path.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--name", f"worker-{name}"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        flow_run = _trigger(f"retrain/{name}")
        finished = _wait_final(flow_run.id, worker, log_path)
        logs = wait_for_logs(flow_run.id, "Retrain done")  # while the worker runs: logs trail the state
    finally:
        _stop_group(worker)

    assert finished.state.is_completed(), f"{finished.state}:\n{logs}\n{log_path.read_text()[-4000:]}"
    assert finished.work_pool_name == pool
    assert "Out of date: compare, count" in logs and "re-ran 2 stage(s)" in logs
    assert json.loads((tiny_repo / "reports/comparison.json").read_text())["emotion"]["tiny"]["accuracy"] == 0.09
    assert dvc_status(tiny_repo, prefect_env) == {}
    assert worker.returncode is not None and not _group_alive(worker.pid), "no worker or flow-run process left"
