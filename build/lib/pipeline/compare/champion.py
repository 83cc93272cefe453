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
- Per task, one registered model `<task>` (e.g. `emotion`) whose alias `champion` points at a version with the
  same model source (and run) as the leader's champion: users serve `models:/emotion@champion` without knowing
  which family won. Its versions carry the tags `champion.source_model` / `champion.source_version` (and
  `model`, `model_family`); a source registered before is reused, so moving back reuses its old version.
- History lives in MLflow, so machines sharing a tracking server share it: experiment `champions`, one run
  per task (`champions-<task>`, tag `champion.task`), one JSON artifact per event under `events/`
  (`<UTC time>-<id>.json`, read back in that order), plus a metric `champion/<registered model>` charting the
  champion's metric. Fields: id, time, event (promote | rollback | leader | task_champion), task,
  registered_model, alias, old_version, new_version, metric, old_metric, new_metric, reason, and for a
  rollback `undoes` (the id of the promotion it undid); task_champion events add old_source / new_source.
  Promoted versions get the tag `champion.promoted_at`. A store with the old local history
  (`champion_history.jsonl` next to it) has it imported once, ids kept, so its promotions can still be rolled back.
- Concurrency: on one machine a file lock (champions.lock next to the local store) serialises every
  promotion and rollback. Against a shared server the guarantees are weaker: each event is its own immutable
  artifact (never read-modify-write), so concurrent writers never lose or corrupt each other's events, and a
  history run created twice at once is merged on read; each alias move is one atomic registry call. But two
  machines running compare/rollback at the same moment may both decide from the same state (last alias write
  wins, and both moves are recorded); run promotions from one place (the scheduled retrain flow) per server.
- Rollback (`rollback("emotion-bert")` or `rollback("emotion")`): undoes the most recent promotion not yet
  undone, of that registered model or of any model of that task; the alias returns to the version it pointed
  at before (or is removed when there was none). Repeated rollbacks walk further back. The version rolled
  back from gets the version tag `champion.blocked`, so the next compare does not promote it again; delete
  that tag (e.g. in the MLflow UI) to let it compete again. The task leader is then re-evaluated and
  `<task>@champion` follows it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline.core.config import TASKS, Params
from pipeline.core.metrics import main_metric
from pipeline.tracking.runs import configure, registered_name
from pipeline.tracking.serving import CHAMPION_ALIAS

log = logging.getLogger(__name__)

LEADER_TAG = "task_leader"
BLOCKED_TAG = "champion.blocked"
HISTORY_EXPERIMENT = "champions"  # one run per task holds that task's events
TASK_TAG = "champion.task"  # on a history run: its task
EVENTS_DIR = "events"  # a history run's artifact folder: one JSON file per event
LOCK_FILE = "champions.lock"
LEGACY_HISTORY_FILE = "champion_history.jsonl"  # the history's old, local home: imported once (import_legacy_history)
PROMOTED_TAG = "champion.promoted_at"  # on a version: when it last became champion
SOURCE_MODEL_TAG = "champion.source_model"  # on a version of `<task>`: the `<task>-<model>` it copies ...
SOURCE_VERSION_TAG = "champion.source_version"  # ... and that model's version


class ChampionError(RuntimeError):
    """A champion operation cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class Candidate:
    name: str  # registered model
    version: str
    metric: float | None
    split: str
    started: int  # run start time (ms), to find the latest split


# ---------------------------------------------------------------- history (in MLflow)
def lock_path(params: Params, root: Path | None = None) -> Path:
    """The local lock file that serialises this machine's champion writers (next to the local MLflow store)."""
    store_dir = Path(params.common.mlflow_artifact_root).parent
    if not store_dir.is_absolute():
        store_dir = (root or Path.cwd()) / store_dir
    return store_dir / LOCK_FILE


def _history_runs(client, task: str | None = None) -> list:
    """The history runs (of one task, or all), oldest first; [] when the experiment does not exist yet."""
    exp = client.get_experiment_by_name(HISTORY_EXPERIMENT)
    if exp is None:
        return []
    query = f"tags.`{TASK_TAG}` = '{task}'" if task else f"tags.`{TASK_TAG}` != ''"
    runs = client.search_runs([exp.experiment_id], filter_string=query, max_results=1000)
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def _history_run_id(client, task: str, params: Params, root: Path | None) -> str:
    """The task's history run, created on first use. Two machines creating it at once make two runs: harmless,
    readers merge every run of the task and writers use the oldest."""
    from pipeline.tracking.runs import ensure_experiment

    runs = _history_runs(client, task)
    if runs:
        return runs[0].info.run_id
    exp_id = ensure_experiment(HISTORY_EXPERIMENT, params, root)
    run = client.create_run(exp_id, run_name=f"champions-{task}", tags={TASK_TAG: task})
    client.set_terminated(run.info.run_id)  # a ledger, not a running job; artifacts can still be added
    return run.info.run_id


