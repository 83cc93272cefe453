"""`make serve` shows the retrain deployment and its cron schedule in the Prefect UI (headless Chromium).

Runs `python -m flows.serve` as `make serve` does (no PREFECT_API_URL: it starts its own `prefect server start`
with the UI on 127.0.0.1) over a tiny git+DVC repository, waits for the deployment to be registered, then opens
the UI's deployments list and the deployment's page. Screenshot: reports/prefect_ui_deployment.png.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from flows.serve import DEPLOYMENT_NAME
from tests.fixtures.browser import assert_server_gone, chromium_page, free_port, stop_group, wait_http_ok
from tests.fixtures.orchestration import _migrated_prefect_db

pytestmark = pytest.mark.integration

CRON = "15 2 * * 1"  # Mondays at 02:15: a run will not start while the test looks
UI_TIMEOUT_MS = 120_000


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
    env.update(PREFECT_HOME=str(home), HF_HUB_OFFLINE="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows.serve", "--port", str(port), "--repo-dir", str(tiny_repo)],
                                cwd=tiny_repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/api/health", proc, log, "make serve's Prefect server", timeout=300)
        wait_http_ok(f"{url}/api/deployments/name/retrain/{DEPLOYMENT_NAME}", proc, log, "the served deployment")
        with urllib.request.urlopen(f"{url}/api/deployments/name/retrain/{DEPLOYMENT_NAME}", timeout=10) as resp:
            deployment = json.load(resp)
        yield {"url": url, "deployment": deployment, "log": log}
    finally:
        stop_group(proc)
    assert_server_gone(proc, port)


def test_make_serve_shows_the_deployment_and_its_schedule_in_the_prefect_ui(served, repo_root):
    url, deployment = served["url"], served["deployment"]
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == [CRON]
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
        text = page.inner_text("body")
        assert "At 02:15 AM, only on Monday" in text, f"the cron schedule is not shown:\n{text[:3000]}"
        assert "Next Run" in text and "Scheduled for" in text, "no upcoming scheduled run is shown"
        assert "Can't connect to Server API" not in text
        page.screenshot(path=str(shots / "prefect_ui_deployment.png"))
    assert (shots / "prefect_ui_deployment.png").stat().st_size > 20_000
