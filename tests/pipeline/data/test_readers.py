"""pipeline.data.readers: original mirror formats -> canonical schema, and specific errors for broken files."""

from __future__ import annotations

import codecs
import gzip
import json
import logging
import zipfile
from pathlib import Path

import datasets
import pytest

from pipeline.data.readers import (
    FEATURES,
    MIRROR_FOLDERS,
    NER_TAGS,
    SourceDataError,
    carve_validation,
    read_mirror,
    split_by_article,
    split_files,
    strip_bom,
)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8") if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def emotion_folder(root: Path, train: str = "i feel good;joy\ni am sad;sadness\n") -> Path:
    folder = root / "emotion"
    write(folder / "train.txt", train)
    write(folder / "val.txt", "so scared;fear\n")
    write(folder / "test.txt", "wow; really;surprise\n")
    return folder


CONLL = (
    "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n"
    "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n\n"
)


def conll_folder(root: Path, train: str = CONLL) -> Path:
    folder = root / "conll2003"
    write(folder / "train.txt", train)
    write(folder / "valid.txt", "BRUSSELS NNP B-NP B-LOC\n\n")
    write(folder / "test.txt", "-DOCSTART- -X- -X- O\n\nJapan NNP B-NP B-LOC\n")
    return folder


def multi30k_folder(root: Path, train_de: str = "Ein Hund.\nZwei Katzen.\n") -> Path:
    folder = root / "multi30k"
    write(folder / "train.en.gz", "A dog.\nTwo cats.\n")
    write(folder / "train.de.gz", train_de)
    for stem in ("val", "test_2016_flickr"):
        write(folder / f"{stem}.en.gz", "A bird.\n")
        write(folder / f"{stem}.de.gz", "Ein Vogel.\n")
    return folder


def sst2_folder(root: Path, n_train: int = 10, header: str = "sentence\tlabel") -> Path:
    folder = root / "sst2"
    rows = "".join(f"sentence number {i} \t{i % 2}\n" for i in range(n_train))
    write(folder / "train.tsv", f"{header}\n{rows}")
    write(folder / "dev.tsv", "sentence\tlabel\na fine film \t1\n")
    write(folder / "test.tsv", "index\tsentence\n0\tunlabeled .\n")
    return folder


# ---------------------------------------------------------------- canonical output
def test_mirror_folders_name_every_dataset():
    assert MIRROR_FOLDERS["wikitext"] == "wikitext-2"
    assert (
        set(MIRROR_FOLDERS)
        == set(FEATURES)
        == {"emotion", "sst2", "conll2003", "multi30k", "wikitext", "squad", "samsum"}
    )


def test_emotion_labels_use_hub_order_and_last_semicolon(tmp_path):
    ds = read_mirror("emotion", emotion_folder(tmp_path))
    assert list(ds) == ["train", "validation", "test"]
    assert ds["train"].features == FEATURES["emotion"]
    assert ds["train"]["label"] == [1, 0]  # joy=1, sadness=0
    assert ds["test"][0] == {"text": "wow; really", "label": 5}


def test_conll_sentences_skip_docstart_and_keep_ner_only(tmp_path):
    ds = read_mirror("conll2003", conll_folder(tmp_path))
    assert ds["train"]["tokens"] == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert ds["train"]["ner_tags"] == [[NER_TAGS.index("B-ORG"), 0], [1, 2]]
    assert ds["test"]["tokens"] == [["Japan"]]  # last sentence without a closing blank line still counts
    assert ds["train"].features == FEATURES["conll2003"]


def test_multi30k_pairs_lines(tmp_path):
    ds = read_mirror("multi30k", multi30k_folder(tmp_path))
    assert ds["train"][1] == {"en": "Two cats.", "de": "Zwei Katzen."}
    assert len(ds["validation"]) == len(ds["test"]) == 1


def test_wikitext_matches_hf_rows_and_uses_splits_present(tmp_path):
    folder = tmp_path / "wikitext-2"
    write(folder / "wiki.valid.raw", " \n = Title = \n \n Some text . \n")
    write(folder / "wiki.test.raw", " = T = \n")
    ds = read_mirror("wikitext", folder)
    assert list(ds) == ["validation", "test"]
    assert ds["validation"]["text"] == ["", " = Title = \n", "", " Some text . \n"]


