"""Shared plumbing for the stage flows: params loading, logging, the flow-run id for MLflow tags."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from pipeline.config import Params, ParamsError, load_params
from pipeline.tracking import FLOW_RUN_ENV

log = logging.getLogger("hello_transformers")


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("HT_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def params_or_exit() -> Params:
    """Validate params.yaml before any work (and before Prefect starts); exit 2 with the message."""
    try:
        return load_params()
    except ParamsError as err:
        print(str(err), file=sys.stderr)
        raise SystemExit(2) from None


def mark_flow_run() -> str | None:
    """Expose the current Prefect flow-run id to pipeline/ (which never imports Prefect)."""
    from prefect.runtime import flow_run

    run_id = flow_run.id
    if run_id:
        os.environ[FLOW_RUN_ENV] = str(run_id)
    return run_id


def run_cli(flow: Callable, *args) -> None:
    """Run a flow from the command line; a failure exits non-zero with its message, not a traceback wall."""
    setup_logging()
    try:
        flow(*args)
    except SystemExit:
        raise
    except Exception as err:  # the flow run already carries the traceback in Prefect's logs
        print(f"\nFAILED: {type(err).__name__}: {err}", file=sys.stderr)
        raise SystemExit(1) from None
