"""Corruptions applied to a copy of (a subsample of) the real mirror files, one kind of bad input each.

Each Corruption edits files under a mirror root in place and says where the pipeline must stop
(`ingest` or `validate`) and which fragments the error message must contain (file/split, field/expectation).
Each Repair edits files in a way the readers must tolerate: the data comes out as from the clean files.
"""

from __future__ import annotations

import codecs
import gzip
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.data import json_bytes, read_zip_json, write_zip


# ---------------------------------------------------------------- file editing (gzip-aware, bytes-exact)
def read_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def write_lines(path: Path, lines: list[bytes], trailing_newline: bool = True) -> None:
    data = b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def edit(path: Path, change: Callable[[list[bytes]], list[bytes]], trailing_newline: bool = True) -> None:
    write_lines(path, change(read_lines(path)), trailing_newline)


def replace_line(path: Path, number: int, new: bytes) -> None:
    """Replace the 1-based line `number`."""

    def change(lines):
        lines[number - 1] = new
        return lines

    edit(path, change)


def conll_token_lines(path: Path) -> list[int]:
    """1-based numbers of the lines that hold a token."""
    return [i + 1 for i, line in enumerate(read_lines(path)) if line.strip() and not line.startswith(b"-DOCSTART-")]


# ---------------------------------------------------------------- the corruptions
def missing_label_field(m: Path) -> None:
    replace_line(m / "emotion" / "train.txt", 5, b"i feel the label is gone")


def missing_label_column(m: Path) -> None:
    replace_line(m / "sst2" / "train.tsv", 1, b"sentence")


def empty_text(m: Path) -> None:
    replace_line(m / "emotion" / "val.txt", 3, b";joy")


def whitespace_only_translation(m: Path) -> None:
    replace_line(m / "multi30k" / "test_2016_flickr.de.gz", 4, b"   ")


def unknown_label(m: Path) -> None:
    replace_line(m / "emotion" / "test.txt", 7, b"i feel on top of the world;happiness")


def unknown_ner_tag(m: Path) -> None:
    path = m / "conll2003" / "train.txt"
    number = conll_token_lines(path)[3]
    token = read_lines(path)[number - 1].split(b" ")[0]
    replace_line(path, number, token + b" NNP B-NP B-PERSON")


def broken_bio(m: Path) -> None:
    """An entity that starts with I-X right after O (IOB2 needs B-X first)."""
    path = m / "conll2003" / "valid.txt"
    lines = read_lines(path)
    for number in conll_token_lines(path):
        fields = lines[number - 1].split(b" ")
        before = lines[number - 2].split(b" ") if number >= 2 else [b""]
        if fields[3].startswith(b"B-") and before[-1] == b"O":
            fields[3] = b"I-" + fields[3][2:]
            replace_line(path, number, b" ".join(fields))
            return
    raise AssertionError("no B- tag after O found to break")


def tokens_tags_mismatch(m: Path) -> None:
    """A token line that lost its NER column: one more token than tags."""
    path = m / "conll2003" / "test.txt"
    number = conll_token_lines(path)[10]
    fields = read_lines(path)[number - 1].split(b" ")
    replace_line(path, number, b" ".join(fields[:3]))


def misaligned_translation(m: Path) -> None:
    edit(m / "multi30k" / "train.de.gz", lambda lines: lines[:200] + lines[201:])


def translation_length_ratio(m: Path) -> None:
    """A German side that is far longer than its English sentence (a pasted paragraph)."""
    path = m / "multi30k" / "val.de.gz"
    replace_line(path, 8, b" ".join(read_lines(path)[:12]))


def non_utf8_bytes(m: Path) -> None:
    path = m / "emotion" / "train.txt"
    lines = read_lines(path)
    lines[9] = lines[9].replace(b" ", b" caf\xe9 ", 1)  # latin-1 e-acute
    write_lines(path, lines)


def non_utf8_in_gzip(m: Path) -> None:
    path = m / "multi30k" / "val.en.gz"
    lines = read_lines(path)
    lines[2] = b"\xff\xfe" + lines[2]
    write_lines(path, lines)


def empty_file(m: Path) -> None:
    (m / "conll2003" / "valid.txt").write_bytes(b"")


def missing_file(m: Path) -> None:
    (m / "wikitext-2" / "wiki.test.raw").unlink()


