"""Prefect flows: one per stage family. Thin: each calls pipeline/ functions."""

import os

# Telemetry off by default so nothing waits on the network (a user can still opt in).
for _key, _value in {
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)
