"""flows.common.run_cli: how a stage flow runs from the command line (real Prefect server)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from prefect import flow

from flows.common import run_cli

SEEN: dict = {}


@flow(name="test-run-cli-settings")
def settings_flow() -> None:
    from prefect.settings import get_current_settings

    SEEN["heartbeat"] = get_current_settings().flows.heartbeat_frequency


@flow(name="test-run-cli-fails")
def failing_flow() -> None:
    raise ValueError("data/prepared/emotion: column 'label' missing")


def test_stage_flows_run_without_heartbeats(prefect_api):
    """A stage is a child process of dvc, which sees a crash in its exit status: the heartbeat thread only
    cost ~1 s at the end of every stage (bench/README.md, orchestration overhead)."""
    from prefect.settings import get_current_settings

    run_cli(settings_flow)
    assert SEEN["heartbeat"] is None
    assert get_current_settings().flows.heartbeat_frequency is not None  # only inside run_cli


def test_a_failed_stage_exits_1_with_its_message(prefect_api, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(failing_flow)
    assert exit_info.value.code == 1
    assert "FAILED: ValueError: data/prepared/emotion: column 'label' missing" in capsys.readouterr().err


STAGE_SCRIPT = textwrap.dedent(
    """
    import sys
    from prefect import flow
    from flows.common import run_cli

    @flow(name="test-run-cli-stage")
    def stage(fail: bool) -> None:
        print("stage output before the exit")
        if fail:
            raise ValueError("bad row 3")

    run_cli(stage, sys.argv[1] == "fail")
    print("never reached: the stage's process ends in run_cli")
    """
)


@pytest.mark.integration
@pytest.mark.parametrize("outcome", ["ok", "fail"])
def test_a_stage_process_exits_at_once_with_its_status_and_output(outcome, prefect_env, tmp_path):
    """A flow defined in the program itself (`python -m flows.<x>`) ends its process in run_cli (exit_now: no
    interpreter teardown), with the exit status and the output a normal exit would give."""
    from tests.fixtures.orchestration import REPO_ROOT

    script = tmp_path / "stage.py"
    script.write_text(STAGE_SCRIPT)
    env = {**prefect_env, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, str(script), outcome], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == (0 if outcome == "ok" else 1), proc.stderr[-2000:]
    assert "stage output before the exit" in proc.stdout + proc.stderr
    assert "never reached" not in proc.stdout
    if outcome == "fail":
        assert "FAILED: ValueError: bad row 3" in proc.stderr


@pytest.mark.integration
def test_without_a_server_the_stage_exits_normally_and_stops_its_temporary_server(prefect_env, tmp_path):
    """No PREFECT_API_URL: Prefect starts a temporary server for the process, which only a normal exit stops;
    os._exit would leave it running and holding the caller's pipes open (the caller would wait for ever)."""
    from tests.fixtures.orchestration import REPO_ROOT

    script = tmp_path / "stage.py"
    script.write_text(STAGE_SCRIPT)
    env = {k: v for k, v in prefect_env.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=str(REPO_ROOT), PREFECT_HOME=str(tmp_path / "prefect-home"))
    proc = subprocess.run(
        [sys.executable, str(script), "fail"], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 1 and "FAILED: ValueError: bad row 3" in proc.stderr, proc.stderr[-2000:]
    assert "never reached" not in proc.stdout  # and run() returned: no server left holding the pipes (timeout)


LONG_STAGE_SCRIPT = textwrap.dedent(
    """
    import time
    from prefect import flow
    from flows.common import run_cli

    @flow(name="test-run-cli-long-stage")
    def stage() -> None:
        print("stage running", flush=True)
        time.sleep(300)

    run_cli(stage)
    """
)


@pytest.mark.integration
def test_a_stage_killed_with_sigterm_stops_its_temporary_server(prefect_env, tmp_path):
    """No PREFECT_API_URL and a SIGTERM mid-stage (`kill`, `timeout`): the stage exits 143 through its exit hooks,
    which stop Prefect's temporary API server; Python's default SIGTERM left that uvicorn process running."""
    import signal
    import time

    import psutil

    from tests.fixtures.orchestration import REPO_ROOT

    script = tmp_path / "stage.py"
    script.write_text(LONG_STAGE_SCRIPT)
    env = {k: v for k, v in prefect_env.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=str(REPO_ROOT), PREFECT_HOME=str(tmp_path / "prefect-home"))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    children: list[psutil.Process] = []
    try:
        for line in proc.stdout:
            if "stage running" in line:
                break
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("uvicorn" in " ".join(c.cmdline()) for c in children), "no temporary server to stop"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children):
            assert time.monotonic() < deadline, [c.cmdline() for c in children if c.is_running()]
            time.sleep(0.5)
    finally:  # nothing left behind, pass or fail (an orphaned server is no longer our child)
        proc.kill()
        for child in children:
            if child.is_running():
                child.kill()
