"""Shared plumbing for the stage flows: params loading, logging, the flow-run id for MLflow tags, retries.

Pattern of a stage flow (see flows/data.py):

    @flow(name="ingest")
    def ingest_flow(dataset: str) -> str:
        params = params_or_exit()     # typed params; bad params.yaml exits 2 before any work
        mark_flow_run()               # MLflow runs opened by pipeline/ get the tag prefect.flow_run_id
        return str(ingest_dataset(dataset, params))

Tasks that touch the outside (hub download, MLflow server, model registry) go through `external_task`:

    download = external_task(download_snapshot, "hub-download", params)
    path = download(repo_id, revision)

It wraps the function in a Prefect task that retries `params.orchestration.retries` times, waiting
`params.orchestration.retry_delay_seconds` between tries, and only on transient errors (`is_transient`:
connection refused/reset, timeouts, DNS "try again", HTTP 429/5xx from MLflow or the hub). Anything else
(a bug, bad data, a 404, HF offline mode) fails at once. Results are not cached: a retry re-runs the function.

A retried task must not duplicate what its first try created; the pipeline/ functions already make that so:
- MLflow runs: tracking.stage_run keeps the run id in the stage's state folder and resumes an unfinished
  (failed or killed) run instead of opening a new one;
- registered versions: pipeline.tracking.registry reuses the version a run already registered (or registers the
  model that run logged before it was interrupted).
Wrap the whole unit (e.g. "train + log + register inside stage_run") or one idempotent call, not half of one.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from pipeline.core.config import SELECTED, Params, ParamsError, load_params
from pipeline.tracking.runs import FLOW_RUN_ENV

log = logging.getLogger("hello_transformers")


def setup_logging() -> None:
    level = os.environ.get("HT_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Importing Prefect may already have set the root logger to WARNING (basicConfig is then a no-op):
    # set our own loggers' level so pipeline/ progress logs still reach the console.
    for name in ("pipeline", "flows", "hello_transformers"):
        logging.getLogger(name).setLevel(level)
    for name in ("httpx", "httpcore"):  # one INFO line per HTTP request to the Prefect API otherwise
        logging.getLogger(name).setLevel(logging.WARNING)


def params_or_exit(profile: str | None = SELECTED) -> Params:
    """Validate params.yaml (+ the profile: load_params) before any work and before Prefect starts; exit 2 with
    the message."""
    try:
        return load_params(profile=profile)
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
    """Run a stage flow from the command line; a failure exits non-zero with its message, not a traceback wall.

    Flow-run heartbeats are off here: a stage runs as a child process of `dvc repro` (or of the retrain flow),
    which sees a crash in its exit status, and stopping the heartbeat thread cost ~1 s at the end of every
    stage (it sleeps in 1 s steps). Long-lived flows (retrain, serve) keep Prefect's heartbeats.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    setup_logging()
    # the stage's own program (`python -m flows.<x>`: the flow is defined in __main__) leaves through exit_now
    own_process = getattr(flow, "fn", flow).__module__ == "__main__"
    if own_process:
        stop_temporary_server_on_sigterm()
    try:
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            flow(*args)
    except SystemExit:
        raise
    except Exception as err:  # the flow run already carries the traceback in Prefect's logs
        print(f"\nFAILED: {type(err).__name__}: {err}", file=sys.stderr)
        if own_process:
            exit_now(1)
        raise SystemExit(1) from None
    if own_process:
        exit_now(0)


SIGTERM_EXIT = 128 + signal.SIGTERM


