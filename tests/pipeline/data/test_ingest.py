"""pipeline.data.ingest: mirror or hub -> data/raw/<name> (canonical schema + SOURCE.json), written atomically."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import datasets
import pytest

from pipeline.core.config import MIRROR_ENV
from pipeline.data.ingest import SOURCE_FILE, canonical_from_hub, drop_unusable_samsum, ingest_dataset
from pipeline.data.readers import FEATURES, NER_TAGS, SourceDataError, read_mirror
from tests.fixtures.data import SAMSUM_EMPTY_DIALOGUE_ID

pytestmark = pytest.mark.integration  # the small mirror is cut from the real mirror files


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.exists() else []


def test_mirror_ingest_writes_dataset_and_fingerprint(in_tmp_repo, small_mirror, make_params):
    out = ingest_dataset("emotion", make_params(small_mirror))
    assert out == Path("data/raw/emotion")
    ds = datasets.load_from_disk(str(out))
    assert ds["train"].features == FEATURES["emotion"]
    assert {s: len(d) for s, d in ds.items()} == {"train": 400, "validation": 100, "test": 100}
    source = json.loads((out / SOURCE_FILE).read_text())
    assert source["source"] == "mirror"
    assert source["rows"] == {"train": 400, "validation": 100, "test": 100}
    train = small_mirror / "emotion" / "train.txt"
    assert source["files"]["train.txt"] == {
        "sha256": hashlib.sha256(train.read_bytes()).hexdigest(),
        "size": train.stat().st_size,
    }
    assert hidden_leftovers(out.parent) == []


def test_env_var_overrides_params_mirror_dir(in_tmp_repo, small_mirror, make_params, monkeypatch):
    params = make_params(in_tmp_repo / "no-such-mirror")
    monkeypatch.setenv(MIRROR_ENV, str(small_mirror))
    out = ingest_dataset("multi30k", params)
    assert len(datasets.load_from_disk(str(out))["train"]) == 400


def test_sst2_carve_uses_params_size_and_seed(in_tmp_repo, small_mirror, make_params):
    params = make_params(small_mirror, ingest={"datasets": {"sst2": {"validation_size": 50}}}, common={"seed": 3})
    ds = datasets.load_from_disk(str(ingest_dataset("sst2", params)))
    assert [len(ds[s]) for s in ("train", "validation", "test")] == [1050, 50, 100]


def test_wikitext_logs_the_splits_present(in_tmp_repo, small_mirror, make_params, caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.data.ingest"):
        out = ingest_dataset("wikitext", make_params(small_mirror))
    assert "using the splits present: validation, test" in caplog.text
    assert list(datasets.load_from_disk(str(out))) == ["validation", "test"]


def test_reingest_replaces_output_and_failure_keeps_the_previous_one(in_tmp_repo, small_mirror_copy, make_params):
    params = make_params(small_mirror_copy)
    out = ingest_dataset("emotion", params)
    (small_mirror_copy / "emotion" / "test.txt").write_text("broken line without label\n")
    with pytest.raises(SourceDataError, match=r"test\.txt:1: field 'label'"):
        ingest_dataset("emotion", params)
    assert len(datasets.load_from_disk(str(out))["test"]) == 100  # the previous good output is intact
    assert hidden_leftovers(out.parent) == []


def test_crash_while_saving_leaves_no_half_written_output(in_tmp_repo, small_mirror, make_params, monkeypatch):
    params = make_params(small_mirror)

    def save_half_then_crash(self, path, **kwargs):
        Path(path, "train").mkdir(parents=True)
        Path(path, "train", "data-00000-of-00001.arrow").write_bytes(b"partial")
        raise OSError("disk full")  # a fault we cannot cause for real in a test

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", save_half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        ingest_dataset("emotion", params)
    assert not Path("data/raw/emotion").exists()
    assert hidden_leftovers(Path("data/raw")) == []


def test_no_mirror_and_offline_hub_says_what_to_do(in_tmp_repo, make_params, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    params = make_params(in_tmp_repo / "empty-mirror")
    with pytest.raises(RuntimeError, match=r"could not load 'dair-ai/emotion'.*ingest\.mirror_dir or HT_MIRROR_DIR"):
        ingest_dataset("emotion", params)
    assert not Path("data/raw/emotion").exists()


def test_unknown_dataset(in_tmp_repo, make_params):
    with pytest.raises(ValueError, match="unknown dataset 'imdb'"):
        ingest_dataset("imdb", make_params())


# ---------------------------------------------------------------- hub shapes -> canonical
def hub_sst2() -> datasets.DatasetDict:
    label = datasets.ClassLabel(names=["negative", "positive"])
    feats = datasets.Features({"idx": datasets.Value("int32"), "sentence": datasets.Value("string"), "label": label})
    train = {"idx": list(range(20)), "sentence": [f"s {i} " for i in range(20)], "label": [i % 2 for i in range(20)]}
    val = {"idx": [0, 1], "sentence": ["good ", "bad "], "label": [1, 0]}
    test = {"idx": [0], "sentence": ["hidden"], "label": [-1]}
    return datasets.DatasetDict(
        {
            k: datasets.Dataset.from_dict(v, features=feats)
            for k, v in (("train", train), ("validation", val), ("test", test))
        }
    )


def test_hub_sst2_validation_becomes_test_and_train_is_carved():
    ds = canonical_from_hub("sst2", hub_sst2(), seed=0, validation_size=5)
    assert [len(ds[s]) for s in ("train", "validation", "test")] == [15, 5, 2]
    assert ds["test"]["text"] == ["good", "bad"] and ds["test"]["label"] == [1, 0]
    assert ds["train"].features == FEATURES["sst2"]


def test_hub_conll_drops_pos_and_chunk_and_keeps_tag_order():
    feats = datasets.Features(
        {
            "id": datasets.Value("string"),
            "tokens": datasets.Sequence(datasets.Value("string")),
            "pos_tags": datasets.Sequence(datasets.Value("int32")),
            "chunk_tags": datasets.Sequence(datasets.Value("int32")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=NER_TAGS)),
        }
    )
    row = {
        "id": ["0"],
        "tokens": [["EU", "rejects"]],
        "pos_tags": [[1, 2]],
        "chunk_tags": [[3, 4]],
        "ner_tags": [[3, 0]],
    }
    hub = datasets.DatasetDict(
        {s: datasets.Dataset.from_dict(row, features=feats) for s in ("train", "validation", "test")}
    )
    ds = canonical_from_hub("conll2003", hub, seed=0)
    assert ds["train"].features == FEATURES["conll2003"]
    assert ds["test"][0] == {"tokens": ["EU", "rejects"], "ner_tags": [3, 0]}


@pytest.mark.parametrize(
    "name,row",
    [
        ("emotion", {"text": ["hi"], "label": [2]}),
        ("multi30k", {"en": ["A dog."], "de": ["Ein Hund."]}),
        ("wikitext", {"text": [" = T = \n"]}),
    ],
)
def test_hub_simple_datasets_map_to_canonical_features(name, row):
    hub = datasets.DatasetDict(
        {s: datasets.Dataset.from_dict(row, features=FEATURES[name]) for s in ("train", "validation", "test")}
    )
    ds = canonical_from_hub(name, hub, seed=0)
    assert list(ds) == ["train", "validation", "test"]
    assert ds["validation"].features == FEATURES[name] and ds["validation"][0] == {k: v[0] for k, v in row.items()}


def test_hub_missing_column_is_named():
    hub = datasets.DatasetDict({s: datasets.Dataset.from_dict({"en": ["x"]}) for s in ("train", "validation", "test")})
    with pytest.raises(ValueError, match=r"multi30k, split train: missing column\(s\) \['de'\]"):
        canonical_from_hub("multi30k", hub, seed=0)


# ---------------------------------------------------------------- squad / samsum
def test_mirror_squad_is_split_by_article(in_tmp_repo, small_mirror, make_params):
    target = ingest_dataset("squad", make_params(small_mirror))
    ds = datasets.load_from_disk(str(target))
    titles = {split: set(d["title"]) for split, d in ds.items()}
    assert [len(titles[s]) for s in ("train", "validation", "test")] == [38, 5, 5]  # 48 articles, ~80/10/10
    assert not (
        titles["train"] & titles["validation"]
        or titles["train"] & titles["test"]
        or titles["validation"] & titles["test"]
    )
    assert all(d.features == FEATURES["squad"] for d in ds.values())
    source = json.loads((target / SOURCE_FILE).read_text())
    assert list(source["files"]) == ["dev-v1.1.json.zip"] and source["rows"] == {s: len(d) for s, d in ds.items()}


def test_hub_squad_takes_validation_and_splits_it_as_the_mirror(small_mirror):
    mirror = read_mirror("squad", small_mirror / "squad", seed=42)
    every = datasets.concatenate_datasets(list(mirror.values()))
    hub_features = datasets.Features({"extra": datasets.Value("int32"), **FEATURES["squad"]})
    hub_validation = every.add_column("extra", list(range(len(every)))).cast(hub_features)
    hub = datasets.DatasetDict({"train": hub_validation.select(range(3)), "validation": hub_validation})
    ds = canonical_from_hub("squad", hub, seed=42)
    assert {s: d.to_dict() for s, d in ds.items()} == {s: d.to_dict() for s, d in mirror.items()}


def test_mirror_samsum_drops_the_empty_dialogue_with_a_logged_count(in_tmp_repo, small_mirror, make_params, caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.data.ingest"):
        target = ingest_dataset("samsum", make_params(small_mirror))
    assert f"dropped 1 samsum example with an empty dialogue: ids ['{SAMSUM_EMPTY_DIALOGUE_ID}']" in caplog.text
    ds = datasets.load_from_disk(str(target))
    assert SAMSUM_EMPTY_DIALOGUE_ID not in ds["train"]["id"] and all(d.strip() for d in ds["train"]["dialogue"])
    assert not any("\r" in d for split in ds.values() for d in split["dialogue"])
    source = json.loads((target / SOURCE_FILE).read_text())
    assert source["dropped"]["empty_dialogue"] == {"train": [SAMSUM_EMPTY_DIALOGUE_ID]}
    assert (
        source["rows"]["train"]
        == len(ds["train"])
        == 400 - 1 - len(source["dropped"]["dialogue_in_later_split"].get("train", []))
    )


def samsum_hub(train: list[str], validation: list[str], test: list[str]) -> datasets.DatasetDict:
    def split(name: str, dialogues: list[str]) -> datasets.Dataset:
        n = len(dialogues)
        return datasets.Dataset.from_dict(
            {"id": [f"{name}{i}" for i in range(n)], "dialogue": dialogues, "summary": ["S\r\nT."] * n}
        )

    return datasets.DatasetDict(
        {"train": split("tr", train), "validation": split("va", validation), "test": split("te", test)}
    )


def test_samsum_drops_empty_train_dialogues_and_dialogues_of_a_later_split(caplog):
    hub = canonical_from_hub(
        "samsum", samsum_hub(["A: hi\r\nB: yo", "", "A: x", "A: y"], ["A: x", "A: z"], ["A: z"]), seed=0
    )
    assert hub["train"]["dialogue"][0] == "A: hi\nB: yo" and hub["train"]["summary"][0] == "S\nT."
    with caplog.at_level(logging.INFO, logger="pipeline.data.ingest"):
        ds, dropped = drop_unusable_samsum(hub)
    assert {s: d["id"] for s, d in ds.items()} == {"train": ["tr0", "tr3"], "validation": ["va0"], "test": ["te0"]}
    assert dropped == {
        "empty_dialogue": {"train": ["tr1"]},
        "dialogue_in_later_split": {"train": ["tr2"], "validation": ["va1"]},
    }
    assert "dropped 1 samsum example with an empty dialogue: ids ['tr1']" in caplog.text
    assert "dropped 1 samsum validation example whose dialogue is also in test: ids ['va1']" in caplog.text


def test_samsum_keeps_empty_evaluation_dialogues_for_validate_to_reject():
    ds, dropped = drop_unusable_samsum(canonical_from_hub("samsum", samsum_hub(["A: a"], ["A: b"], [" "]), seed=0))
    assert ds["test"]["dialogue"] == [" "] and dropped["empty_dialogue"] == {}