def truncated_conll(m: Path) -> None:
    """The file ends in the middle of a token line (no NER column, no newline)."""
    path = m / "conll2003" / "test.txt"
    lines = read_lines(path)
    while not lines[-1].strip():
        lines.pop()
    lines[-1] = lines[-1].split(b" ")[0] + b" NN"
    write_lines(path, lines, trailing_newline=False)


def truncated_emotion(m: Path) -> None:
    path = m / "emotion" / "train.txt"
    lines = read_lines(path)
    lines[-1] = lines[-1][:15]
    write_lines(path, lines, trailing_newline=False)


def train_test_leak(m: Path) -> None:
    """30 test sentences copied into train (params allow 20 for emotion)."""
    test = read_lines(m / "emotion" / "test.txt")
    edit(m / "emotion" / "train.txt", lambda lines: lines + test[:30])


def duplicated_rows(m: Path) -> None:
    """20 % of SST-2 train repeated (params allow 1 %)."""
    edit(m / "sst2" / "train.tsv", lambda lines: lines + lines[1:221])


def text_too_long(m: Path) -> None:
    path = m / "emotion" / "train.txt"
    replace_line(path, 12, b"i feel " + b"very " * 100 + b"tired;sadness")


def swapped_translation(m: Path) -> None:
    """train.en.gz and train.de.gz exchanged: line-aligned and well-formed, but each side is the other language."""
    en, de = m / "multi30k" / "train.en.gz", m / "multi30k" / "train.de.gz"
    en_bytes = en.read_bytes()
    en.write_bytes(de.read_bytes())
    de.write_bytes(en_bytes)


def bom_emotion(m: Path) -> None:
    """A UTF-8 byte-order mark at the start of the file (as some Windows editors save it)."""
    path = m / "emotion" / "train.txt"
    path.write_bytes(codecs.BOM_UTF8 + path.read_bytes())


def wikitext_mostly_blank(m: Path) -> None:
    """Most paragraphs wiped out (blank lines are legitimate breaks, but not 80 % of the file)."""
    edit(m / "wikitext-2" / "wiki.valid.raw", lambda lines: [b" " if i % 5 else line for i, line in enumerate(lines)])


# ---------------------------------------------------------------- squad / samsum (JSON inside a zip)
SQUAD_ZIP, SQUAD_MEMBER = "squad/dev-v1.1.json.zip", "dev-v1.1.json"
SAMSUM_ZIP = "samsum/samsum.zip"
# articles of the small mirror's splits with common.seed 42 (the same as the real split: all 48 articles stay)
SQUAD_TRAIN_ARTICLE, SQUAD_TEST_ARTICLE = "Super_Bowl_50", "Oxygen"


