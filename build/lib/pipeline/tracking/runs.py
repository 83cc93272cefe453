"""MLflow conventions shared by every training stage.

- Store: MLFLOW_TRACKING_URI when set, else the local SQLite store + artifact folder from params (created
  on first use).
- One experiment per task (`task-<task>`), one for pretraining (`pretraining`), one for comparisons.
- A stage run remembers its run id in its checkpoint folder, so a killed run that resumes from its checkpoint
  continues the same MLflow run instead of starting a new one.
- Every run carries its lineage: git commit and whether the working tree was dirty, the params' hash and
  profile, DVC hashes of its inputs, seed, family, weight source, Prefect flow-run id (`make reproduce` rebuilds
  a registered version from them). A run that would register a model refuses to start from a dirty tree
  (code or params not committed) unless HT_ALLOW_DIRTY=1 says so; the run is then tagged `git_dirty=true`.
- Every experiment carries EXPERIMENT_KIND_TAG = custom_model_development, so MLflow 3's UI opens it on its runs
  (model training), not on the GenAI traces overview.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import yaml

from pipeline.core.config import Params
from pipeline.core.io import write_text

log = logging.getLogger(__name__)

PRETRAIN_EXPERIMENT = "pretraining"
COMPARE_EXPERIMENT = "comparison"
RUN_ID_FILE = "mlflow_run_id"
PREFECT_TAG = "prefect.flow_run_id"
# The tag MLflow 3's UI reads to choose an experiment's page (mlflow/server/js: ExperimentKind); without it the UI
# guesses, and an experiment with few runs may open as a GenAI experiment on its (empty) traces view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
# Set by flows/ (pipeline/ never imports Prefect) so runs can be tagged with their flow run.
FLOW_RUN_ENV = "HT_PREFECT_FLOW_RUN_ID"
ALLOW_DIRTY_ENV = "HT_ALLOW_DIRTY"
# Written by the pipeline itself (the params stage, dvc repro, the mirror hashes make run records): they never make
# a tree "dirty".
GENERATED_FILES = ("dvc.lock", "params.effective.yaml", "data-sources.yaml", "run-params/")  # "/": a folder


class DirtyTreeError(RuntimeError):
    """A model would be registered from uncommitted code or params."""


# dvc_hashes: reads of a dvc.lock caught mid-write
LOCK_READ_TRIES = 10
LOCK_READ_PAUSE_S = 0.2


def task_experiment(task: str) -> str:
    return f"task-{task}"


def registered_name(task: str, model: str) -> str:
    return f"{task}-{model}"


def tracking_uri(params: Params, root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI, else the params' local store with its folder made absolute."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    uri = params.common.mlflow_tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        db = (root or Path.cwd()) / uri[len("sqlite:///") :]
        db.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{db.resolve()}"
    return uri


def artifact_root(params: Params, root: Path | None = None) -> str | None:
    """Artifact location for new experiments; None when a server decides (MLFLOW_TRACKING_URI set)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    path = ((root or Path.cwd()) / params.common.mlflow_artifact_root).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


def configure(params: Params, root: Path | None = None) -> str:
    uri = tracking_uri(params, root)
    point_mlflow_at(uri)
    return uri


def point_mlflow_at(uri: str, registry_uri: str | None = None) -> None:
    """Tracking and registry URI of this process (the registry: `uri` unless given). MLflow 3 also exports them
    as env vars; left set, they would override the params' store on the next call (another stage, test or
    benchmark in this process) and hide artifact_root(): the env vars are put back as the user had them."""
    import mlflow

    user_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri or uri)
    for key, value in user_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def using_store(uri: str) -> Iterator[str]:
    """This process's MLflow tracking and registry URIs set to `uri` inside the block, and back afterwards."""
    import mlflow

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    point_mlflow_at(uri)
    try:
        yield uri
    finally:
        point_mlflow_at(*previous)


def ensure_store(params: Params, root: Path | None = None) -> None:
    """Create a new local store's tables now: stages that start together on a missing sqlite file would race to
    create them. A server (http) or an existing file needs nothing, and then mlflow is not even imported."""
    uri = tracking_uri(params, root)
    if uri.startswith(("http://", "https://")):
        return
    if uri.startswith("sqlite:///") and Path(uri[len("sqlite:///") :]).exists():
        return
    import mlflow

    point_mlflow_at(uri)
    mlflow.MlflowClient(uri).search_experiments(max_results=1)


