"""pipeline.data.readers: original mirror formats -> canonical schema, and specific errors for broken files."""

from __future__ import annotations

import codecs
import gzip
import logging
from pathlib import Path

import pytest

from pipeline.data.readers import (
    FEATURES,
    MIRROR_FOLDERS,
    NER_TAGS,
    SourceDataError,
    carve_validation,
    read_mirror,
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
    assert set(MIRROR_FOLDERS) == set(FEATURES) == {"emotion", "sst2", "conll2003", "multi30k", "wikitext"}


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
