"""Ingest stage: one dataset from the local mirror (or the hub) into data/raw/<name> in the canonical schema.

The output folder is a datasets.DatasetDict (save_to_disk) plus SOURCE.json: where the data came from
(mirror files' sha256 + size, or hub id/config/revision/commit) and the row count of each split.
It is written to a temp folder next to the target and renamed into place, so a failure never leaves a
half-written data/raw/<name>.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import datasets

from pipeline.core.config import DATASETS, MIRROR_ENV, HubSource, Params
from pipeline.core.io import atomic_dir, write_json
from pipeline.core.paths import raw_dir
from pipeline.data.readers import (
    FEATURES,
    MIRROR_FOLDERS,
    carve_validation,
    has_mirror,
    normalise_turns,
    read_mirror,
    split_by_article,
    split_files,
)

log = logging.getLogger(__name__)

SOURCE_FILE = "SOURCE.json"


def ingest_dataset(name: str, params: Params) -> Path:
    """Read `name` from the mirror when it holds it, else from the hub; save to data/raw/<name>."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")
    source = params.ingest.datasets[name]
    mirror = params.ingest.resolved_mirror_dir()
    if has_mirror(name, mirror):
        folder = mirror / MIRROR_FOLDERS[name]
        log.info("ingest %s: reading the local mirror %s", name, folder)
        dsdict = read_mirror(name, folder, seed=params.common.seed, validation_size=source.validation_size)
        fingerprint = mirror_fingerprint(name, folder)
        if name == "wikitext" and "train" not in dsdict:
            log.warning(
                "ingest wikitext: the mirror %s has no wiki.train.raw; using the splits present: %s",
                folder,
                ", ".join(dsdict),
            )
    else:
        log.info(
            "ingest %s: no mirror folder %s (mirror_dir / %s); loading %s from the hub",
            name,
            (mirror / MIRROR_FOLDERS[name]) if mirror else "<none>",
            MIRROR_ENV,
            source.hub_id,
        )
        dsdict = load_from_hub(name, source, seed=params.common.seed)
        fingerprint = hub_fingerprint(source)
    if name == "samsum":
        dsdict, fingerprint["dropped"] = drop_unusable_samsum(dsdict)
    fingerprint["rows"] = {split: len(ds) for split, ds in dsdict.items()}
    target = raw_dir(name)
    save_atomically(dsdict, fingerprint, target)
    log.info("ingest %s: wrote %s (%s)", name, target, ", ".join(f"{s} {n}" for s, n in fingerprint["rows"].items()))
    return target


# ---------------------------------------------------------------- hub
def load_from_hub(name: str, source: HubSource, seed: int) -> datasets.DatasetDict:
    try:
        hub = datasets.load_dataset(source.hub_id, source.config, revision=source.revision)
    except Exception as err:  # offline, missing revision, network: say what to do
        raise RuntimeError(
            f"ingest {name}: could not load {source.hub_id!r} (config {source.config!r}, revision "
            f"{source.revision!r}) from the hub and there is no local mirror of it: {type(err).__name__}: {err}. "
            f"Point ingest.mirror_dir or {MIRROR_ENV} at a folder holding {MIRROR_FOLDERS[name]}/, or go online."
        ) from err
    return canonical_from_hub(name, hub, seed=seed, validation_size=source.validation_size)


def canonical_from_hub(
    name: str, hub: datasets.DatasetDict, *, seed: int, validation_size: int | None = None
) -> datasets.DatasetDict:
    """Map a hub DatasetDict to the canonical schema (the hub's label order is the canonical order)."""
    features = FEATURES[name]
    if name == "sst2":
        # hub sst2: idx/sentence/label; test labels are -1 (hidden): validation -> test, carve validation from train
        def to_canonical(split: str) -> datasets.Dataset:
            ds = hub[split]
            return datasets.Dataset.from_dict(
                {"text": [s.rstrip() for s in ds["sentence"]], "label": list(ds["label"])}, features=features
            )

        train, validation = carve_validation(to_canonical("train"), validation_size or 872, seed)
        return datasets.DatasetDict({"train": train, "validation": validation, "test": to_canonical("validation")})
    if name == "squad":  # only the official dev set is used (the mirror has nothing else): split it by article
        return split_by_article(_canonical_split(name, hub, "validation"), seed)
    out = {}
    for split in ("train", "validation", "test"):
        out[split] = _canonical_split(name, hub, split)
    return datasets.DatasetDict(out)