def test_sst2_dev_becomes_test_and_validation_is_carved_by_seed(tmp_path):
    folder = sst2_folder(tmp_path, n_train=10)
    ds = read_mirror("sst2", folder, seed=1, validation_size=3)
    assert [len(ds[s]) for s in ("train", "validation", "test")] == [7, 3, 1]
    assert ds["test"][0] == {"text": "a fine film", "label": 1}  # trailing space stripped
    assert set(ds["train"]["text"]).isdisjoint(ds["validation"]["text"])
    again = read_mirror("sst2", folder, seed=1, validation_size=3)
    other = read_mirror("sst2", folder, seed=2, validation_size=3)
    assert again["validation"]["text"] == ds["validation"]["text"]
    assert other["validation"]["text"] != ds["validation"]["text"]


def test_carve_validation_rejects_impossible_size(tmp_path):
    ds = read_mirror("sst2", sst2_folder(tmp_path, n_train=10), validation_size=3)["train"]
    with pytest.raises(ValueError, match="validation_size"):
        carve_validation(ds, size=len(ds), seed=0)


def test_mirror_root_is_accepted_for_the_dataset_folder(tmp_path):
    emotion_folder(tmp_path)
    assert len(read_mirror("emotion", tmp_path)["train"]) == 2


# ---------------------------------------------------------------- byte-order mark
BOM = codecs.BOM_UTF8


def test_strip_bom_removes_a_leading_bom_only_and_logs_the_file(caplog):
    path = Path("some/train.txt")
    with caplog.at_level(logging.INFO, logger="pipeline.data.readers"):
        assert strip_bom(BOM + b"i feel;joy\n", path) == b"i feel;joy\n"
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "some/train.txt" in caplog.text and "byte-order mark" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.data.readers"):
        assert strip_bom(b"i feel;joy\n", path) == b"i feel;joy\n"
        assert strip_bom(b"a\n" + BOM + b"b\n", path) == b"a\n" + BOM + b"b\n"  # only at the start of the file
    assert caplog.records == []


def _prepend_bom(path: Path) -> None:
    data = path.read_bytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(BOM + gzip.decompress(data)))
    else:
        path.write_bytes(BOM + data)


def _wikitext_folder(root: Path) -> Path:
    folder = root / "wikitext-2"
    write(folder / "wiki.valid.raw", " = Title = \n")
    write(folder / "wiki.test.raw", " = T = \n")
    return folder


# every reader: (dataset, folder builder, file given a BOM, split, column, first value without the BOM)
BOM_CASES = [
    ("emotion", emotion_folder, "train.txt", "train", "text", "i feel good"),
    ("sst2", sst2_folder, "dev.tsv", "test", "text", "a fine film"),  # the BOM sits before the header
    ("conll2003", conll_folder, "train.txt", "train", "tokens", ["EU", "rejects"]),  # before -DOCSTART-
    ("conll2003", conll_folder, "valid.txt", "validation", "tokens", ["BRUSSELS"]),  # before a token
    ("multi30k", multi30k_folder, "train.en.gz", "train", "en", "A dog."),
    ("multi30k", multi30k_folder, "train.de.gz", "train", "de", "Ein Hund."),
    ("wikitext", _wikitext_folder, "wiki.valid.raw", "validation", "text", " = Title = \n"),
]


@pytest.mark.parametrize(
    "name,make_folder,file,split,column,expected", BOM_CASES, ids=[f"{c[0]}-{c[2]}" for c in BOM_CASES]
)
def test_every_reader_strips_a_bom(tmp_path, caplog, name, make_folder, file, split, column, expected):
    folder = make_folder(tmp_path)
    _prepend_bom(folder / file)
    with caplog.at_level(logging.INFO, logger="pipeline.data.readers"):
        ds = read_mirror(name, folder, validation_size=3)  # (validation_size: sst2 only)
    assert ds[split][0][column] == expected
    assert f"{folder / file}: stripped a UTF-8 byte-order mark" in caplog.text