def stop_temporary_server_on_sigterm() -> None:
    """A stage killed with SIGTERM (`kill`, `timeout`, a scheduler stopping it) exits through SystemExit, so the
    exit hooks run. Without a PREFECT_API_URL Prefect runs a temporary API server (uvicorn) in a child process that
    only those hooks stop: Python's default SIGTERM ends the process at once and leaves that server running."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value() or threading.current_thread() is not threading.main_thread():
        return

    def terminate(signum, frame):
        print("\nterminated (SIGTERM): stopping", file=sys.stderr)
        raise SystemExit(SIGTERM_EXIT)

    signal.signal(signal.SIGTERM, terminate)


def exit_now(code: int) -> None:
    """End the stage's process at once, after sending Prefect's pending logs and events and flushing output
    (with a Prefect server of its own, started because no PREFECT_API_URL was given: a normal exit, which stops it).

    The interpreter's normal shutdown (tearing down torch, transformers, datasets, MLflow ... module by module)
    took 2-9 s per stage process, after the work was done and written (bench/README.md, fixed cost per stage).
    Everything a stage produces is already on disk (atomic writes) and in MLflow by then; what Prefect's exit
    hooks would still do (drain the log and event workers) is done here first.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        # no server was given (PREFECT_API_URL): Prefect runs a temporary one for this process, which only its
        # exit hooks stop; os._exit would leave it running (holding the caller's pipes open): exit normally
        raise SystemExit(code)
    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=10)
        except Exception as err:  # a server gone away must not turn a finished stage into a failure
            print(f"warning: could not flush Prefect {worker.__name__}: {err}", file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ---------------------------------------------------------------- retries of tasks that touch the outside
TRANSIENT_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNREFUSED",
        "ECONNRESET",
        "ECONNABORTED",
        "ETIMEDOUT",
        "EHOSTUNREACH",
        "ENETUNREACH",
        "ENETDOWN",
        "ENETRESET",
        "EPIPE",
        "EAGAIN",
    )
    if hasattr(errno, name)
)
TRANSIENT_MLFLOW_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"})
# Network errors of the HTTP clients the hub and MLflow use (matched by name: no need to import them all).
NETWORK_ERRORS = frozenset(
    {
        "requests.exceptions.ConnectionError",
        "requests.exceptions.Timeout",
        "requests.exceptions.ChunkedEncodingError",
        "urllib3.exceptions.NewConnectionError",
        "urllib3.exceptions.MaxRetryError",
        "urllib3.exceptions.ProtocolError",
        "urllib3.exceptions.TimeoutError",
        "http.client.RemoteDisconnected",
        "http.client.IncompleteRead",
        "httpx.TimeoutException",
        "httpx.NetworkError",
        "httpx.RemoteProtocolError",
        # huggingface_hub 2.x talks through httpx2
        "httpx2.TimeoutException",
        "httpx2.NetworkError",
        "httpx2.RemoteProtocolError",
    }
)
# Connection errors that no retry can fix.
PERMANENT_NAMES = frozenset({"OfflineModeIsEnabled", "InvalidURL", "InvalidUrlException", "SSLError"})


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, its causes and the exceptions it was raised while handling (MLflow wraps without `from`)."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 20:
        seen.append(exc)
        exc = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)
    return seen


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None) or getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _mlflow_transient(exc: BaseException) -> bool:
    try:
        from mlflow.exceptions import MlflowException, RestException
    except ImportError:  # pragma: no cover - mlflow is a dependency
        return False
    if isinstance(exc, RestException):  # an HTTP answer from an MLflow server
        return exc.get_http_status_code() in TRANSIENT_HTTP_STATUS
    return isinstance(exc, MlflowException) and exc.error_code in TRANSIENT_MLFLOW_CODES


def is_transient(exc: BaseException) -> bool:
    """True for errors that a later try may not meet: network failures, timeouts, HTTP 429/5xx."""
    chain = _chain(exc)
    if any(type(e).__name__ in PERMANENT_NAMES for e in chain):
        return False
    for e in chain:
        if isinstance(e, (ConnectionError, TimeoutError, socket.timeout)):
            return True
        if isinstance(e, socket.gaierror):
            return e.errno == socket.EAI_AGAIN  # "temporary failure in name resolution"
        if isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS:
            return True
        if _mlflow_transient(e):
            return True
        if _http_status(e) in TRANSIENT_HTTP_STATUS:
            return True
        if {f"{cls.__module__}.{cls.__name__}" for cls in type(e).__mro__} & NETWORK_ERRORS:
            return True
    return False


def _state_exception(state) -> BaseException | None:
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return data
    try:
        result = state.result(raise_on_failure=False)
    except Exception:  # an unreadable result is not a reason to retry
        return None
    return result if isinstance(result, BaseException) else None


def retry_on_transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only when the failure is transient (see `is_transient`)."""
    exc = _state_exception(state)
    transient = exc is not None and is_transient(exc)
    if exc is not None:
        from prefect.logging.loggers import task_run_logger

        task_run_logger(task_run, task=task).warning(
            "%s: %s -> %s", type(exc).__name__, exc, "transient, retrying" if transient else "not transient, no retry"
        )
    return transient


def external_task(fn: Callable, name: str | None = None, params: Params | None = None, **options: Any):
    """A Prefect task around `fn` that retries transient errors (counts and delays from params.orchestration)."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    orchestration = (params or load_params()).orchestration
    return task(
        fn,
        name=name or fn.__name__,
        retries=orchestration.retries,
        retry_delay_seconds=orchestration.retry_delay_seconds,
        retry_condition_fn=retry_on_transient,
        cache_policy=NO_CACHE,
        persist_result=False,
        **options,
    )
