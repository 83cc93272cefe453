"""flows.common.run_cli: how a stage flow runs from the command line (real Prefect server)."""

from __future__ import annotations

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