def ensure_experiment(name: str, params: Params, root: Path | None = None) -> str:
    import mlflow

    configure(params, root)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        try:
            return mlflow.create_experiment(
                name,
                artifact_location=artifact_root(params, root),
                tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND},
            )
        except mlflow.exceptions.MlflowException:  # created concurrently
            exp = mlflow.get_experiment_by_name(name)
    if EXPERIMENT_KIND_TAG not in exp.tags:  # made before this tag was set (a kind chosen in the UI is kept)
        mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return exp.experiment_id


def git_commit(root: Path | None = None, mark_dirty: bool = False) -> str:
    """HEAD's commit of the repository at `root` (default: cwd), "unknown" outside one. With mark_dirty, a
    `-dirty` suffix when tracked files differ from HEAD (the benchmarks' results record it)."""
    cwd = root or Path.cwd()
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() or "unknown"
        if mark_dirty and commit != "unknown":
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
            commit += "-dirty" if dirty else ""
        return commit
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def dirty_files(root: Path | None = None) -> list[str]:
    """Files that differ from HEAD (modified, staged, deleted or untracked and not ignored), except the files the
    pipeline writes itself (GENERATED_FILES). Empty outside a git repository (nothing to compare with)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=normal"],
            cwd=root or Path.cwd(),
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    files = [line[3:].strip().strip('"') for line in out.stdout.splitlines() if line.strip()]
    return [f for f in files if not _generated(f.split(" -> ")[-1])]


def _generated(path: str) -> bool:
    return any(path == g or (g.endswith("/") and path.startswith(g)) for g in GENERATED_FILES)


def require_clean_tree(what: str, root: Path | None = None) -> bool:
    """Refuse (DirtyTreeError) to produce `what` from a working tree with uncommitted changes, unless
    HT_ALLOW_DIRTY=1; returns whether the tree is dirty (then the run is tagged so)."""
    dirty = dirty_files(root)
    if dirty and os.environ.get(ALLOW_DIRTY_ENV) != "1":
        shown = ", ".join(dirty[:8]) + (f" and {len(dirty) - 8} more" if len(dirty) > 8 else "")
        raise DirtyTreeError(
            f"refusing to {what} from a dirty working tree ({shown}): a registered version must be reproducible "
            f"from its git commit. Commit (or stash) the changes and run again, or set {ALLOW_DIRTY_ENV}=1 to "
            "register anyway (the run is then tagged git_dirty=true)."
        )
    return bool(dirty)


def params_hash(params: Params) -> str:
    """A short hash of the effective params (params.yaml + profile), as validated: equal params, equal hash."""
    canonical = json.dumps(params.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def dvc_hashes(paths: list[str | Path], root: Path | None = None) -> dict[str, str]:
    """DVC md5 of each input path inside the repository, read from dvc.lock: the md5 of the stage out that is the
    path or holds it (data/tokenizers for data/tokenizers/gpt), keyed by the path relative to the root. Paths
    outside the repository (a checkpoint in an installed package) are no DVC outs and are left out.

    DVC rewrites dvc.lock in place: a stage running beside a `dvc commit` (flows/parallel_repro.py) may read it
    half-written, so an unreadable file, or one that lacks some of the paths, is read again a few times."""
    root = (root or Path.cwd()).resolve()
    lock = root / "dvc.lock"
    if not lock.exists():
        return {}
    # libyaml's loader when present: dvc.lock grows with every stage, the pure-Python parser took 0.5-2 s
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    wanted = {rel for rel in (_repo_relative(p, root) for p in paths) if rel is not None}
    if not wanted:
        return {}
    for attempt in range(LOCK_READ_TRIES):
        last = attempt == LOCK_READ_TRIES - 1
        try:
            lock_data = yaml.load(lock.read_text(), Loader=loader)  # noqa: S506 (safe loader)
        except yaml.YAMLError:
            if last:
                raise
            time.sleep(LOCK_READ_PAUSE_S)
            continue
        found = _out_hashes(lock_data.get("stages") if isinstance(lock_data, dict) else None, wanted)
        if len(found) == len(wanted) or last:
            return found
        time.sleep(LOCK_READ_PAUSE_S)
    return {}


def _repo_relative(path: str | Path, root: Path) -> str | None:
    """`path` relative to the repository root (as dvc.lock writes it), None when it lies outside."""
    path = Path(path)
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(root)
        except ValueError:
            return None
    return path.as_posix().rstrip("/")


def _out_hashes(stages: object, wanted: set[str]) -> dict[str, str]:
    """md5 of the out that is, or holds, each wanted path in dvc.lock's `stages`; entries a half-written file
    leaves empty (a stage cut after its name, an out without its md5) are skipped, so the caller reads the file
    again."""
    outs_md5: dict[str, str] = {}
    for stage in stages.values() if isinstance(stages, dict) else ():
        outs = stage.get("outs") if isinstance(stage, dict) else None
        for out in outs if isinstance(outs, list) else ():
            if isinstance(out, dict) and out.get("md5"):
                outs_md5[str(out.get("path", "")).rstrip("/")] = out["md5"]
    found: dict[str, str] = {}
    for path in wanted:
        holder = next((p for p in (path, *map(str, PurePosixPath(path).parents)) if p in outs_md5), None)
        if holder is not None:
            found[path] = outs_md5[holder]
    return found


def base_tags(
    params: Params,
    *,
    family: str,
    source: str,
    inputs: list[str | Path] = (),
    extra: dict[str, str] | None = None,
    root: Path | None = None,
) -> dict[str, str]:
    tags = {
        "git_commit": git_commit(root),
        "git_dirty": str(bool(dirty_files(root))).lower(),
        "params_hash": params_hash(params),
        "profile": params.profile or "none",
        "seed": str(params.common.seed),
        "model_family": family,
        "weight_source": source,
    }
    for path, md5 in dvc_hashes(list(inputs), root).items():
        tags[f"dvc.{path}"] = md5
    flow_run = os.environ.get(FLOW_RUN_ENV) or os.environ.get("PREFECT__FLOW_RUN_ID")
    if flow_run:
        tags[PREFECT_TAG] = flow_run
    tags.update(extra or {})
    return tags


@contextlib.contextmanager
def stage_run(
    params: Params,
    experiment: str,
    run_name: str,
    state_dir: Path,
    tags: dict[str, str],
    root: Path | None = None,
) -> Iterator[mlflow.ActiveRun]:  # noqa: F821
    """Start (or resume) the MLflow run of a stage.

    The run id is kept in `state_dir/mlflow_run_id`. When that file exists and its run did not finish
    (the process was killed), the same run is resumed. The file is removed when the run ends well.
    """
    import mlflow

    exp_id = ensure_experiment(experiment, params, root)
    state_dir.mkdir(parents=True, exist_ok=True)
    id_file = state_dir / RUN_ID_FILE
    run_id = None
    if id_file.exists():
        candidate = id_file.read_text().strip()
        try:
            prev = mlflow.get_run(candidate)
            if prev.info.status != "FINISHED" and prev.info.experiment_id == exp_id:
                run_id = candidate
                log.info("Resuming MLflow run %s (%s) from its checkpoint", run_id, run_name)
        except mlflow.exceptions.MlflowException:
            log.warning("Stale run id %s in %s; starting a new run", candidate, id_file)
    with mlflow.start_run(run_id=run_id, experiment_id=exp_id, run_name=None if run_id else run_name) as run:
        write_text(id_file, run.info.run_id)
        mlflow.set_tags(tags)
        log.info("MLflow run %s in experiment %r (%s)", run.info.run_id, experiment, tracking_uri(params, root))
        yield run
    id_file.unlink(missing_ok=True)


def flatten(prefix: str, obj) -> dict[str, object]:
    """Flatten nested params for mlflow.log_params: {'a': {'b': 1}} -> {'a.b': 1}."""
    out: dict[str, object] = {}
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump()
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
    else:
        out[prefix] = obj
    return out


def log_params_once(values: dict[str, object]) -> None:
    """Log params, skipping keys already on the (resumed) run, since MLflow refuses to change them."""
    import mlflow

    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    todo = {k: str(v)[:6000] for k, v in values.items() if k not in existing}
    if todo:
        mlflow.log_params(todo)
