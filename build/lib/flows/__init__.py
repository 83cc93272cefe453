"""Prefect flows: one per stage family. Thin: each calls pipeline/ functions."""

import os

from pipeline.core.env import apply_quiet_env

# Defaults (the environment wins): telemetry off so nothing waits on the network (pipeline.core.env), Prefect
# logging and startup.
apply_quiet_env()
for _key, _value in {
    # pipeline/ logs (e.g. "MLflow run <id> in experiment ...") go to the flow run's logs in the Prefect UI
    "PREFECT_LOGGING_EXTRA_LOGGERS": "pipeline",
    # without PREFECT_API_URL each process starts a temporary server; 20 s (the default) is too short on a
    # busy 2-core machine (see flows/prefect_server.py for the shared server `make run` uses instead)
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}.items():
    os.environ.setdefault(_key, _value)
