"""prepare_task (per-split caps) and build_corpus (pretraining corpus) on tiny synthetic raw datasets,
plus one integration test of the corpus' leakage guard on the real mirror."""

from __future__ import annotations

import copy
import json
import random
import re
import shutil
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, Value, disable_progress_bars, load_from_disk

from pipeline.core import paths
from pipeline.core.config import parse_params
from pipeline.data.corpus import CORPUS_HELDOUT, CORPUS_STATS, CORPUS_TRAIN, read_corpus
from pipeline.data.prepare import (
    CORPUS_DATASETS,
    CORPUS_TASKS,
    META_FILE,
    PrepareError,
    build_corpus,
    prepare_task,
    split_heldout,
)
from pipeline.data.readers import FEATURES

disable_progress_bars()

# A text that occurs in a task's train split AND in its test split: it must never enter the corpus.
SHARED_EMOTION = "i feel this sentence appears in train and in test"
SHARED_MULTI30K_DE = "Ein Satz, der im Training und im Test vorkommt."


def _rows(dataset: str, split: str, n: int) -> dict[str, list]:
    """n distinct rows of a canonical dataset; texts name their dataset, split and index."""
    tag = f"{dataset} {split} row"
    if dataset in ("emotion", "sst2"):
        return {
            "text": [f"{tag} {i} says something long enough" for i in range(n)],
            "label": [i % (6 if dataset == "emotion" else 2) for i in range(n)],
        }
    if dataset == "conll2003":
        return {
            "tokens": [["Peter", "visits", "Berlin", split, str(i), "today"] for i in range(n)],
            "ner_tags": [[1, 0, 5, 0, 0, 0] for _ in range(n)],
        }
    if dataset == "multi30k":
        return {
            "en": [f"A dog runs across the {split} field number {i}." for i in range(n)],
            "de": [f"Ein Hund läuft über das {split} Feld Nummer {i} (Größe)." for i in range(n)],
        }
    if dataset == "squad":  # 4 questions per article; answers index their context
        contexts = [f"The {split} article {i // 4} says that the answer is {i}." for i in range(n)]
        return {
            "id": [f"{split}-q{i}" for i in range(n)],
            "title": [f"{split}_article_{i // 4}" for i in range(n)],
            "context": contexts,
            "question": [f"What is answer {i} of the {split} article?" for i in range(n)],
            "answers": [{"text": [str(i)], "answer_start": [c.rindex(str(i))]} for i, c in enumerate(contexts)],
        }
    if dataset == "samsum":
        return {
            "id": [f"{split}-{i}" for i in range(n)],
            "dialogue": [
                f"Ann: Shall we meet at {i} in the {split} cafe?\nBob: Sure, see you there." for i in range(n)
            ],
            "summary": [f"Ann and Bob meet at {i}." for i in range(n)],
        }
    raise ValueError(dataset)


def _wikitext(split: str) -> dict[str, list]:
    lines = []
    for article in range(4):
        lines += ["", f" = {split.title()} Article {article} = \n", ""]
        for para in range(3):
            lines.append(f" Paragraph {para} of {split} article {article} , with enough words to keep . \n")
        lines += ["", f" = = Sec {article} = = \n", ""]
    lines.append(" Short \n")  # shorter than min_chars: dropped
    return {"text": lines}


def write_raw(root: Path, sizes: dict[str, int] | None = None) -> None:
    """data/raw/<dataset> for every dataset (canonical features) + a passing validation report each."""
    sizes = {"train": 40, "validation": 12, "test": 10, **(sizes or {})}
    for dataset, features in FEATURES.items():
        if dataset == "wikitext":
            splits = {s: _wikitext(s) for s in ("validation", "test")}
        else:
            splits = {s: _rows(dataset, s, n) for s, n in sizes.items()}
        if dataset == "emotion":
            splits["train"]["text"][3] = SHARED_EMOTION
            splits["test"]["text"][0] = SHARED_EMOTION
            splits["train"]["text"][5] = splits["train"]["text"][4]  # a duplicate inside train
            splits["train"]["text"][6] = "   "  # blank
        if dataset == "multi30k":
            splits["train"]["de"][2] = SHARED_MULTI30K_DE
            splits["validation"]["de"][1] = SHARED_MULTI30K_DE
        dsdict = DatasetDict({s: Dataset.from_dict(cols, features=features) for s, cols in splits.items()})
        dsdict.save_to_disk(str(root / paths.raw_dir(dataset)))
        write_report(root, dataset, True)