def _canonical_split(name: str, hub: datasets.DatasetDict, split: str) -> datasets.Dataset:
    features = FEATURES[name]
    if split not in hub:
        raise ValueError(f"hub dataset for {name} has no {split!r} split (has {list(hub)})")
    ds = hub[split]
    missing = [c for c in features if c not in ds.column_names]
    if missing:
        raise ValueError(f"hub dataset for {name}, split {split}: missing column(s) {missing} (has {ds.column_names})")
    ds = ds.select_columns(list(features)).cast(features)
    if name == "samsum":  # as the mirror reader: turns separated by "\n"
        ds = ds.map(
            lambda row: {key: normalise_turns(row[key] or "") for key in ("dialogue", "summary")},
            keep_in_memory=True,
        )
    return ds


# ---------------------------------------------------------------- samsum
LATER_SPLITS = {"train": ("validation", "test"), "validation": ("test",)}
MAX_LOGGED_IDS = 20


def drop_unusable_samsum(dsdict: datasets.DatasetDict) -> tuple[datasets.DatasetDict, dict]:
    """SAMSum as released has one train example with an empty dialogue, and dialogues that occur in two splits
    (with different summaries): drop the empty train dialogues, and every train/validation example whose
    dialogue is also in a later split (test > validation > train), so test stays the released test set and
    no evaluation dialogue is trained on. Each drop is logged (INFO) with its ids; returns what was dropped.
    Empty dialogues in validation/test are left for the validate stage to reject."""
    dropped: dict[str, dict[str, list[str]]] = {"empty_dialogue": {}, "dialogue_in_later_split": {}}
    out = {}
    for split, ds in dsdict.items():
        dialogues, ids = ds["dialogue"], ds["id"]
        later = set().union(*(dsdict[s]["dialogue"] for s in LATER_SPLITS.get(split, ()) if s in dsdict))
        empty = [i for i, d in enumerate(dialogues) if split == "train" and not d.strip()]
        leaked = [i for i, d in enumerate(dialogues) if d in later and d.strip()]
        if empty:
            dropped["empty_dialogue"][split] = [ids[i] for i in empty]
            log.info(
                "dropped %d samsum example%s with an empty dialogue: ids %s",
                len(empty),
                "" if len(empty) == 1 else "s",
                [ids[i] for i in empty][:MAX_LOGGED_IDS],
            )
        if leaked:
            dropped["dialogue_in_later_split"][split] = [ids[i] for i in leaked]
            log.info(
                "dropped %d samsum %s example%s whose dialogue is also in %s: ids %s",
                len(leaked),
                split,
                "" if len(leaked) == 1 else "s",
                "/".join(LATER_SPLITS[split]),
                [ids[i] for i in leaked][:MAX_LOGGED_IDS],
            )
        drop = set(empty) | set(leaked)
        keep = [i for i in range(len(ds)) if i not in drop]
        out[split] = ds.select(keep, keep_in_memory=True).flatten_indices(keep_in_memory=True) if drop else ds
    return datasets.DatasetDict(out), dropped


def hub_fingerprint(source: HubSource) -> dict:
    fp = {
        "source": "hub",
        "hub_id": source.hub_id,
        "config": source.config,
        "revision": source.revision,
        "commit": None,
    }
    try:
        from huggingface_hub import HfApi

        fp["commit"] = HfApi().dataset_info(source.hub_id, revision=source.revision).sha
    except Exception as err:  # the commit is informative only; the data already loaded
        log.warning("could not resolve the hub commit of %s@%s: %s", source.hub_id, source.revision, err)
    return fp


# ---------------------------------------------------------------- mirror
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mirror_fingerprint(name: str, folder: Path) -> dict:
    files = {}
    for paths in split_files(name, folder).values():
        for path in paths:
            files[path.name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return {"source": "mirror", "folder": Path(folder).name, "files": files}


# ---------------------------------------------------------------- output
def save_atomically(dsdict: datasets.DatasetDict, fingerprint: dict, target: Path) -> None:
    """save_to_disk into a temp folder next to `target`, add SOURCE.json, then swap it into place."""
    with atomic_dir(target) as tmp:
        dsdict.save_to_disk(str(tmp))
        write_json(tmp / SOURCE_FILE, fingerprint, sort_keys=True)
