"""Champion models: a metric-gated `champion` alias per registered model, a leader per task, and rollback.

Design
- Per registered model (`<task>-<model>`): the alias `champion` points at that model's best version. A version
  is a candidate when it is READY, its run FINISHED with the task's main test metric (`test_<metric>` on the
  run), and it is not blocked (see rollback). The alias moves only when the best candidate beats the current
  champion's metric by more than params.compare.min_improvement; both metrics are read from the versions' runs.
- Same test split: a run's test split is identified by its `dvc.data/prepared/<task>` tag (the DVC hash of the
  prepared task data; runs without it share the split ""). Only versions evaluated on the task's latest split
  (that of the most recent run) compete. A champion measured on another split is not comparable, so the best
  candidate on the latest split replaces it (the reason says so).
- Per task: the leader is the registered model whose champion has the best metric among the task's models.
  It is stored as the registered-model tag `task_leader=true` on that model (removed from the others) and
  changes under the same gate (a challenger must beat the leader by more than min_improvement).
- History: every alias move and leader change is appended as one JSON line to `champion_history.jsonl`
  next to the MLflow store (mlflow/ by default, the parent of params.common.mlflow_artifact_root): outside
  reports/ and data/, so `dvc repro` and `make clean-data` keep it, like the registry it describes. Fields:
  id, time, event (promote | rollback | leader), task, registered_model, alias, old_version, new_version,
  metric, old_metric, new_metric, reason, and for a rollback `undoes` (the id of the promotion it undid).
- Rollback (`rollback("emotion-bert")` or `rollback("emotion")`): undoes the most recent promotion not yet
  undone, of that registered model or of any model of that task; the alias returns to the version it pointed
  at before (or is removed when there was none). Repeated rollbacks walk further back. The version rolled
  back from gets the version tag `champion.blocked`, so the next compare does not promote it again; delete
  that tag (e.g. in the MLflow UI) to let it compete again. The task leader is then re-evaluated.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline.core.config import TASKS, Params
from pipeline.core.metrics import main_metric
from pipeline.tracking.runs import configure, registered_name

log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
LEADER_TAG = "task_leader"
BLOCKED_TAG = "champion.blocked"
HISTORY_FILE = "champion_history.jsonl"


class ChampionError(RuntimeError):
    """A champion operation cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class Candidate:
    name: str  # registered model
    version: str
    metric: float | None
    split: str
    started: int  # run start time (ms), to find the latest split


# ---------------------------------------------------------------- history
def history_path(params: Params, root: Path | None = None) -> Path:
    store_dir = Path(params.common.mlflow_artifact_root).parent
    if not store_dir.is_absolute():
        store_dir = (root or Path.cwd()) / store_dir
    return store_dir / HISTORY_FILE


def read_history(params: Params, root: Path | None = None) -> list[dict]:
    path = history_path(params, root)
    if not path.exists():
        return []
    events = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ChampionError(f"{path}, line {n}: not valid JSON ({err}); fix or remove that line") from None
    return events


def _append(path: Path, event: dict) -> dict:
    event = {"id": uuid.uuid4().hex[:12], "time": datetime.now(UTC).isoformat(timespec="seconds"), **event}
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(event, sort_keys=True) + "\n")
        fh.flush()
    log.info(
        "Champion history: %s %s %s -> %s (%s)",
        event["event"],
        event.get("registered_model"),
        event.get("old_version"),
        event.get("new_version"),
        event.get("reason"),
    )
    return event