def write_report(root: Path, dataset: str, success: bool) -> None:
    report = root / paths.validation_report(dataset)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps({"dataset": dataset, "success": success}))


@pytest.fixture
def raw_repo(in_tmp_repo) -> Path:
    write_raw(in_tmp_repo)
    return in_tmp_repo


def make_params(default_params_dict, **changes):
    raw = copy.deepcopy(default_params_dict)
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return parse_params(raw)


def no_temp_leftovers(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


# ---------------------------------------------------------------- prepare_task
def test_prepare_refuses_without_a_passing_validation_report(raw_repo, default_params_dict):
    params = make_params(default_params_dict)
    paths.validation_report("emotion").unlink()
    with pytest.raises(PrepareError, match="run validate first"):
        prepare_task("emotion", params)
    write_report(raw_repo, "emotion", False)
    with pytest.raises(PrepareError, match="validation failed"):
        prepare_task("emotion", params)
    paths.validation_report("emotion").write_text("{not json")
    with pytest.raises(PrepareError, match="rerun"):
        prepare_task("emotion", params)
    assert not paths.prepared_dir("emotion").exists()


def test_prepare_refuses_without_raw_data(in_tmp_repo, default_params_dict):
    write_report(in_tmp_repo, "sst2", True)
    with pytest.raises(PrepareError, match="run ingest first"):
        prepare_task("sst2", make_params(default_params_dict))


def test_prepare_caps_splits_deterministically(raw_repo, default_params_dict):
    caps = {"max_train": 15, "max_validation": 5, "max_test": None}
    params = make_params(default_params_dict, **{"prepare.tasks.emotion": caps})
    raw_files = sorted(paths.RAW.rglob("*"))
    out = prepare_task("emotion", params)
    assert sorted(paths.RAW.rglob("*")) == raw_files, "no cache files written into the ingest stage's output"
    assert out == paths.prepared_dir("emotion")
    first = load_from_disk(str(out))
    assert {s: len(first[s]) for s in first} == {"train": 15, "validation": 5, "test": 10}
    raw = load_from_disk(str(paths.raw_dir("emotion")))
    assert set(first["train"]["text"]) <= set(raw["train"]["text"])
    assert first["test"]["text"] == raw["test"]["text"]  # null cap: every row, original order
    assert first["train"].features == FEATURES["emotion"]

    again = load_from_disk(str(prepare_task("emotion", params)))
    assert again["train"]["text"] == first["train"]["text"]  # same seed, same sample

    other_seed = make_params(default_params_dict, **{"prepare.tasks.emotion": caps, "common.seed": 7})
    reseeded = load_from_disk(str(prepare_task("emotion", other_seed)))
    assert reseeded["train"]["text"] != first["train"]["text"]
    assert no_temp_leftovers(paths.PREPARED)


def test_prepare_writes_meta_and_keeps_canonical_columns(raw_repo, default_params_dict):
    params = make_params(default_params_dict, **{"prepare.tasks.conll2003.max_train": 8})
    out = prepare_task("conll2003", params)
    data = load_from_disk(str(out))
    assert data["train"].column_names == ["tokens", "ner_tags"]
    assert data["validation"].features == FEATURES["conll2003"]
    meta = json.loads((out / META_FILE).read_text())
    assert meta["task"] == "conll2003" and meta["kind"] == "ner"
    assert meta["label_names"] == FEATURES["conll2003"]["ner_tags"].feature.names
    assert meta["sizes"] == {"train": 8, "validation": 12, "test": 10}
    assert meta["raw_sizes"]["train"] == 40 and meta["seed"] == 42

    translation = json.loads((prepare_task("multi30k", params) / META_FILE).read_text())
    assert translation["kind"] == "translation" and translation["label_names"] is None
    assert translation["columns"] == ["en", "de"]


def test_prepare_drops_extra_columns_and_rejects_wrong_types(raw_repo, default_params_dict):
    params = make_params(default_params_dict)
    raw = load_from_disk(str(paths.raw_dir("sst2")))
    raw.map(lambda row: {"extra": 1}).save_to_disk("extra")
    raw.cast_column("label", Value("int64")).save_to_disk("int_labels")
    shutil.rmtree(paths.raw_dir("sst2"))
    shutil.move("extra", paths.raw_dir("sst2"))
    assert load_from_disk(str(prepare_task("sst2", params)))["train"].column_names == ["text", "label"]

    shutil.rmtree(paths.raw_dir("sst2"))
    shutil.move("int_labels", paths.raw_dir("sst2"))
    with pytest.raises(PrepareError, match="column 'label' has type"):
        prepare_task("sst2", params)


def test_prepare_failure_mid_write_keeps_the_previous_output(raw_repo, default_params_dict, monkeypatch):
    params = make_params(default_params_dict)
    out = prepare_task("emotion", params)
    before = sorted(p.name for p in out.rglob("*"))

    def crash(self, *args, **kwargs):  # a crash while writing (disk full, kill) cannot be caused for real here
        Path(args[0], "half-written").write_text("x")
        raise OSError("disk full")

    monkeypatch.setattr(DatasetDict, "save_to_disk", crash)
    with pytest.raises(OSError, match="disk full"):
        prepare_task("emotion", params)
    assert sorted(p.name for p in out.rglob("*")) == before
    assert no_temp_leftovers(paths.PREPARED)


# ---------------------------------------------------------------- build_corpus
def _corpus_lines(name: str) -> list[str]:
    return (paths.CORPUS / name).read_text(encoding="utf-8").splitlines()


def test_corpus_sources_filters_and_leakage_guard(raw_repo, default_params_dict):
    params = make_params(default_params_dict, **{"prepare.corpus.heldout_fraction": 0.2})
    assert build_corpus(params) == paths.CORPUS
    train, heldout = _corpus_lines(CORPUS_TRAIN), _corpus_lines(CORPUS_HELDOUT)
    corpus = train + heldout
    assert heldout and train and not set(train) & set(heldout)
    assert len(corpus) == len(set(corpus)), "corpus lines are de-duplicated"
    assert all(line == line.strip() and len(line) >= 20 for line in corpus)

    # sources: wikitext (both splits), task TRAIN text, conll tokens joined, multi30k en and de
    assert "Paragraph 1 of validation article 2 , with enough words to keep ." in corpus
    assert "Paragraph 0 of test article 3 , with enough words to keep ." in corpus
    assert "emotion train row 7 says something long enough" in corpus
    assert "Peter visits Berlin train 4 today" in corpus
    assert "A dog runs across the train field number 9." in corpus
    assert "Ein Hund läuft über das train Feld Nummer 9 (Größe)." in corpus
    assert "Short" not in corpus and "= = Sec 1 = =" not in corpus  # shorter than min_chars

    # leakage guard: no validation/test text of any task, even when it also occurs in a train split
    task_lines = [line for line in corpus if not line.startswith(("Paragraph", "= "))]
    assert task_lines and all(" train " in line for line in task_lines)
    assert SHARED_EMOTION not in corpus and SHARED_MULTI30K_DE not in corpus

    stats = json.loads((paths.CORPUS / CORPUS_STATS).read_text())
    assert stats["train_lines"] == len(train) and stats["heldout_lines"] == len(heldout)
    assert stats["sources"]["emotion"]["dropped_evaluation_text"] == 1
    assert stats["sources"]["emotion"]["dropped_duplicate"] == 1
    assert stats["sources"]["multi30k_de"]["dropped_evaluation_text"] == 1
    assert sum(s["train_lines"] + s["heldout_lines"] for s in stats["sources"].values()) == len(corpus)
    # every source is represented in the held-out slice; wikitext goes there by whole articles
    assert all(s["heldout_lines"] > 0 for s in stats["sources"].values())
    article = re.compile(r"Paragraph \d of (\w+ article \d)")
    held = {article.match(line)[1] for line in heldout if article.match(line)}
    trained = {article.match(line)[1] for line in train if article.match(line)}
    assert held and trained and not held & trained


def test_corpus_is_deterministic_and_seeded(raw_repo, default_params_dict):
    params = make_params(default_params_dict)
    build_corpus(params)
    first = (_corpus_lines(CORPUS_TRAIN), _corpus_lines(CORPUS_HELDOUT))
    build_corpus(params)
    assert (_corpus_lines(CORPUS_TRAIN), _corpus_lines(CORPUS_HELDOUT)) == first
    build_corpus(make_params(default_params_dict, **{"common.seed": 1}))
    assert _corpus_lines(CORPUS_TRAIN) != first[0]
    assert sorted(_corpus_lines(CORPUS_TRAIN) + _corpus_lines(CORPUS_HELDOUT)) == sorted(first[0] + first[1])
    assert no_temp_leftovers(paths.DATA)


def test_read_corpus_gives_the_built_corpus_back(raw_repo, default_params_dict):
    build_corpus(make_params(default_params_dict))
    assert read_corpus("train") == _corpus_lines(CORPUS_TRAIN)
    assert read_corpus("heldout") == _corpus_lines(CORPUS_HELDOUT)


def test_corpus_refuses_unvalidated_wikitext(raw_repo, default_params_dict):
    write_report(raw_repo, "wikitext", False)
    with pytest.raises(PrepareError, match="wikitext.*validation failed"):
        build_corpus(make_params(default_params_dict))
    assert not paths.CORPUS.exists()


def test_split_heldout_keeps_groups_whole_and_both_sides_non_empty():
    groups = [[f"g{g} l{i}" for i in range(g + 1)] for g in range(10)]
    train, heldout = split_heldout(groups, 0.1, random.Random(0))
    assert train and heldout and len(train) + len(heldout) == 55
    for group in groups:
        assert set(group) <= set(train) or set(group) <= set(heldout)
    assert split_heldout([["only"]], 0.5, random.Random(0)) == (["only"], [])


# ---------------------------------------------------------------- real mirror
@pytest.mark.integration
def test_real_corpus_has_no_task_evaluation_text(in_tmp_repo, default_params_dict, mirror_dir, monkeypatch):
    """Ingest the real mirror, then check the corpus holds no validation/test text of any task (~30 s)."""
    from pipeline.data.ingest import ingest_dataset
    from pipeline.data.prepare import clean_line, task_texts

    monkeypatch.setenv("HT_MIRROR_DIR", str(mirror_dir))
    params = make_params(default_params_dict)
    for dataset in CORPUS_DATASETS:
        ingest_dataset(dataset, params)
        write_report(in_tmp_repo, dataset, True)  # validation itself is tested in tests/pipeline/test_validate.py
    build_corpus(params)
    corpus = set(_corpus_lines(CORPUS_TRAIN)) | set(_corpus_lines(CORPUS_HELDOUT))
    stats = json.loads((paths.CORPUS / CORPUS_STATS).read_text())
    assert stats["sources"]["wikitext"]["heldout_lines"] > 0
    assert len(corpus) > 100_000
    casefolded = {line.casefold() for line in corpus}
    for task in CORPUS_TASKS:
        raw = load_from_disk(str(paths.raw_dir(task)))
        for split in ("validation", "test"):
            texts = {clean_line(t).casefold() for _, t in task_texts(task, raw[split])}
            assert not texts & casefolded, f"{task} {split} text leaked into the corpus"


@pytest.mark.parametrize("task", ["squad", "samsum"])
def test_qa_and_summarization_caps_sample_whole_examples_deterministically(raw_repo, default_params_dict, task):
    caps = {"max_train": 10, "max_validation": 5, "max_test": None}
    params = make_params(default_params_dict, **{f"prepare.tasks.{task}": caps})
    prepare_task(task, params)
    first = load_from_disk(str(paths.prepared_dir(task)))
    meta = json.loads((paths.prepared_dir(task) / META_FILE).read_text())
    assert meta["kind"] == {"squad": "qa", "samsum": "summarization"}[task]
    assert meta["sizes"] == {"train": 10, "validation": 5, "test": 10} and meta["label_names"] is None
    assert first["train"].features == FEATURES[task]
    raw = load_from_disk(str(paths.raw_dir(task)))
    rows = {r["id"]: r for r in raw["train"]}
    assert all(rows[r["id"]] == r for r in first["train"])  # whole examples (answers stay with their question)
    prepare_task(task, params)
    assert load_from_disk(str(paths.prepared_dir(task)))["train"]["id"] == first["train"]["id"]
    prepare_task(task, make_params(default_params_dict, **{f"prepare.tasks.{task}": caps, "common.seed": 1}))
    assert load_from_disk(str(paths.prepared_dir(task)))["train"]["id"] != first["train"]["id"]


def test_corpus_leaves_out_qa_and_summarization_data(raw_repo, default_params_dict):
    assert set(CORPUS_TASKS) == {"emotion", "sst2", "conll2003", "multi30k"}
    paths.validation_report("squad").unlink()  # not a corpus input: its report is not needed
    build_corpus(make_params(default_params_dict))
    stats = json.loads((paths.CORPUS / CORPUS_STATS).read_text())
    assert not {"squad", "samsum"} & set(stats["sources"])
    corpus = " ".join(_corpus_lines(CORPUS_TRAIN) + _corpus_lines(CORPUS_HELDOUT))
    assert "Ann:" not in corpus and "answer is" not in corpus
