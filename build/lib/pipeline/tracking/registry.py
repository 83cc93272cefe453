"""Log trained models to MLflow and register them as `<task>-<model>` (one version per training run).

Every model is logged as an `mlflow.pyfunc.PythonModel` wrapper with its weights/tokenizers as artifacts
(`register_pyfunc`), so all families of a task answer in the same shape (pipeline.models.pyfunc); MLflow's
transformers flavour is not used (its classification answer is a DataFrame, its NER a "PER,LOC" string).

It must be called inside the training run (`tracking.stage_run`). It is idempotent per run: a retried
task whose run already registered a version (or logged the model but crashed before registering it)
gets that version back instead of a duplicate.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.tracking.runs import registered_name

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"  # name of the logged model inside its run
VERSION_TAG = "registered_model_version"
NAME_TAG = "registered_model_name"
# Serving needs these; MLflow's own requirement inference imports torchvision (not installed), so we pin ours.
RUNTIME_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "mlflow", "pandas", "numpy")


def default_pip_requirements(extra: tuple[str, ...] = ()) -> list[str]:
    """Exact pins of the installed runtime packages (the same versions as constraints.txt)."""
    pins = []
    for package in (*RUNTIME_PACKAGES, *extra):
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            raise RuntimeError(f"package {package!r} is not installed; run `make install`") from None
        # a local build tag (torch's "+cpu") is not on PyPI: pin the public version
        pins.append(f"{package}=={version.split('+')[0]}")
    return pins


@contextlib.contextmanager
def pinned_requirements_unchecked() -> Iterator[None]:
    """While logging a model with our pins, skip MLflow's check that the current environment satisfies them.

    The pins are the installed versions (default_pip_requirements), so the check cannot fail; it maps every
    installed module to its distribution first (importlib_metadata.packages_distributions: 1.7-4 s per logged
    model on the 2-core machine, bench/README.md "fixed cost per stage"). Loading a model still checks.
    """
    from mlflow.utils import environment

    name = "warn_dependency_requirement_mismatches"
    original = getattr(environment, name, None)
    if original is None:  # another MLflow version: nothing to skip
        yield
        return
    setattr(environment, name, lambda requirements: None)
    try:
        yield
    finally:
        setattr(environment, name, original)


def _active_run_id() -> str:
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("registering a model needs an active MLflow run (call it inside tracking.stage_run)")
    return run.info.run_id


def existing_version(name: str, run_id: str) -> str | None:
    """The version of `name` registered from this run, if any."""
    from mlflow import MlflowClient

    versions = MlflowClient().search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return str(max(int(v.version) for v in versions)) if versions else None


def _logged_model_uri(run_id: str) -> str | None:
    """A model this run logged before being interrupted (logged but not registered)."""
    import mlflow

    run = mlflow.get_run(run_id)
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id='{run_id}' AND name='{MODEL_ARTIFACT}'",
        output_format="list",
    )
    ready = [m for m in models if str(m.status).endswith("READY")]
    return ready[0].model_uri if ready else None


def _reuse(name: str, run_id: str) -> str | None:
    import mlflow

    version = existing_version(name, run_id)
    if version:
        log.info("Run %s already registered %s version %s; reusing it", run_id, name, version)
        return version
    uri = _logged_model_uri(run_id)
    if uri:
        log.info("Run %s logged %s before it was interrupted; registering it as %s", run_id, uri, name)
        version = str(mlflow.register_model(uri, name).version)
        _tag(name, version)
        return version
    return None


def _tag(name: str, version: str) -> None:
    import mlflow

    mlflow.set_tags({NAME_TAG: name, VERSION_TAG: version})


def register_pyfunc(
    python_model,
    artifacts: dict[str, str | Path],
    task: str,
    model: str,
    input_example: Any,
    pip_requirements: list[str] | None = None,
    code_paths: list[str | Path] | None = None,
    params: dict[str, Any] | None = None,
) -> str:
    """Log an mlflow.pyfunc.PythonModel (weights/tokenizers in `artifacts`) and register it; returns the version.

    The signature comes from running the wrapper on `input_example`; `params` (name -> default) are the inference
    params a request may set (pyfunc `predict(..., params=...)`). `code_paths` defaults to this
    `pipeline` package, so the wrapper class (defined in it) loads anywhere the pinned requirements are installed.
    """
    import mlflow
    from mlflow.models import infer_signature

    name = registered_name(task, model)
    run_id = _active_run_id()
    version = _reuse(name, run_id)
    if version:
        return version
    # run a copy, so the logged (pickled) wrapper stays small: it loads its weights from the artifacts
    probe = copy.copy(python_model)
    context = mlflow.pyfunc.PythonModelContext(artifacts={k: str(v) for k, v in artifacts.items()}, model_config={})
    probe.load_context(context)
    output = probe.predict(context, input_example)
    del probe
    package = Path(__file__).resolve().parent
    with pinned_requirements_unchecked():
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=python_model,
            artifacts={k: str(v) for k, v in artifacts.items()},
            signature=infer_signature(input_example, output, params=params),
            input_example=input_example,
            pip_requirements=pip_requirements or default_pip_requirements(),
            code_paths=[str(p) for p in (code_paths or [package])],
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    _tag(name, version)
    log.info("Registered %s version %s (pyfunc %s)", name, version, type(python_model).__name__)
    return version


def load_registered(name: str, version_or_alias: str | int = "latest"):
    """Load a registered model as a pyfunc: a version number, an alias (e.g. 'champion') or 'latest'."""
    import mlflow

    ref = str(version_or_alias)
    if ref == "latest":
        uri = f"models:/{name}/latest"
    elif ref.isdigit():
        uri = f"models:/{name}/{ref}"
    else:
        uri = f"models:/{name}@{ref}"
    return mlflow.pyfunc.load_model(uri)