def test_a_file_holding_only_a_bom_is_empty(tmp_path):
    folder = emotion_folder(tmp_path)
    write(folder / "val.txt", BOM + b"\n")
    with pytest.raises(SourceDataError, match=r"val\.txt: empty file"):
        read_mirror("emotion", folder)


# ---------------------------------------------------------------- errors
def test_missing_file_is_named(tmp_path):
    folder = emotion_folder(tmp_path)
    (folder / "val.txt").unlink()
    with pytest.raises(SourceDataError, match=r"val\.txt: missing file.*'validation' split"):
        split_files("emotion", folder)


def test_missing_field_names_file_line_and_field(tmp_path):
    folder = emotion_folder(tmp_path, train="i feel good;joy\nno label here\nok;joy\n")
    with pytest.raises(SourceDataError, match=r"train\.txt:2: field 'label': missing field"):
        read_mirror("emotion", folder)


def test_unknown_label_lists_allowed_labels(tmp_path):
    folder = emotion_folder(tmp_path, train="i feel good;happiness\n")
    with pytest.raises(
        SourceDataError, match=r"train\.txt:1: field 'label': unknown label 'happiness' \(expected one of \['sadness'"
    ):
        read_mirror("emotion", folder)


def test_sst2_header_without_label_column(tmp_path):
    folder = sst2_folder(tmp_path, header="sentence\tscore")
    with pytest.raises(SourceDataError, match=r"train\.tsv:1: field 'label': missing column"):
        read_mirror("sst2", folder)


def test_sst2_row_missing_a_field(tmp_path):
    folder = sst2_folder(tmp_path)
    with open(folder / "train.tsv", "a") as f:
        f.write("no tab here\n")
    with pytest.raises(SourceDataError, match=r"train\.tsv:12: field 'label': expected 2 tab-separated fields"):
        read_mirror("sst2", folder)


def test_non_utf8_bytes_report_line_and_byte_offset(tmp_path):
    folder = emotion_folder(tmp_path, train=b"ok;joy\n" + b"caf\xe9 bad;joy\n")
    with pytest.raises(SourceDataError, match=r"train\.txt:2: non-UTF-8 bytes \(e9\) at byte offset 10"):
        read_mirror("emotion", folder)


def test_non_utf8_inside_gzip(tmp_path):
    folder = multi30k_folder(tmp_path, train_de=b"Ein Hund.\nZwei \xff Katzen.\n")
    with pytest.raises(SourceDataError, match=r"train\.de\.gz:2: non-UTF-8 bytes \(ff\) .*decompressed"):
        read_mirror("multi30k", folder)


def test_empty_file(tmp_path):
    folder = conll_folder(tmp_path)
    write(folder / "valid.txt", "")
    with pytest.raises(SourceDataError, match=r"valid\.txt: empty file"):
        read_mirror("conll2003", folder)