def read_history(params: Params, root: Path | None = None, task: str | None = None) -> list[dict]:
    """Every champion event (of one task, or of all tasks), oldest first, read from the MLflow history runs."""
    import mlflow.artifacts
    from mlflow import MlflowClient

    configure(params, root)
    client = MlflowClient()
    named = []
    for run in _history_runs(client, task):
        if not client.list_artifacts(run.info.run_id, EVENTS_DIR):
            continue
        with tempfile.TemporaryDirectory(prefix="champion-events-") as tmp:
            folder = Path(
                mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=EVENTS_DIR, dst_path=tmp)
            )
            for path in sorted(folder.glob("*.json")):
                try:
                    named.append((path.name, json.loads(path.read_text(encoding="utf-8"))))
                except json.JSONDecodeError as err:
                    raise ChampionError(
                        f"run {run.info.run_id} ({HISTORY_EXPERIMENT}), artifact {EVENTS_DIR}/{path.name}: not valid "
                        f"JSON ({err}); fix or delete that artifact"
                    ) from None
    return [event for _, event in sorted(named, key=lambda item: item[0])]


def _append(client, history: History, event: dict) -> dict:
    """Record one event as its own artifact `events/<UTC time>-<id>.json` of the task's history run: never a
    read-modify-write, so concurrent writers (other machines on the same server) cannot lose each other's events."""
    now = datetime.now(UTC)
    event = {"id": uuid.uuid4().hex[:12], "time": now.isoformat(timespec="seconds"), **event}
    run_id = _history_run_id(client, event["task"], history.params, history.root)
    name = f"{EVENTS_DIR}/{now.strftime('%Y%m%dT%H%M%S%fZ')}-{event['id']}.json"
    client.log_text(run_id, json.dumps(event, sort_keys=True, indent=1), name)
    if event["event"] != "leader" and event.get("new_metric") is not None:
        # the champion's metric over time, per registered model: a chart in the run's Metrics tab
        key = f"champion/{event['registered_model']}"
        client.log_metric(run_id, key, float(event["new_metric"]), timestamp=int(now.timestamp() * 1000))
    client.set_tag(
        run_id,
        "champion.last_event",
        f"{event['event']} {event.get('registered_model')} {event.get('old_version')} -> {event.get('new_version')}",
    )
    log.info(
        "Champion history: %s %s %s -> %s (%s)",
        event["event"],
        event.get("registered_model"),
        event.get("old_version"),
        event.get("new_version"),
        event.get("reason"),
    )
    return event


@dataclass(frozen=True)
class History:
    params: Params
    root: Path | None


def import_legacy_history(client, history: History) -> int:
    """Move the events of the old local `champion_history.jsonl` (next to the store) into MLflow once, keeping
    their ids and times (so rollback can still undo them); the file is renamed `.imported`. Returns the count."""
    path = lock_path(history.params, history.root).with_name(LEGACY_HISTORY_FILE)
    if not path.exists():
        return 0
    lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    for n, line in lines:
        try:
            event = json.loads(line)
            when = datetime.fromisoformat(event["time"]).replace(microsecond=n % 1_000_000)  # file order kept
        except (json.JSONDecodeError, KeyError, ValueError) as err:
            raise ChampionError(f"{path}, line {n}: not a history event ({err}); fix or remove that line") from None
        run_id = _history_run_id(client, event["task"], history.params, history.root)
        name = f"{EVENTS_DIR}/{when.astimezone(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{event['id']}.json"
        client.log_text(run_id, json.dumps(event, sort_keys=True, indent=1), name)
    path.rename(path.with_name(path.name + ".imported"))
    log.info("Imported %d champion events from %s into MLflow (experiment %r)", len(lines), path, HISTORY_EXPERIMENT)
    return len(lines)