@contextlib.contextmanager
def _locked(params: Params, root: Path | None) -> Iterator[Path]:
    """Serialise promotions and rollbacks (one writer of the aliases and the history at a time)."""
    path = history_path(params, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ---------------------------------------------------------------- registry reads
def _not_found(err) -> bool:
    """Only a missing run/model/alias means "absent"; an outage (5xx, timeout) must surface, not be skipped."""
    return getattr(err, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def _candidate(client, name: str, version, task: str, runs: dict) -> Candidate | None:
    """The version with its run's test metric; None when it cannot compete."""
    from mlflow.exceptions import MlflowException

    if str(version.status) != "READY" or not version.run_id:
        return None
    if version.run_id not in runs:
        try:
            runs[version.run_id] = client.get_run(version.run_id)
        except MlflowException as err:
            if not _not_found(err):
                raise
            runs[version.run_id] = None
    run = runs[version.run_id]
    if run is None or run.info.status != "FINISHED":
        return None
    value = run.data.metrics.get(f"test_{main_metric(task)}")
    if value is None or not math.isfinite(value):
        return None
    split = run.data.tags.get(f"dvc.data/prepared/{task}", "")
    return Candidate(name, str(version.version), float(value), split, int(run.info.start_time or 0))


def _current(client, name: str, task: str, runs: dict) -> Candidate | None:
    """The version holding the alias (metric None when its run has none), None when no version does."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as err:
        if not _not_found(err):
            raise
        return None
    found = _candidate(client, name, version, task, runs)
    return found or Candidate(name, str(version.version), None, "", 0)


def _task_models(client, task: str, params: Params) -> list[str]:
    """The task's registered models (`<task>-<model>` for the models in params that exist in the registry)."""
    from mlflow.exceptions import MlflowException

    names = []
    for model in params.models:
        try:
            client.get_registered_model(registered_name(task, model))
            names.append(registered_name(task, model))
        except MlflowException as err:
            if not _not_found(err):
                raise
    return names


def _pool(client, task: str, names: list[str], runs: dict) -> dict[str, list[Candidate]]:
    """Each registered model's versions that may compete (blocked ones excluded)."""
    pool = {}
    for name in names:
        versions = client.search_model_versions(f"name='{name}'")
        found = [_candidate(client, name, v, task, runs) for v in versions if BLOCKED_TAG not in (v.tags or {})]
        pool[name] = [c for c in found if c is not None]
    return pool


def _latest_split(pool: dict[str, list[Candidate]]) -> str:
    everyone = [c for cs in pool.values() for c in cs]
    return max(everyone, key=lambda c: c.started).split if everyone else ""


def _beats(new: float, old: float | None, min_improvement: float) -> bool:
    return old is None or new > old + min_improvement


# ---------------------------------------------------------------- promotion
def update_champions(params: Params, tasks: tuple[str, ...] = TASKS, root: Path | None = None) -> dict:
    """Move `champion` aliases and task leaders where a better version appeared; returns the state per task."""
    from mlflow import MlflowClient

    configure(params, root)
    client = MlflowClient()
    with _locked(params, root) as history:
        return {task: _update_task(client, task, params, history) for task in tasks}


def _update_task(client, task: str, params: Params, history: Path) -> dict:
    runs: dict = {}
    names = _task_models(client, task, params)
    pool = _pool(client, task, names, runs)
    split = _latest_split(pool)
    models = {n: _promote(client, n, task, pool[n], split, params, history, runs) for n in names}
    leader = _update_leader(client, task, names, split, params, history, runs)
    return {"metric": main_metric(task), "leader": leader, "models": models}


def _promote(client, name, task, candidates, split, params, history, runs) -> dict:
    gate = params.compare.min_improvement
    current = _current(client, name, task, runs)
    best = max((c for c in candidates if c.split == split), key=lambda c: (c.metric, int(c.version)), default=None)
    moved, reason = False, "no candidate version on the latest test split"
    if best is not None:
        if current is None:
            moved, reason = True, "first champion"
        elif current.version == best.version:
            reason = "the champion is the best version"
        elif current.metric is None:
            moved, reason = True, "the champion has no test metric (or its run is gone)"
        elif current.split != split:
            moved, reason = True, "the champion was evaluated on another test split"
        elif _beats(best.metric, current.metric, gate):
            moved, reason = True, f"beats the champion by more than {gate}"
        else:
            reason = f"version {best.version} does not beat the champion by more than {gate}"
    if moved:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, best.version)
        _append(
            history,
            {
                "event": "promote",
                "task": task,
                "registered_model": name,
                "alias": CHAMPION_ALIAS,
                "old_version": current.version if current else None,
                "new_version": best.version,
                "metric": main_metric(task),
                "old_metric": current.metric if current else None,
                "new_metric": best.metric,
                "reason": reason,
            },
        )
        current = best
    return {
        "champion_version": current.version if current else None,
        "metric_value": current.metric if current else None,
        "moved": moved,
        "reason": reason,
    }


def _update_leader(client, task, names, split, params, history, runs) -> dict | None:
    """Re-evaluate which registered model leads the task (tag task_leader); returns the leader or None."""
    gate = params.compare.min_improvement
    champions = {n: c for n in names if (c := _current(client, n, task, runs)) is not None}
    contenders = {n: c for n, c in champions.items() if c.metric is not None and c.split == split}
    leader = next((n for n in names if client.get_registered_model(n).tags.get(LEADER_TAG) == "true"), None)
    best = max(contenders.values(), key=lambda c: c.metric, default=None)
    incumbent = contenders.get(leader)
    new, reason = leader, None
    if best is not None and best.name != leader:
        if leader is None:
            new, reason = best.name, "first leader"
        elif incumbent is None:
            new, reason = best.name, "the leader has no champion on the latest test split"
        elif _beats(best.metric, incumbent.metric, gate):
            new, reason = best.name, f"its champion beats the leader's by more than {gate}"
    elif best is None and leader is not None and leader not in champions:
        new, reason = None, "the leader has no champion any more"
    if new != leader:
        if leader is not None:
            client.delete_registered_model_tag(leader, LEADER_TAG)
        if new is not None:
            client.set_registered_model_tag(new, LEADER_TAG, "true")
        old, won = champions.get(leader), contenders.get(new)
        _append(
            history,
            {
                "event": "leader",
                "task": task,
                "registered_model": new,
                "old_registered_model": leader,
                "alias": CHAMPION_ALIAS,
                "old_version": old.version if old else None,
                "new_version": won.version if won else None,
                "metric": main_metric(task),
                "old_metric": old.metric if old else None,
                "new_metric": won.metric if won else None,
                "reason": reason,
            },
        )
    if new is None:
        return None
    held = champions.get(new)
    return {
        "registered_model": new,
        "model": new[len(task) + 1 :],
        "version": held.version if held else None,
        "metric_value": held.metric if held else None,
    }


# ---------------------------------------------------------------- rollback
def _open_promotions(events: list[dict]) -> list[dict]:
    """Promotions not undone by a rollback yet, oldest first: rollbacks pop them like a stack."""
    undone = {e.get("undoes") for e in events if e.get("event") == "rollback"}
    return [e for e in events if e.get("event") == "promote" and e.get("id") not in undone]


def resolve_target(target: str, params: Params) -> tuple[str, set[str]]:
    """(task, registered model names) of a rollback target: a task or a `<task>-<model>` name."""
    if target in TASKS:
        return target, {registered_name(target, m) for m in params.models}
    names = {registered_name(t, m): t for t in TASKS for m in params.models}
    if target not in names:
        raise ChampionError(
            f"rollback target {target!r} is neither a task nor a registered model; use one of {[*TASKS, *names]}"
        )
    return names[target], {target}


def rollback(target: str, params: Params, root: Path | None = None) -> dict:
    """Undo the last champion promotion of `target` (a task or a `<task>-<model>` name); returns the event."""
    from mlflow import MlflowClient

    task, names = resolve_target(target, params)
    configure(params, root)
    client = MlflowClient()
    with _locked(params, root) as history:
        moves = [e for e in _open_promotions(read_history(params, root)) if e.get("registered_model") in names]
        if not moves:
            raise ChampionError(f"no champion promotion of {target!r} left to undo in {history}; nothing was changed")
        move = moves[-1]
        name, restored = move["registered_model"], move["old_version"]
        current = _current(client, name, task, {})
        if current is None or current.version != move["new_version"]:
            log.warning(
                "%s: alias %r is at version %s, not %s as the history says (moved by hand?); restoring %s",
                name,
                CHAMPION_ALIAS,
                current.version if current else None,
                move["new_version"],
                restored,
            )
        if restored is None:
            client.delete_registered_model_alias(name, CHAMPION_ALIAS)
        else:
            client.set_registered_model_alias(name, CHAMPION_ALIAS, restored)
        if current is not None:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            client.set_model_version_tag(name, current.version, BLOCKED_TAG, f"rolled back at {stamp}")
        back = _current(client, name, task, {}) if restored else None
        event = _append(
            history,
            {
                "event": "rollback",
                "task": task,
                "registered_model": name,
                "alias": CHAMPION_ALIAS,
                "old_version": current.version if current else None,
                "new_version": restored,
                "metric": main_metric(task),
                "old_metric": current.metric if current else None,
                "new_metric": back.metric if back else None,
                "reason": f"rollback of {target}",
                "undoes": move["id"],
            },
        )
        runs: dict = {}
        task_names = _task_models(client, task, params)
        split = _latest_split(_pool(client, task, task_names, runs))
        _update_leader(client, task, task_names, split, params, history, runs)
    return event