def test_damaged_gzip(tmp_path):
    folder = multi30k_folder(tmp_path)
    data = (folder / "train.en.gz").read_bytes()
    (folder / "train.en.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceDataError, match=r"train\.en\.gz: not a valid gzip file"):
        read_mirror("multi30k", folder)


def test_truncated_conll_last_line(tmp_path):
    folder = conll_folder(tmp_path, train=CONLL + "Peter NNP")
    with pytest.raises(SourceDataError, match=r"train\.txt:9: field 'chunk': expected 4 .*got 2.*looks truncated"):
        read_mirror("conll2003", folder)


def test_truncated_emotion_last_line(tmp_path):
    folder = emotion_folder(tmp_path, train="i feel good;joy\ni feel")
    with pytest.raises(SourceDataError, match=r"train\.txt:2: field 'label': missing field.*looks truncated"):
        read_mirror("emotion", folder)


def test_unknown_ner_tag(tmp_path):
    folder = conll_folder(tmp_path, train="EU NNP B-NP B-ORGANISATION\n\n")
    with pytest.raises(SourceDataError, match=r"train\.txt:1: field 'ner': unknown label 'B-ORGANISATION'"):
        read_mirror("conll2003", folder)


def test_multi30k_line_count_mismatch(tmp_path):
    folder = multi30k_folder(tmp_path, train_de="Ein Hund.\n")
    with pytest.raises(SourceDataError, match=r"train\.en\.gz has 2 lines but .*train\.de\.gz has 1"):
        read_mirror("multi30k", folder)


# ---------------------------------------------------------------- squad / samsum (JSON in a zip)
def write_zip(path: Path, members: dict[str, object]) -> Path:
    """A zip of JSON members (a bytes value is written as is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, value in members.items():
            archive.writestr(name, value if isinstance(value, bytes) else json.dumps(value))
    return path


def squad_json(n_articles: int = 20, questions: int = 3) -> dict:
    """The SQuAD JSON layout: articles 'Article_<i>', one paragraph each, `questions` questions per paragraph."""
    data = []
    for a in range(n_articles):
        context = f"Article {a} was written in {1900 + a} by author {a}."
        qas = [
            {
                "id": f"a{a}q{q}",
                "question": f"When was article {a} written ({q})?",
                "answers": [{"text": str(1900 + a), "answer_start": context.index(str(1900 + a))}] * (1 + q % 2),
            }
            for q in range(questions)
        ]
        data.append({"title": f"Article_{a}", "paragraphs": [{"context": context, "qas": qas}]})
    return {"version": "1.1", "data": data}


def squad_folder(root: Path, top: dict | bytes | None = None) -> Path:
    folder = root / "squad"
    write_zip(folder / "dev-v1.1.json.zip", {"dev-v1.1.json": squad_json() if top is None else top})
    return folder


SAMSUM_RECORD = {"id": "1", "summary": "Ann will come.", "dialogue": "Ann: I'll come.\r\nBob: Great!\r\nAnn: :)"}


def samsum_folder(root: Path, **members) -> Path:
    folder = root / "samsum"
    content = {f"samsum/{stem}.json": [{**SAMSUM_RECORD, "id": stem}] for stem in ("train", "val", "test")}
    content.update({f"samsum/{stem}.json": value for stem, value in members.items()})
    write_zip(folder / "samsum.zip", {k: v for k, v in content.items() if v is not None})
    return folder


def test_squad_is_flattened_per_question_with_hub_features(tmp_path):
    ds = read_mirror("squad", squad_folder(tmp_path))
    assert all(d.features == FEATURES["squad"] for d in ds.values())
    assert sum(len(d) for d in ds.values()) == 60
    row = next(r for d in ds.values() for r in d if r["id"] == "a3q1")
    assert row == {
        "id": "a3q1",
        "title": "Article_3",
        "context": "Article 3 was written in 1903 by author 3.",
        "question": "When was article 3 written (1)?",
        "answers": {"text": ["1903", "1903"], "answer_start": [25, 25]},
    }


def test_squad_split_is_by_article_disjoint_seeded_and_80_10_10(tmp_path):
    folder = squad_folder(tmp_path)
    ds = read_mirror("squad", folder, seed=42)
    titles = {split: set(d["title"]) for split, d in ds.items()}
    assert [len(titles[s]) for s in ("train", "validation", "test")] == [16, 2, 2]
    assert not (titles["train"] & titles["validation"] or titles["train"] & titles["test"])
    assert not titles["validation"] & titles["test"]
    assert all(len(d) == 3 * len(titles[s]) for s, d in ds.items())  # whole articles
    again = read_mirror("squad", folder, seed=42)
    assert {s: d["id"] for s, d in again.items()} == {s: d["id"] for s, d in ds.items()}
    other = read_mirror("squad", folder, seed=7)
    assert {s: set(d["title"]) for s, d in other.items()} != titles


def test_squad_article_split_ignores_row_order(tmp_path):
    """The hub path gets the same rows in another order: the same articles go to the same split."""
    ds = read_mirror("squad", squad_folder(tmp_path))
    every = datasets.concatenate_datasets([ds["test"], ds["train"], ds["validation"]]).shuffle(seed=3)
    resplit = split_by_article(every, seed=42)
    assert {s: sorted(d["id"]) for s, d in resplit.items()} == {s: sorted(d["id"]) for s, d in ds.items()}


def test_squad_split_needs_three_articles(tmp_path):
    with pytest.raises(SourceDataError, match="2 article"):
        read_mirror("squad", squad_folder(tmp_path, squad_json(n_articles=2)))


@pytest.mark.parametrize(
    "change,fragments",
    [
        (
            lambda t: t["data"][1]["paragraphs"][0]["qas"][2].pop("question"),
            ["data[1].paragraphs[0].qas[2]", "'a1q2'", "field 'question': missing field"],
        ),
        (
            lambda t: t["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start="25"),
            ["qas[0]", "answers[0]", "field 'answer_start': expected int, got str"],
        ),
        (lambda t: t["data"][4].pop("paragraphs"), ["record data[4] ('Article_4')", "field 'paragraphs'"]),
        (lambda t: t.pop("data"), ["field 'data': missing field"]),
    ],
    ids=["missing_question", "string_offset", "missing_paragraphs", "missing_data"],
)
def test_broken_squad_names_file_record_and_field(tmp_path, change, fragments):
    top = squad_json()
    change(top)
    with pytest.raises(SourceDataError) as err:
        read_mirror("squad", squad_folder(tmp_path, top))
    assert "dev-v1.1.json.zip[dev-v1.1.json]" in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_truncated_json_and_damaged_zip(tmp_path):
    text = json.dumps(squad_json()).encode()
    with pytest.raises(SourceDataError, match=r"zip\[dev-v1\.1\.json\]:1:\d+: not valid JSON"):
        read_mirror("squad", squad_folder(tmp_path / "a", text[:500]))
    folder = samsum_folder(tmp_path / "b")
    (folder / "samsum.zip").write_bytes((folder / "samsum.zip").read_bytes()[:100])
    with pytest.raises(SourceDataError, match=r"samsum\.zip: not a valid zip file"):
        read_mirror("samsum", folder)


def test_samsum_normalises_turns_and_keeps_the_schema(tmp_path):
    ds = read_mirror("samsum", samsum_folder(tmp_path))
    assert list(ds) == ["train", "validation", "test"]
    assert ds["validation"].features == FEATURES["samsum"]
    assert ds["validation"][0] == {
        "id": "val",
        "dialogue": "Ann: I'll come.\nBob: Great!\nAnn: :)",
        "summary": "Ann will come.",
    }


def test_samsum_missing_member_or_field_is_named(tmp_path):
    with pytest.raises(SourceDataError, match=r"samsum\.zip: missing member 'samsum/val\.json'"):
        read_mirror("samsum", samsum_folder(tmp_path / "a", val=None))
    broken = [SAMSUM_RECORD, {"id": "2", "summary": "x"}]
    with pytest.raises(
        SourceDataError, match=r"samsum\.zip\[samsum/test\.json\]: record \[1\] id '2': field 'dialogue': missing"
    ):
        read_mirror("samsum", samsum_folder(tmp_path / "b", test=broken))
    with pytest.raises(SourceDataError, match=r"record \[0\]: field 'id': expected str, got int"):
        read_mirror("samsum", samsum_folder(tmp_path / "c", train=[{**SAMSUM_RECORD, "id": 5}]))


def test_a_bom_in_a_zip_member_is_stripped_and_logged(tmp_path, caplog):
    folder = samsum_folder(tmp_path, train=BOM + json.dumps([SAMSUM_RECORD]).encode())
    with caplog.at_level(logging.INFO, logger="pipeline.data.readers"):
        ds = read_mirror("samsum", folder)
    assert ds["train"][0]["id"] == "1"
    assert f"{folder / 'samsum.zip'}[samsum/train.json]: stripped a UTF-8 byte-order mark" in caplog.text
    top = BOM + json.dumps(squad_json()).encode()
    with caplog.at_level(logging.INFO, logger="pipeline.data.readers"):
        assert sum(len(d) for d in read_mirror("squad", squad_folder(tmp_path, top)).values()) == 60
    assert "dev-v1.1.json.zip[dev-v1.1.json]: stripped a UTF-8 byte-order mark" in caplog.text