@contextlib.contextmanager
def _locked(params: Params, root: Path | None) -> Iterator[History]:
    """Serialise this machine's promotions and rollbacks (one writer of the aliases and the history at a time)."""
    path = lock_path(params, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield History(params, root)
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
        import_legacy_history(client, history)
        return {task: _update_task(client, task, params, history) for task in tasks}


def _update_task(client, task: str, params: Params, history: History) -> dict:
    runs: dict = {}
    names = _task_models(client, task, params)
    pool = _pool(client, task, names, runs)
    split = _latest_split(pool)
    models = {n: _promote(client, n, task, pool[n], split, params, history, runs) for n in names}
    leader = _update_leader(client, task, names, split, params, history, runs)
    served = _sync_task_model(client, task, leader, params, history, "the task leader's champion changed")
    return {"metric": main_metric(task), "leader": leader, "models": models, "task_champion": served}


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
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        client.set_model_version_tag(name, best.version, PROMOTED_TAG, stamp)  # visible on the version's page
        _append(
            client,
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
            client,
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


# ---------------------------------------------------------------- the task's registered model
def _task_champion(client, task: str) -> tuple[object | None, object | None]:
    """(`<task>@champion` version or None, the `<task>` registered model or None)."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(task)
    except MlflowException as err:
        if not _not_found(err):
            raise
        return None, None
    try:
        return client.get_model_version_by_alias(task, CHAMPION_ALIAS), model
    except MlflowException as err:
        if not _not_found(err):
            raise
        return None, model


def _sync_task_model(client, task: str, leader: dict | None, params: Params, history: History, reason: str) -> dict:
    """Point `<task>@champion` at the task leader's champion: the registered model `<task>` gets a version with
    the same model source (and run) as `<task>-<model>` version N, tagged with where it comes from; a version
    made earlier for the same source is reused. Returns {"version", "source_model", "source_version"}."""
    from mlflow.exceptions import MlflowException

    current, model = _task_champion(client, task)
    held = (current.tags.get(SOURCE_MODEL_TAG), current.tags.get(SOURCE_VERSION_TAG)) if current is not None else None
    want = (leader["registered_model"], leader["version"]) if leader and leader.get("version") else None
    state = {"version": str(current.version) if current else None, "source_model": None, "source_version": None}
    if want is None:
        if current is not None:
            client.delete_registered_model_alias(task, CHAMPION_ALIAS)
            _task_event(client, history, task, current, held, None, None, reason)
        return {**state, "version": None}
    state.update(source_model=want[0], source_version=want[1])
    if held == want:
        return state
    if model is None:
        try:
            client.create_registered_model(
                task, description=f"The best model of task {task} across families (alias {CHAMPION_ALIAS!r})."
            )
        except MlflowException as err:  # created concurrently
            if getattr(err, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
    same = [
        v
        for v in client.search_model_versions(f"name='{task}'")
        if (v.tags or {}).get(SOURCE_MODEL_TAG) == want[0] and (v.tags or {}).get(SOURCE_VERSION_TAG) == want[1]
    ]
    if same:
        target = max(same, key=lambda v: int(v.version))
    else:
        source = client.get_model_version(*want)
        family_model = want[0][len(task) + 1 :]
        tags = {SOURCE_MODEL_TAG: want[0], SOURCE_VERSION_TAG: want[1], "model": family_model}
        if family_model in params.models:
            tags["model_family"] = params.models[family_model].family
        # MLflow 3: a version whose source is a logged model (models:/m-...) must name it; a server checks that
        model_id = getattr(source, "model_id", None) or _logged_model_id(source.source)
        logged = {"model_id": model_id} if model_id else {}
        target = client.create_model_version(task, source.source, run_id=source.run_id, tags=tags, **logged)
    client.set_registered_model_alias(task, CHAMPION_ALIAS, str(target.version))
    _task_event(client, history, task, current, held, target, leader, reason)
    return {**state, "version": str(target.version)}


def _logged_model_id(source: str) -> str | None:
    """`m-...` of a logged-model source `models:/m-...` (MLflow 3), else None."""
    prefix = "models:/"
    if source.startswith(prefix) and source[len(prefix) :].startswith("m-") and "/" not in source[len(prefix) :]:
        return source[len(prefix) :]
    return None


def _metric_of(client, task: str, source: tuple[str | None, str | None] | None) -> float | None:
    """The test metric of `<task>-<model>` version N (None when unknown)."""
    from mlflow.exceptions import MlflowException

    if not source or not all(source):
        return None
    try:
        found = _candidate(client, source[0], client.get_model_version(*source), task, {})
    except MlflowException as err:
        if not _not_found(err):
            raise
        return None
    return found.metric if found else None


def _task_event(client, history, task, old, held, new, leader, reason) -> None:
    _append(
        client,
        history,
        {
            "event": "task_champion",
            "task": task,
            "registered_model": task,
            "alias": CHAMPION_ALIAS,
            "old_version": str(old.version) if old is not None else None,
            "new_version": str(new.version) if new is not None else None,
            "old_source": f"{held[0]}/{held[1]}" if held else None,
            "new_source": f"{leader['registered_model']}/{leader['version']}" if leader else None,
            "metric": main_metric(task),
            "old_metric": _metric_of(client, task, held),
            "new_metric": leader["metric_value"] if leader else None,
            "reason": reason,
        },
    )


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
        import_legacy_history(client, history)
        moves = [e for e in _open_promotions(read_history(params, root, task)) if e.get("registered_model") in names]
        if not moves:
            raise ChampionError(
                f"no champion promotion of {target!r} left to undo in the {HISTORY_EXPERIMENT!r} history; "
                "nothing was changed"
            )
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
            client,
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
        leader = _update_leader(client, task, task_names, split, params, history, runs)
        _sync_task_model(client, task, leader, params, history, f"rollback of {target}")
    return event
