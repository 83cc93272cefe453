"""Trainer checkpoint folders that survive a crash: resume only from complete checkpoints made with the
same params and inputs; otherwise start over (and close the abandoned MLflow run)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from pipeline.core.config import Params
from pipeline.core.io import write_json
from pipeline.tracking import runs as tracking

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
TRAINER_STATE = "trainer_state.json"  # written last into a checkpoint: its presence marks a complete one


def files_digest(folders: list[Path]) -> str:
    """Cheap digest of the files under `folders` (relative names, sizes and mtimes)."""
    digest = hashlib.sha256()
    for folder in folders:
        folder = Path(folder)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []:
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _complete(checkpoint: Path) -> bool:
    """trainer_state.json is written last; transformers creates it empty first, so it must also parse."""
    try:
        return isinstance(json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


def complete_checkpoints(folder: Path) -> list[Path]:
    """checkpoint-N folders holding a complete trainer_state.json, oldest first."""
    found = [p for p in Path(folder).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted((p for p in found if _complete(p)), key=lambda p: int(p.name.split("-")[-1]))


def prepare_checkpoints(folder: Path, fingerprint: dict, params: Params) -> Path | None:
    """The checkpoint to resume from, or None. A folder made with other params/inputs is discarded (its
    MLflow run marked KILLED); incomplete checkpoints (killed while saving) are removed."""
    folder = Path(folder)
    fp_file = folder / FINGERPRINT_FILE
    if folder.exists():
        stale = not fp_file.exists() or json.loads(fp_file.read_text()) != fingerprint
        if stale:
            log.warning("%s was made with other params or inputs: discarding it and starting over", folder)
            close_abandoned_run(folder, params)
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(fp_file, fingerprint, sort_keys=True)  # atomic: a kill mid-write must not break the next resume
    done = complete_checkpoints(folder)
    for partial in set(folder.glob("checkpoint-*")) - set(done):
        log.warning("removing incomplete checkpoint %s (the run was killed while saving it)", partial)
        shutil.rmtree(partial)
    if done:
        log.info("resuming from %s", done[-1])
        return done[-1]
    return None


def close_abandoned_run(folder: Path, params: Params) -> None:
    id_file = Path(folder) / tracking.RUN_ID_FILE
    if not id_file.exists():
        return
    import mlflow

    tracking.configure(params)
    try:
        mlflow.MlflowClient().set_terminated(id_file.read_text().strip(), status="KILLED")
    except mlflow.exceptions.MlflowException as err:
        log.warning("could not mark the abandoned MLflow run as KILLED: %s", err)