def edit_zip_json(path: Path, member: str, change: Callable[[object], None]) -> None:
    """Apply `change` (in place) to the JSON of one member; the other members are copied unchanged."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    value = read_zip_json(path, member)
    change(value)
    members[member] = json_bytes(value)
    write_zip(path, members)


def _squad_qa(top: dict, title: str, paragraph: int = 0, question: int = 0) -> dict:
    (article,) = [a for a in top["data"] if a["title"] == title]
    return article["paragraphs"][paragraph]["qas"][question]


def squad_answer_misaligned(m: Path) -> None:
    """answer_start moved 3 characters: it no longer indexes the answer text (question 56be4db0acb8001400a502ed)."""

    def change(top):
        for answer in _squad_qa(top, SQUAD_TRAIN_ARTICLE, 0, 1)["answers"]:
            answer["answer_start"] += 3

    edit_zip_json(m / SQUAD_ZIP, SQUAD_MEMBER, change)


def squad_duplicate_id(m: Path) -> None:
    """A test article's question reuses the id of a train article's question."""

    def change(top):
        _squad_qa(top, SQUAD_TEST_ARTICLE)["id"] = _squad_qa(top, SQUAD_TRAIN_ARTICLE)["id"]

    edit_zip_json(m / SQUAD_ZIP, SQUAD_MEMBER, change)


def squad_no_answer(m: Path) -> None:
    edit_zip_json(m / SQUAD_ZIP, SQUAD_MEMBER, lambda top: _squad_qa(top, SQUAD_TEST_ARTICLE, 1, 2)["answers"].clear())


def squad_missing_question(m: Path) -> None:
    edit_zip_json(m / SQUAD_ZIP, SQUAD_MEMBER, lambda top: top["data"][1]["paragraphs"][0]["qas"][2].pop("question"))


def squad_broken_json(m: Path) -> None:
    """The JSON member cut in the middle (a truncated download re-zipped)."""
    path = m / SQUAD_ZIP
    with zipfile.ZipFile(path) as archive:
        data = archive.read(SQUAD_MEMBER)
    write_zip(path, {SQUAD_MEMBER: data[: len(data) // 2]})


def _samsum_record(split_member: str, index: int, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(m: Path) -> None:
        edit_zip_json(m / SAMSUM_ZIP, split_member, lambda records: change(records[index]))

    return apply


samsum_empty_summary = _samsum_record("samsum/val.json", 3, lambda r: r.update(summary=""))
samsum_empty_dialogue_in_test = _samsum_record("samsum/test.json", 4, lambda r: r.update(dialogue="  "))
samsum_missing_dialogue = _samsum_record("samsum/test.json", 5, lambda r: r.pop("dialogue"))


def samsum_duplicate_id(m: Path) -> None:
    """A test example reuses the id of a train example (different dialogues)."""
    train_id = read_zip_json(m / SAMSUM_ZIP, "samsum/train.json")[0]["id"]
    edit_zip_json(m / SAMSUM_ZIP, "samsum/test.json", lambda records: records[7].update(id=train_id))


def samsum_summaries_too_long(m: Path) -> None:
    """10 of the 100 test summaries longer than their dialogue (params allow 1 %)."""

    def change(records):
        for record in records[:10]:
            record["summary"] = record["dialogue"].replace("\r\n", " ") + " " + record["summary"]

    edit_zip_json(m / SAMSUM_ZIP, "samsum/test.json", change)


def samsum_truncated_zip(m: Path) -> None:
    path = m / SAMSUM_ZIP
    path.write_bytes(path.read_bytes()[:1000])


@dataclass(frozen=True)
class Corruption:
    kind: str
    dataset: str
    apply: Callable[[Path], None]
    stage: str  # "ingest" or "validate": where the pipeline must stop
    fragments: tuple[str, ...]  # the error message must contain each (case-sensitive)


CORRUPTIONS: list[Corruption] = [
    Corruption(
        "missing_field", "emotion", missing_label_field, "ingest", ("train.txt:5", "field 'label'", "missing field")
    ),
    Corruption(
        "missing_column", "sst2", missing_label_column, "ingest", ("train.tsv:1", "field 'label'", "missing column")
    ),
    Corruption(
        "empty_text",
        "emotion",
        empty_text,
        "validate",
        ("split 'validation'", "expect_column_value_lengths_to_be_between", "column 'text'", '"row": 2'),
    ),
    Corruption(
        "whitespace_text",
        "multi30k",
        whitespace_only_translation,
        "validate",
        ("split 'test'", "expect_column_values_to_not_match_regex", "column 'de'", '"row": 3'),
    ),
    Corruption("unknown_label", "emotion", unknown_label, "ingest", ("test.txt:7", "unknown label 'happiness'")),
    Corruption(
        "unknown_ner_tag",
        "conll2003",
        unknown_ner_tag,
        "ingest",
        ("train.txt:", "field 'ner'", "unknown label 'B-PERSON'"),
    ),
    Corruption(
        "broken_bio",
        "conll2003",
        broken_bio,
        "validate",
        ("split 'validation'", "column 'bio_valid'", "1 unexpected of 100 rows"),
    ),
    Corruption(
        "tokens_tags_mismatch",
        "conll2003",
        tokens_tags_mismatch,
        "ingest",
        ("test.txt:", "field 'ner'", "expected 4 space-separated columns"),
    ),
    Corruption(
        "misaligned_translation",
        "multi30k",
        misaligned_translation,
        "ingest",
        ("train.en.gz has 400 lines but", "train.de.gz has 399"),
    ),
    Corruption(
        "translation_length_ratio",
        "multi30k",
        translation_length_ratio,
        "validate",
        ("split 'validation'", "expect_column_values_to_be_between", "column 'len_ratio'", '"row": 7'),
    ),
    Corruption(
        "non_utf8", "emotion", non_utf8_bytes, "ingest", ("train.txt:10", "non-UTF-8 bytes (e9)", "byte offset")
    ),
    Corruption("non_utf8_gzip", "multi30k", non_utf8_in_gzip, "ingest", ("val.en.gz:3", "non-UTF-8 bytes (ff)")),
    Corruption("empty_file", "conll2003", empty_file, "ingest", ("valid.txt", "empty file")),
    Corruption("missing_file", "wikitext", missing_file, "ingest", ("wiki.test.raw", "missing file")),
    Corruption("truncated_conll", "conll2003", truncated_conll, "ingest", ("test.txt:", "field 'chunk'", "truncated")),
    Corruption(
        "truncated_emotion", "emotion", truncated_emotion, "ingest", ("train.txt:400", "field 'label'", "truncated")
    ),
    Corruption(
        "train_test_leak",
        "emotion",
        train_test_leak,
        "validate",
        ("split 'train'", "expect_column_sum_to_be_between", "column 'in_test'", "observed 30"),
    ),
    Corruption(
        "duplicated_rows",
        "sst2",
        duplicated_rows,
        "validate",
        ("split 'train'", "expect_column_mean_to_be_between", "column 'is_duplicate'"),
    ),
    Corruption(
        "text_too_long",
        "emotion",
        text_too_long,
        "validate",
        ("split 'train'", "expect_column_value_lengths_to_be_between", "max_value=400", '"row": 11'),
    ),
    Corruption(
        "swapped_translation",
        "multi30k",
        swapped_translation,
        "validate",
        (
            "split 'train'",
            "column 'en_looks_english'",
            "the 'en' side of split 'train' (train.en.gz) does not look English",
            "column 'de_looks_german'",
            "the 'de' side of split 'train' (train.de.gz) does not look German",
            "languages look swapped",
        ),
    ),
    Corruption(
        "wikitext_mostly_blank",
        "wikitext",
        wikitext_mostly_blank,
        "validate",
        ("split 'validation'", "column 'is_blank'", "max_value=0.5"),
    ),
    Corruption(
        "squad_answer_misaligned",
        "squad",
        squad_answer_misaligned,
        "validate",
        ("split 'train'", "expect_column_values_to_be_in_set", "column 'answers_aligned'", "56be4db0acb8001400a502ed"),
    ),
    Corruption(
        "squad_duplicate_id",
        "squad",
        squad_duplicate_id,
        "validate",
        ("split 'train'", "split 'test'", "column 'id_repeated'", "56be4db0acb8001400a502ec", "1 unexpected"),
    ),
    Corruption(
        "squad_no_answer",
        "squad",
        squad_no_answer,
        "validate",
        ("split 'test'", "expect_column_values_to_be_between", "column 'n_answers'", '"title": "Oxygen"'),
    ),
    Corruption(
        "squad_missing_field",
        "squad",
        squad_missing_question,
        "ingest",
        (
            "dev-v1.1.json.zip[dev-v1.1.json]",
            "record data[1].paragraphs[0].qas[2]",
            "field 'question'",
            "missing field",
        ),
    ),
    Corruption(
        "squad_broken_json",
        "squad",
        squad_broken_json,
        "ingest",
        ("dev-v1.1.json.zip[dev-v1.1.json]", "not valid JSON"),
    ),
    Corruption(
        "samsum_empty_summary",
        "samsum",
        samsum_empty_summary,
        "validate",
        (
            "split 'validation'",
            "expect_column_value_lengths_to_be_between",
            "column 'summary'",
            '"row": 3',
            "samsum/val.json",
        ),
    ),
    Corruption(
        "samsum_empty_dialogue_in_test",
        "samsum",
        samsum_empty_dialogue_in_test,
        "validate",
        ("split 'test'", "expect_column_values_to_not_match_regex", "column 'dialogue'", '"row": 4'),
    ),
    Corruption(
        "samsum_missing_field",
        "samsum",
        samsum_missing_dialogue,
        "ingest",
        ("samsum.zip[samsum/test.json]", "record [5]", "field 'dialogue'", "missing field"),
    ),
    Corruption(
        "samsum_duplicate_id",
        "samsum",
        samsum_duplicate_id,
        "validate",
        ("split 'train'", "split 'test'", "column 'id_repeated'", '"row": 7'),
    ),
    Corruption(
        "samsum_summaries_too_long",
        "samsum",
        samsum_summaries_too_long,
        "validate",
        ("split 'test'", "column 'summary_shorter'", "mostly=0.99", "10 unexpected of 100 rows"),
    ),
    Corruption("samsum_broken_zip", "samsum", samsum_truncated_zip, "ingest", ("samsum.zip", "not a valid zip file")),
]


@dataclass(frozen=True)
class Repair:
    kind: str
    dataset: str
    apply: Callable[[Path], None]
    file: str  # the edited file, relative to the mirror root: the reader's log must name it


REPAIRS: list[Repair] = [Repair("bom", "emotion", bom_emotion, "emotion/train.txt")]
