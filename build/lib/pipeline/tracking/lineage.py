"""What a registered model version was built from, read back from its MLflow run (pipeline/tracking/runs.py
records it): the git commit and whether the tree was dirty, the params' hash and profile, the DVC hashes of its
inputs, the stage that trained it and its recorded test metric. `make reproduce` (flows/reproduce.py) rebuilds the
version from this and compares the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.metrics import main_metric

DVC_TAG_PREFIX = "dvc."


class LineageError(RuntimeError):
    """The version cannot be reproduced (unknown version, no commit, dirty tree...); the message says why."""


@dataclass(frozen=True)
class Lineage:
    registered_model: str
    version: str
    run_id: str
    task: str
    model: str
    dvc_stage: str  # e.g. train@rnn-emotion
    commit: str
    dirty: bool
    params_hash: str | None
    profile: str | None  # None: no profile
    inputs: dict[str, str]  # DVC-tracked input path -> md5 when the run started
    metric: str  # the task's main metric
    recorded: float  # the run's test_<metric>
    torch_threads: int | None

    def check_reproducible(self) -> None:
        if not self.commit or self.commit == "unknown":
            raise LineageError(f"{self.registered_model} v{self.version}: its run records no git commit")
        if self.dirty:
            raise LineageError(
                f"{self.registered_model} v{self.version} was registered from a dirty working tree (git_dirty=true, "
                f"HT_ALLOW_DIRTY): its code is in no commit, so it cannot be rebuilt from {self.commit[:12]}"
            )


def resolve_version(client, name: str, version_or_alias: str):
    """The ModelVersion `version_or_alias` (a number, or an alias such as champion) of registered model `name`."""
    from mlflow.exceptions import MlflowException

    try:
        if version_or_alias.isdigit():
            return client.get_model_version(name, version_or_alias)
        return client.get_model_version_by_alias(name, version_or_alias)
    except MlflowException as err:
        raise LineageError(f"registered model {name!r} has no version or alias {version_or_alias!r}: {err}") from None


def lineage_of(name: str, version_or_alias: str) -> Lineage:
    """The lineage of `name` version/alias from its run's tags, params and metrics (MLflow must be configured)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    version = resolve_version(client, name, str(version_or_alias))
    run = client.get_run(version.run_id)
    tags, data = run.data.tags, run.data
    missing = [k for k in ("task", "model", "stage") if k not in tags]
    if missing:
        raise LineageError(f"{name} v{version.version}: run {version.run_id} lacks the tag(s) {missing}")
    task = tags["task"]
    metric = main_metric(task)
    recorded = data.metrics.get(f"test_{metric}")
    if recorded is None:
        raise LineageError(f"{name} v{version.version}: run {version.run_id} has no test_{metric} metric")
    threads = data.params.get("torch_threads")
    return Lineage(
        registered_model=name,
        version=str(version.version),
        run_id=version.run_id,
        task=task,
        model=tags["model"],
        dvc_stage=f"{tags['stage']}@{tags['model']}-{task}",
        commit=tags.get("git_commit", ""),
        dirty=tags.get("git_dirty") == "true",
        params_hash=tags.get("params_hash"),
        profile=None if tags.get("profile", "none") == "none" else tags["profile"],
        inputs={k[len(DVC_TAG_PREFIX) :]: v for k, v in tags.items() if k.startswith(DVC_TAG_PREFIX)},
        metric=metric,
        recorded=float(recorded),
        torch_threads=int(threads) if threads and threads.isdigit() else None,
    )


def compare_metric(recorded: float, rebuilt: float, same_threads: bool, tolerance: float) -> tuple[bool, str]:
    """Whether the rebuilt metric matches: identical on CPU with the same seed and thread count (float noise of
    1e-9 aside), else within `tolerance` (absolute, in the metric's unit)."""
    diff = abs(rebuilt - recorded)
    if same_threads:
        return diff <= 1e-9, "identical" if diff <= 1e-9 else f"differs by {diff:.6g} (expected identical)"
    ok = diff <= tolerance
    return ok, f"differs by {diff:.6g} ({'within' if ok else 'beyond'} the tolerance {tolerance})"
