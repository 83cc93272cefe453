"""Prepare task data (per-split size caps) and the pretraining corpus from validated raw datasets.

- prepare_task: data/raw/<dataset> -> data/prepared/<task> (DatasetDict train/validation/test, canonical
  columns) + meta.json. Caps are sampled deterministically with common.seed.
- build_corpus: WikiText-2 (every split in data/raw/wikitext) + the unlabeled text of the task datasets'
  TRAIN splits -> data/corpus/{train,heldout}.txt (one document per line) + stats.json. Task validation
  and test text never enters the corpus, not even as a duplicate that also occurs in a train split. The corpus
  takes the tasks of CORPUS_KINDS only (SQuAD/SAMSum stay out: the pretraining data did not change with them).

Both refuse to run on a dataset whose validation report is missing or failed.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, load_from_disk

from pipeline.core import paths
from pipeline.core.config import TASK_SPECS, TASKS, Params
from pipeline.core.io import atomic_dir, write_json
from pipeline.data.corpus import CORPUS_HELDOUT, CORPUS_STATS, CORPUS_TRAIN
from pipeline.data.readers import FEATURES
from pipeline.data.task_data import cap_split

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
# The canonical columns of each raw dataset (the ingest stage's schema); prepared data keeps exactly these.
CANONICAL_COLUMNS: dict[str, tuple[str, ...]] = {name: tuple(features) for name, features in FEATURES.items()}
META_FILE = "meta.json"
# the task kinds whose train text enters the pretraining corpus (and whose evaluation text is blocked from it)
CORPUS_KINDS = ("classification", "ner", "translation")
CORPUS_TASKS: tuple[str, ...] = tuple(task for task in TASKS if TASK_SPECS[task].kind in CORPUS_KINDS)
CORPUS_DATASETS: tuple[str, ...] = ("wikitext", *dict.fromkeys(TASK_SPECS[task].dataset for task in CORPUS_TASKS))
# A WikiText article starts with a level-1 heading " = Title = " (sections are " = = Section = = ").
_WIKI_ARTICLE = re.compile(r"= [^=].*[^=] =|= [^=] =")


class PrepareError(RuntimeError):
    """An input of the prepare stage is missing, unvalidated or malformed; the message says what to run."""


# ---------------------------------------------------------------- inputs
def require_validated(dataset: str) -> dict:
    """The dataset's validation report; raises unless it exists and says success: true."""
    report = paths.validation_report(dataset)
    hint = f"python -m flows.data validate {dataset} (or dvc repro validate@{dataset})"
    if not report.exists():
        raise PrepareError(f"{report} not found: run validate first ({hint})")
    try:
        result = json.loads(report.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PrepareError(f"{report} is not a readable validation report ({err}); rerun {hint}") from None
    if not isinstance(result, dict) or result.get("success") is not True:
        got = result.get("success") if isinstance(result, dict) else type(result).__name__
        raise PrepareError(
            f"{report}: validation failed (success={got!r}); see the report and its Data Docs, fix the data or "
            f"the thresholds in params.yaml validate.datasets.{dataset}, then rerun {hint}"
        )
    return result


def load_raw(dataset: str, splits: Iterable[str] | None = None) -> DatasetDict:
    """data/raw/<dataset> with its canonical columns checked (all three splits unless `splits` says otherwise)."""
    folder = paths.raw_dir(dataset)
    if not folder.exists():
        raise PrepareError(f"{folder} not found: run ingest first (python -m flows.data ingest {dataset})")
    try:
        data = load_from_disk(str(folder))
    except Exception as err:  # datasets raises several types for a broken folder
        raise PrepareError(f"{folder} is not a saved DatasetDict ({err}); rerun ingest for {dataset}") from None
    if not isinstance(data, DatasetDict):
        raise PrepareError(f"{folder} holds a single Dataset, expected a DatasetDict of splits; rerun ingest")
    missing_splits = [s for s in (SPLITS if splits is None else splits) if s not in data]
    if missing_splits or not len(data):
        raise PrepareError(f"{folder}: missing split(s) {missing_splits} (has {list(data)}); rerun ingest")
    for split, ds in data.items():
        missing = [c for c in CANONICAL_COLUMNS[dataset] if c not in ds.column_names]
        if missing:
            raise PrepareError(
                f"{folder} split {split!r}: missing column(s) {missing} (has {ds.column_names}); rerun ingest"
            )
        for column in CANONICAL_COLUMNS[dataset]:
            if ds.features[column] != FEATURES[dataset][column]:
                raise PrepareError(
                    f"{folder} split {split!r}: column {column!r} has type {ds.features[column]}, "
                    f"expected {FEATURES[dataset][column]}; rerun ingest"
                )
    return data


# ---------------------------------------------------------------- task data
def label_names(ds: Dataset) -> list[str] | None:
    """Class or tag names of a classification/NER dataset (None for translation)."""
    for column in ("label", "ner_tags"):
        feature = ds.features.get(column)
        feature = getattr(feature, "feature", feature)  # List(ClassLabel) for tags
        if isinstance(feature, ClassLabel):
            return list(feature.names)
    return None


def prepare_task(task: str, params: Params) -> Path:
    """Write data/prepared/<task> (train/validation/test with canonical columns) and its meta.json."""
    if task not in TASK_SPECS:
        raise PrepareError(f"unknown task {task!r}; tasks are {list(TASKS)}")
    spec = TASK_SPECS[task]
    dataset, kind = spec.dataset, spec.kind
    require_validated(dataset)
    raw = load_raw(dataset)
    caps = params.prepare.tasks[task]
    seed = params.common.seed
    columns = list(CANONICAL_COLUMNS[dataset])
    prepared = DatasetDict(
        {split: cap_split(raw[split].select_columns(columns), getattr(caps, f"max_{split}"), seed) for split in SPLITS}
    )
    sizes = {split: len(ds) for split, ds in prepared.items()}
    empty = [split for split, n in sizes.items() if n == 0]
    if empty:
        raise PrepareError(f"data/raw/{dataset}: split(s) {empty} are empty; rerun ingest for {dataset}")
    meta = {
        "task": task,
        "dataset": dataset,
        "kind": kind,
        "columns": columns,
        "label_names": label_names(prepared["train"]),
        "sizes": sizes,
        "raw_sizes": {split: len(raw[split]) for split in SPLITS},
        "caps": caps.model_dump(),
        "seed": seed,
    }
    target = paths.prepared_dir(task)
    with atomic_dir(target) as tmp:
        prepared.save_to_disk(str(tmp))
        write_json(tmp / META_FILE, meta)
    log.info(
        "prepared %s (%s from %s): %s",
        task,
        kind,
        dataset,
        ", ".join(f"{s} {sizes[s]}/{meta['raw_sizes'][s]}" for s in SPLITS),
    )
    return target


def load_prepared_meta(task: str) -> dict:
    path = paths.prepared_dir(task) / META_FILE
    if not path.exists():
        raise PrepareError(f"{path} not found: run prepare first (python -m flows.data prepare {task})")
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- pretraining corpus
def clean_line(text: str) -> str:
    """One line of corpus text: whitespace runs (newlines included) collapsed to one space, ends stripped."""
    return " ".join(text.split())


def _key(text: str) -> str:
    return text.casefold()


def task_texts(dataset: str, split: Dataset) -> Iterator[tuple[str, str]]:
    """(source, text) pairs of the unlabeled text in one split of a task dataset."""
    if dataset == "conll2003":
        for tokens in split["tokens"]:
            yield dataset, " ".join(tokens)
    elif dataset == "multi30k":
        for lang in ("en", "de"):
            for text in split[lang]:
                yield f"multi30k_{lang}", text
    else:
        for text in split["text"]:
            yield dataset, text


def wikitext_articles(data: DatasetDict) -> list[list[str]]:
    """WikiText paragraphs grouped by article (an article starts at a ' = Title = ' line), every split in order."""
    articles: list[list[str]] = []
    for split in data:
        current: list[str] = []
        for raw in data[split]["text"]:
            line = clean_line(raw)
            if _WIKI_ARTICLE.fullmatch(line) and current:
                articles.append(current)
                current = []
            if line:
                current.append(line)
        if current:
            articles.append(current)
    return articles


def evaluation_keys() -> set[str]:
    """Keys of every validation/test text of the task datasets: none of these may enter the corpus."""
    keys: set[str] = set()
    for task in CORPUS_TASKS:
        dataset = TASK_SPECS[task].dataset
        raw = load_raw(dataset)
        for split in ("validation", "test"):
            keys.update(_key(clean_line(text)) for _, text in task_texts(dataset, raw[split]))
    keys.discard("")
    return keys


def _collect_groups(min_chars: int) -> tuple[dict[str, list[list[str]]], dict[str, dict], set[str]]:
    """Corpus groups per source (a group = lines that go to the same side of the held-out split)."""
    sources: dict[str, list[list[str]]] = {"wikitext": wikitext_articles(load_raw("wikitext", splits=()))}
    for task in CORPUS_TASKS:
        dataset = TASK_SPECS[task].dataset
        for source, text in task_texts(dataset, load_raw(dataset)["train"]):
            sources.setdefault(source, []).append([clean_line(text)])
    blocked = evaluation_keys()
    seen: set[str] = set()
    stats: dict[str, dict] = {}
    kept_sources: dict[str, list[list[str]]] = {}
    for source, groups in sources.items():
        counts = defaultdict(int)
        kept_groups = []
        for group in groups:
            kept = []
            for line in group:
                counts["candidates"] += 1
                key = _key(line)
                if len(line) < max(min_chars, 1):
                    counts["dropped_short"] += 1
                elif key in blocked:
                    counts["dropped_evaluation_text"] += 1
                elif key in seen:
                    counts["dropped_duplicate"] += 1
                else:
                    seen.add(key)
                    kept.append(line)
            if kept:
                kept_groups.append(kept)
        kept_sources[source] = kept_groups
        stats[source] = {
            k: counts[k] for k in ("candidates", "dropped_short", "dropped_duplicate", "dropped_evaluation_text")
        }
    return kept_sources, stats, blocked


def split_heldout(groups: list[list[str]], fraction: float, rng: random.Random) -> tuple[list[str], list[str]]:
    """Whole groups to held-out until it holds >= fraction of the lines; both sides non-empty when possible."""
    order = list(range(len(groups)))
    rng.shuffle(order)
    total = sum(len(g) for g in groups)
    train: list[str] = []
    heldout: list[str] = []
    taken = 0
    for rank, i in enumerate(order):
        last = rank == len(order) - 1
        if (taken < fraction * total or not heldout) and not (last and not train):
            heldout.extend(groups[i])
            taken += len(groups[i])
        else:
            train.extend(groups[i])
    return train, heldout


def build_corpus(params: Params) -> Path:
    """Write data/corpus/{train,heldout}.txt and stats.json; returns data/corpus."""
    for dataset in CORPUS_DATASETS:
        require_validated(dataset)
    cfg = params.prepare.corpus
    seed = params.common.seed
    sources, stats, blocked = _collect_groups(cfg.min_chars)
    train: list[str] = []
    heldout: list[str] = []
    for source, groups in sources.items():
        if not groups:
            raise PrepareError(
                f"corpus source {source!r} has no text left after filtering (min_chars "
                f"{cfg.min_chars}): check data/raw and prepare.corpus.min_chars"
            )
        # one generator per source so adding a source does not reshuffle the others
        src_train, src_heldout = split_heldout(groups, cfg.heldout_fraction, random.Random(f"{seed}:{source}"))
        train.extend(src_train)
        heldout.extend(src_heldout)
        stats[source].update(
            {
                "groups": len(groups),
                "train_lines": len(src_train),
                "heldout_lines": len(src_heldout),
                "chars": sum(len(line) for line in src_train) + sum(len(line) for line in src_heldout),
            }
        )
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(heldout)
    assert_no_leak(train + heldout, blocked)
    summary = {
        "seed": seed,
        "min_chars": cfg.min_chars,
        "heldout_fraction": cfg.heldout_fraction,
        "train_lines": len(train),
        "heldout_lines": len(heldout),
        "train_chars": sum(map(len, train)),
        "heldout_chars": sum(map(len, heldout)),
        "sources": stats,
    }
    target = paths.CORPUS
    with atomic_dir(target) as tmp:
        _write_lines(tmp / CORPUS_TRAIN, train)
        _write_lines(tmp / CORPUS_HELDOUT, heldout)
        write_json(tmp / CORPUS_STATS, summary)
    log.info(
        "corpus: %d train / %d held-out lines (%s)",
        len(train),
        len(heldout),
        ", ".join(f"{s} {v['train_lines'] + v['heldout_lines']}" for s, v in stats.items()),
    )
    return target


def assert_no_leak(lines: Iterable[str], blocked: set[str]) -> None:
    """Raise if any corpus line is a task validation/test text."""
    leaked = [line for line in lines if _key(line) in blocked]
    if leaked:
        raise PrepareError(f"{len(leaked)} corpus line(s) are task validation/test texts, e.g. {leaked[0][:80]!r}")


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
