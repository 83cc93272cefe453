"""The environment this project's processes run with; the one place its values are written.

- QUIET_ENV: telemetry and analytics off (DVC, Great Expectations, Prefect, MLflow, DO_NOT_TRACK), so nothing
  waits on the network; no tokenizer thread pools (they fight the dataloader and warn after a fork).
- OFFLINE_ENV: the Hugging Face libraries never go to the hub (tests and benchmarks read the local mirror).

Entry points apply them as defaults (a value already in the environment wins) and child processes inherit them:
flows/__init__.py (every flow, so every DVC stage and `make run`/`ui`/`serve`/`rollback`), tests/conftest.py
(`make test`, offline too) and bench/run_all.py (`make bench`). For a shell: `eval "$(python -m pipeline.core.env)"`
(add --offline for the offline variables too).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

QUIET_ENV = {
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def quiet_env(offline: bool = False) -> dict[str, str]:
    """QUIET_ENV, plus OFFLINE_ENV when `offline`."""
    return {**QUIET_ENV, **(OFFLINE_ENV if offline else {})}


def apply_quiet_env(offline: bool = False, env: MutableMapping[str, str] | None = None) -> None:
    """Set quiet_env(offline) in `env` (default: os.environ) where a variable is not set already."""
    target = os.environ if env is None else env
    for key, value in quiet_env(offline).items():
        target.setdefault(key, value)


def main(argv: list[str]) -> None:
    if argv not in ([], ["--offline"]):
        raise SystemExit("usage: python -m pipeline.core.env [--offline]   (prints export KEY=VALUE lines)")
    for key, value in quiet_env(offline=bool(argv)).items():
        print(f"export {key}={value}")


if __name__ == "__main__":
    main(sys.argv[1:])
