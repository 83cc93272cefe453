"""Atomic writes: the one place that writes a folder or a file so that no reader ever sees half of it.

Everything is built under a temporary name next to its target (same folder, so the same filesystem) and moved
into place with a rename. A crash or an exception before that leaves the old target intact (or no target) and
removes the temporary, so DVC, the compare stage or a resume never take a half-written output for a finished one.

- atomic_dir(target): a folder (a stage's whole output: data/raw/<name>, data/models/<model>-<task>, ...);
- atomic_file(target): a file saved by a callable that takes a path (torch.save, safetensors save_file, ...);
- write_bytes / write_text / write_json(target, ...): a file, fsynced before the rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"
PLOTS_DIR = "plots"
TEST_ITEMS_FILE = "test_items.jsonl"  # one {"gold", "prediction"} per test example, in test-split order


def _sibling(target: Path, kind: str) -> Path:
    """A hidden, unique name next to `target`: .<name>.<kind>-<random>."""
    return target.parent / f".{target.name}.{kind}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh, empty temporary folder next to `target`; when the block ends without an exception it
    replaces `target` (an old `target` is removed). On an exception `target` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        old = _sibling(target, "old")
        if target.exists():
            target.rename(old)
        try:
            tmp.rename(target)
        except BaseException:
            if old.exists() and not target.exists():
                old.rename(target)  # put the previous output back
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `target` (not created) for a callable to save into; when the block ends
    without an exception the file is fsynced and replaces `target`. On an exception `target` is left as it was.

        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp))
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"atomic_file({target}): nothing was saved to the temporary file {tmp}")
        _fsync(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(target: str | Path, data: bytes) -> Path:
    """Write `data` to `target` atomically (temporary file in the same folder, fsync, rename)."""
    target = Path(target)
    with atomic_file(target) as tmp, open(tmp, "xb") as fh:
        fh.write(data)
    return target


def write_text(target: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `target` atomically."""
    return write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, data: Any, *, sort_keys: bool = False) -> Path:
    """Write `data` as indented UTF-8 JSON with a final newline to `target` atomically. Nothing is written
    when `data` is not JSON-serialisable (the error is raised before the file is touched)."""
    return write_text(target, json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
