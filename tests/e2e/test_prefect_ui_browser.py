"""`make serve` shows the retrain deployment and its cron schedule in the Prefect UI (headless Chromium).

Runs `python -m flows.serve` as `make serve` does (no PREFECT_API_URL: it starts its own `prefect server start`
with the UI on 127.0.0.1) over a tiny git+DVC repository, waits for the deployment to be registered and for
the server's scheduler to have created its next scheduled run (the page's "Next Run" shows that run; the
scheduler creates it some seconds after the deployment appears), then opens the UI's deployments list and the
deployment's page. Screenshot: reports/prefect_ui_deployment.png.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from flows.serve import DEPLOYMENT_NAME
from pipeline.core.processes import free_port
from tests.fixtures.browser import assert_server_gone, chromium_page, stop_group, wait_http_ok
from tests.fixtures.orchestration import _migrated_prefect_db

pytestmark = pytest.mark.integration

CRON = "15 2 * * 1"  # Mondays at 02:15 UTC: a run will hardly start while the test looks (if one does, the
# page shows the next Scheduled one, a Monday 02:15 too)
UI_TIMEOUT_MS = 120_000
# Without PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS the served server's main scheduler loop runs every
# 60 s; its 5 s "recent deployments" loop only looks 6 s back, so on a busy machine the first run can wait for
# the main loop. 1 s makes that quick; the test still waits for the run itself (SCHEDULED_RUN_TIMEOUT_S).
SCHEDULER_ENV = {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1"}
SCHEDULED_RUN_TIMEOUT_S = 120


def _post_json(url: str, body: dict):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.load(resp)


def wait_for_scheduled_run(
    url: str, deployment_id: str, proc: subprocess.Popen, log: Path, timeout: float = SCHEDULED_RUN_TIMEOUT_S
) -> dict:
    """The deployment's next run in state Scheduled, once the server's scheduler has created it.

    The same query as the UI's "Next Run" (state name Scheduled, earliest expected start first, limit 1).
    """
    body = {
        "deployments": {"id": {"any_": [deployment_id]}},
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}, "name": {"any_": ["Scheduled"]}}},
        "sort": "EXPECTED_START_TIME_ASC",
        "limit": 1,
    }
    deadline = time.monotonic() + timeout
    while True:
        runs = _post_json(f"{url}/api/flow_runs/filter", body)
        if runs:
            return runs[0]
        if proc.poll() is not None:
            pytest.fail(
                f"make serve exited with {proc.returncode} before its deployment had a scheduled run:\n"
                f"{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            pytest.fail(
                f"the Prefect scheduler created no SCHEDULED flow run of deployment {deployment_id} "
                f"(retrain/{DEPLOYMENT_NAME}, cron {CRON!r}) within {timeout}s:\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.5)


@pytest.fixture
def served(tiny_repo, tmp_path, request):
    params_file = tiny_repo / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["orchestration"]["retrain_cron"] = CRON
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    home = tmp_path / "prefect-home"
    home.mkdir()
    _migrated_prefect_db(request, home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        HF_HUB_OFFLINE="1",
        **SCHEDULER_ENV,
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.serve", "--port", str(port), "--repo-dir", str(tiny_repo)],
            cwd=tiny_repo,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/api/health", proc, log, "make serve's Prefect server", timeout=300)
        wait_http_ok(f"{url}/api/deployments/name/retrain/{DEPLOYMENT_NAME}", proc, log, "the served deployment")
        with urllib.request.urlopen(f"{url}/api/deployments/name/retrain/{DEPLOYMENT_NAME}", timeout=10) as resp:
            deployment = json.load(resp)
        next_run = wait_for_scheduled_run(url, deployment["id"], proc, log)
        yield {"url": url, "deployment": deployment, "next_run": next_run, "log": log}
    finally:
        stop_group(proc)
    assert_server_gone(proc, port)


def test_make_serve_shows_the_deployment_and_its_schedule_in_the_prefect_ui(served, repo_root):
    url, deployment = served["url"], served["deployment"]
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == [CRON]
    zone = ZoneInfo(deployment["schedules"][0]["schedule"].get("timezone") or "UTC")
    next_start = datetime.datetime.fromisoformat(served["next_run"]["expected_start_time"]).astimezone(zone)
    assert (next_start.weekday(), next_start.hour, next_start.minute) == (0, 2, 15), f"not the cron's: {next_start}"
    assert f"Prefect UI: {url}" in served["log"].read_text()
    shots = repo_root / "reports"
    shots.mkdir(exist_ok=True)

    with chromium_page({"width": 1600, "height": 1000}, UI_TIMEOUT_MS) as page:
        page.goto(f"{url}/deployments")
        page.wait_for_selector(f"text={DEPLOYMENT_NAME}")
        text = page.inner_text("body")
        assert "retrain" in text, "the flow of the deployment is not listed"

        page.goto(f"{url}/deployments/deployment/{deployment['id']}")
        page.wait_for_selector(f"text={DEPLOYMENT_NAME}")
        page.wait_for_selector("text=Schedules")
        # The next run comes from its own API request, which can answer after the deployment's: wait for it.
        page.wait_for_selector("text=Next Run")
        page.wait_for_selector("text=Scheduled for")
        text = page.inner_text("body")
        assert "At 02:15 AM, only on Monday" in text, f"the cron schedule is not shown:\n{text[:3000]}"
        assert "Next Run" in text and "Scheduled for" in text, "no upcoming scheduled run is shown"
        assert "Can't connect to Server API" not in text
        page.screenshot(path=str(shots / "prefect_ui_deployment.png"))
    assert (shots / "prefect_ui_deployment.png").stat().st_size > 20_000
