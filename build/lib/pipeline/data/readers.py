"""Read the local data mirror (original file formats) into the canonical raw schema.

`read_mirror(name, folder)` parses one dataset's original files (folder = the dataset's own sub-folder of the
mirror, e.g. ../shared/datasets/wikitext-2; MIRROR_FOLDERS maps dataset -> sub-folder) into a
datasets.DatasetDict with the canonical columns and ClassLabel order of the hub datasets.

Broken files raise SourceDataError naming the file, the line, the field and what was expected.
"""

from __future__ import annotations

import codecs
import gzip
import json
import logging
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

MIRROR_FOLDERS: dict[str, str] = {
    "emotion": "emotion",
    "sst2": "sst2",
    "conll2003": "conll2003",
    "multi30k": "multi30k",
    "wikitext": "wikitext-2",
    "squad": "squad",
    "samsum": "samsum",
}

EMOTION_LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]
SST2_LABELS = ["negative", "positive"]
NER_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]

FEATURES: dict[str, datasets.Features] = {
    "emotion": datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=EMOTION_LABELS)}
    ),
    "sst2": datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=SST2_LABELS)}),
    "conll2003": datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=NER_TAGS)),
        }
    ),
    "multi30k": datasets.Features({"en": datasets.Value("string"), "de": datasets.Value("string")}),
    "wikitext": datasets.Features({"text": datasets.Value("string")}),
    # as the hub's rajpurkar/squad (answers: {"text": [str], "answer_start": [int]}, character offsets)
    "squad": datasets.Features(
        {
            "id": datasets.Value("string"),
            "title": datasets.Value("string"),
            "context": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answers": datasets.Sequence({"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}),
        }
    ),
    # dialogue turns separated by "\n" (the original's "\r\n" normalised)
    "samsum": datasets.Features(
        {"id": datasets.Value("string"), "dialogue": datasets.Value("string"), "summary": datasets.Value("string")}
    ),
}

SQUAD_FILE, SQUAD_MEMBER = "dev-v1.1.json.zip", "dev-v1.1.json"
SAMSUM_FILE = "samsum.zip"
SAMSUM_MEMBERS = {"train": "samsum/train.json", "validation": "samsum/val.json", "test": "samsum/test.json"}
# SQuAD: share of the articles (titles) that go to validation and to test; the rest is train
SQUAD_ARTICLE_FRACTIONS = {"validation": 0.1, "test": 0.1}

# dataset -> split -> the file(s) it is read from, relative to the dataset's mirror folder
MIRROR_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "emotion": {"train": ("train.txt",), "validation": ("val.txt",), "test": ("test.txt",)},
    # SST-2's test.tsv has no labels: dev.tsv becomes test, validation is carved from train.
    "sst2": {"train": ("train.tsv",), "test": ("dev.tsv",)},
    "conll2003": {"train": ("train.txt",), "validation": ("valid.txt",), "test": ("test.txt",)},
    "multi30k": {
        "train": ("train.en.gz", "train.de.gz"),
        "validation": ("val.en.gz", "val.de.gz"),
        "test": ("test_2016_flickr.en.gz", "test_2016_flickr.de.gz"),
    },
    "wikitext": {"train": ("wiki.train.raw",), "validation": ("wiki.valid.raw",), "test": ("wiki.test.raw",)},
    # only the official dev set: every split is carved from it by article (split_by_article)
    "squad": {split: (SQUAD_FILE,) for split in ("train", "validation", "test")},
    "samsum": {split: (SAMSUM_FILE,) for split in ("train", "validation", "test")},
}
OPTIONAL_SPLITS: dict[str, set[str]] = {"wikitext": {"train"}}  # this mirror has no wiki.train.raw

log = logging.getLogger(__name__)

DEFAULT_SEED = 42
DEFAULT_SST2_VALIDATION_SIZE = 872


class SourceDataError(ValueError):
    """A source data file is missing or malformed; the message names file, line, field and what was expected."""


@dataclass(frozen=True)
class Line:
    number: int  # 1-based
    text: str
    is_last_unterminated: bool  # the file's last line, with no trailing newline: maybe truncated


# ---------------------------------------------------------------- locating files
def dataset_folder(name: str, folder: Path) -> Path:
    """The dataset's own mirror folder; `folder` may also be the mirror root holding it."""
    _check_name(name)
    folder = Path(folder)
    nested = folder / MIRROR_FOLDERS[name]
    if folder.name != MIRROR_FOLDERS[name] and nested.is_dir():
        return nested
    return folder


def split_files(name: str, folder: Path) -> dict[str, list[Path]]:
    """split -> files read_mirror reads, for the splits present; a missing required file is an error."""
    folder = dataset_folder(name, folder)
    out: dict[str, list[Path]] = {}
    for split, names in MIRROR_FILES[name].items():
        paths = [folder / n for n in names]
        present = [p for p in paths if p.is_file()]
        if not present and split in OPTIONAL_SPLITS.get(name, set()):
            continue
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise SourceDataError(
                f"{missing[0]}: missing file (the {split!r} split of {name} is read from "
                f"{', '.join(names)} in {folder}); restore it from the source listed in SOURCE.md"
            )
        out[split] = paths
    return out


def has_mirror(name: str, mirror_dir: Path | None) -> bool:
    """True when the mirror holds this dataset's folder (then it must be complete and well-formed)."""
    return bool(mirror_dir) and (Path(mirror_dir) / MIRROR_FOLDERS[name]).is_dir()


# ---------------------------------------------------------------- decoding
def strip_bom(raw: bytes, path: Path | str) -> bytes:
    """`raw` without a leading UTF-8 byte-order mark (some editors write one; it would stick to the first text).
    Logs at INFO, naming `path`, when one was stripped."""
    if not raw.startswith(codecs.BOM_UTF8):
        return raw
    log.info("%s: stripped a UTF-8 byte-order mark (BOM) at the start of the file", path)
    return raw[len(codecs.BOM_UTF8) :]


def _decode(path: Path) -> str:
    """The file's text (gzip-decompressed when *.gz, BOM stripped); every reader reads through here."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise SourceDataError(f"{path}: not a valid gzip file ({err}); the file is damaged or truncated") from None
    return _utf8(strip_bom(raw, path), str(path), " of the decompressed text" if path.suffix == ".gz" else "")


def _utf8(raw: bytes, where: str, note: str = "") -> str:
    """`raw` (BOM already stripped) decoded as UTF-8; `where` names the file (or zip member) in errors."""
    if not raw.strip():
        raise SourceDataError(f"{where}: empty file (expected at least one record)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        bad = raw[err.start : err.end].hex(" ")
        raise SourceDataError(
            f"{where}:{line}: non-UTF-8 bytes ({bad}) at byte offset {err.start}{note}; the file must be UTF-8"
        ) from None


def member_name(path: Path, member: str) -> str:
    """How errors and logs name a member of a zip file: <zip path>[<member>]."""
    return f"{path}[{member}]"


def _zip_json(path: Path, member: str):
    """The JSON value held by `member` of the zip file `path` (BOM stripped)."""
    where = member_name(path, member)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if member not in names:
                raise SourceDataError(
                    f"{path}: missing member {member!r} (has {names}); restore the file from the source in SOURCE.md"
                )
            raw = archive.read(member)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise SourceDataError(f"{path}: not a valid zip file ({err}); the file is damaged or truncated") from None
    text = _utf8(strip_bom(raw, where), where, " of the unzipped text")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SourceDataError(
            f"{where}:{err.lineno}:{err.colno}: not valid JSON ({err.msg}); the file is damaged or truncated"
        ) from None


def _json_field(record, key: str, expected: type, where: str, name: str):
    """record[key], which must be of type `expected`; else an error naming the file, the record and the field."""
    if not isinstance(record, dict):
        raise SourceDataError(f"{where}: record {name}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise SourceDataError(f"{where}: record {name}: field {key!r}: missing field")
    value = record[key]
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise SourceDataError(
            f"{where}: record {name}: field {key!r}: expected {expected.__name__}, got {type(value).__name__} "
            f"{str(value)[:60]!r}"
        )
    return value


def _lines(path: Path) -> list[Line]:
    """The file's lines (split on \\n only, \\r\\n tolerated), numbered from 1."""
    text = _decode(path)
    parts = text.split("\n")
    terminated = parts[-1] == ""
    if terminated:
        parts.pop()
    last = len(parts) - 1
    return [Line(i + 1, p.rstrip("\r"), (not terminated) and i == last) for i, p in enumerate(parts)]


def _fail(path: Path, line: Line, field: str, problem: str) -> SourceDataError:
    hint = " (the last line has no trailing newline: the file looks truncated)" if line.is_last_unterminated else ""
    shown = line.text if len(line.text) <= 120 else line.text[:117] + "..."
    return SourceDataError(f"{path}:{line.number}: field {field!r}: {problem}{hint}; line: {shown!r}")


def _label(path: Path, line: Line, value: str, names: list[str], field: str = "label") -> int:
    if value not in names:
        raise _fail(path, line, field, f"unknown label {value!r} (expected one of {names})")
    return names.index(value)


# ---------------------------------------------------------------- per-format parsers
def _read_emotion(path: Path) -> dict[str, list]:
    texts, labels = [], []
    for line in _lines(path):
        if ";" not in line.text:
            raise _fail(path, line, "label", "missing field (expected 'text;label')")
        text, label = line.text.rsplit(";", 1)
        texts.append(text)
        labels.append(_label(path, line, label, EMOTION_LABELS))
    return {"text": texts, "label": labels}


def _read_sst2(path: Path) -> dict[str, list]:
    lines = _lines(path)
    header = lines[0].text.split("\t")
    for column in ("sentence", "label"):
        if column not in header:
            raise _fail(
                path, lines[0], column, f"missing column in the header (expected 'sentence<TAB>label', got {header})"
            )
    i_text, i_label = header.index("sentence"), header.index("label")
    texts, labels = [], []
    for line in lines[1:]:
        fields = line.text.split("\t")
        if len(fields) != len(header):
            missing = header[len(fields)] if len(fields) < len(header) else "<extra>"
            raise _fail(path, line, missing, f"expected {len(header)} tab-separated fields {header}, got {len(fields)}")
        texts.append(fields[i_text].rstrip())
        labels.append(_label(path, line, fields[i_label], ["0", "1"]))
    return {"text": texts, "label": labels}


def _read_conll(path: Path) -> dict[str, list]:
    sentences, tags = [], []
    tokens: list[str] = []
    ner: list[int] = []
    for line in _lines(path):
        if line.text.startswith("-DOCSTART-") or not line.text.strip():
            if tokens:
                sentences.append(tokens)
                tags.append(ner)
                tokens, ner = [], []
            continue
        fields = line.text.split(" ")
        if len(fields) != 4:
            field = ["token", "pos", "chunk", "ner"][min(len(fields), 3)] if len(fields) < 4 else "<extra>"
            raise _fail(
                path, line, field, f"expected 4 space-separated columns 'token POS chunk NER', got {len(fields)}"
            )
        tokens.append(fields[0])
        ner.append(_label(path, line, fields[3], NER_TAGS, field="ner"))
    if tokens:
        sentences.append(tokens)
        tags.append(ner)
    if not sentences:
        raise SourceDataError(f"{path}: no sentences found (expected CoNLL lines 'token POS chunk NER')")
    return {"tokens": sentences, "ner_tags": tags}


def _read_multi30k(en_path: Path, de_path: Path) -> dict[str, list]:
    en = _lines(en_path)
    de = _lines(de_path)
    if len(en) != len(de):
        raise SourceDataError(
            f"{en_path} has {len(en)} lines but {de_path} has {len(de)}: the en/de files must be line-aligned "
            f"(one translation pair per line); restore both files from the source listed in SOURCE.md"
        )
    return {"en": [line.text for line in en], "de": [line.text for line in de]}


def _read_wikitext(path: Path) -> dict[str, list]:
    # HF parity: whitespace-only lines become "", every other line keeps its "\n".
    rows = []
    for line in _lines(path):
        if not line.text.strip():
            rows.append("")
        else:
            rows.append(line.text if line.is_last_unterminated else line.text + "\n")
    return {"text": rows}


def _read_squad(path: Path) -> dict[str, list]:
    """The official SQuAD JSON flattened to one row per question (all articles, in file order)."""
    where = member_name(path, SQUAD_MEMBER)
    top = _zip_json(path, SQUAD_MEMBER)
    articles = _json_field(top, "data", list, where, "<top level>")
    rows: dict[str, list] = {column: [] for column in FEATURES["squad"]}
    for i, article in enumerate(articles):
        title = _json_field(article, "title", str, where, f"data[{i}]")
        for j, paragraph in enumerate(_json_field(article, "paragraphs", list, where, f"data[{i}] ({title!r})")):
            at = f"data[{i}].paragraphs[{j}] ({title!r})"
            context = _json_field(paragraph, "context", str, where, at)
            for k, qa in enumerate(_json_field(paragraph, "qas", list, where, at)):
                at = f"data[{i}].paragraphs[{j}].qas[{k}] ({title!r})"
                qid = _json_field(qa, "id", str, where, at)
                at = f"{at} id {qid!r}"
                question = _json_field(qa, "question", str, where, at)
                answers = _json_field(qa, "answers", list, where, at)
                texts = [_json_field(a, "text", str, where, f"{at} answers[{n}]") for n, a in enumerate(answers)]
                starts = [
                    _json_field(a, "answer_start", int, where, f"{at} answers[{n}]") for n, a in enumerate(answers)
                ]
                rows["id"].append(qid)
                rows["title"].append(title)
                rows["context"].append(context)
                rows["question"].append(question)
                rows["answers"].append({"text": texts, "answer_start": starts})
    if not rows["id"]:
        raise SourceDataError(f"{where}: no questions found (expected the SQuAD JSON {{'data': [articles]}})")
    return rows


def normalise_turns(text: str) -> str:
    """Dialogue turns separated by "\n" (the SAMSum files mostly use "\r\n")."""
    return text.replace("\r\n", "\n")


def _read_samsum(path: Path, member: str) -> dict[str, list]:
    where = member_name(path, member)
    records = _zip_json(path, member)
    if not isinstance(records, list):
        raise SourceDataError(
            f"{where}: expected a JSON list of {{id, summary, dialogue}}, got {type(records).__name__}"
        )
    rows: dict[str, list] = {"id": [], "dialogue": [], "summary": []}
    for i, record in enumerate(records):
        rid = _json_field(record, "id", str, where, f"[{i}]")
        at = f"[{i}] id {rid!r}"
        rows["id"].append(rid)
        rows["dialogue"].append(normalise_turns(_json_field(record, "dialogue", str, where, at)))
        rows["summary"].append(normalise_turns(_json_field(record, "summary", str, where, at)))
    return rows


# ---------------------------------------------------------------- public
def split_by_article(ds: datasets.Dataset, seed: int) -> datasets.DatasetDict:
    """SQuAD rows split into train/validation/test BY ARTICLE (title): SQUAD_ARTICLE_FRACTIONS of the titles
    (at least one each) go to validation and test, picked with `seed` from the sorted titles (so the row order
    of the source does not matter); rows keep their order within a split."""
    titles = sorted(set(ds["title"]))
    sizes = {split: max(1, round(fraction * len(titles))) for split, fraction in SQUAD_ARTICLE_FRACTIONS.items()}
    if sum(sizes.values()) >= len(titles):
        raise SourceDataError(f"squad: {len(titles)} article(s) cannot be split into train/validation/test by article")
    order = [titles[i] for i in np.random.default_rng(seed).permutation(len(titles))]
    split_of = {title: "test" for title in order[: sizes["test"]]}
    split_of.update({title: "validation" for title in order[sizes["test"] : sizes["test"] + sizes["validation"]]})
    rows: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for i, title in enumerate(ds["title"]):
        rows[split_of.get(title, "train")].append(i)
    return datasets.DatasetDict({split: ds.select(idx) for split, idx in rows.items()})


def carve_validation(train: datasets.Dataset, size: int, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split `size` rows off train as validation, chosen by `seed`; both keep the original row order."""
    if not 0 < size < len(train):
        raise ValueError(
            f"validation_size must be between 1 and {len(train) - 1} (train has {len(train)} rows), got {size}"
        )
    order = np.random.default_rng(seed).permutation(len(train))
    validation_idx = np.sort(order[:size])
    train_idx = np.sort(order[size:])
    return train.select(train_idx), train.select(validation_idx)


def read_mirror(
    name: str,
    folder: Path,
    *,
    seed: int = DEFAULT_SEED,
    validation_size: int | None = None,
) -> datasets.DatasetDict:
    """One dataset from its mirror folder, in the canonical schema (splits train/validation/test;
    wikitext: the splits present). SST-2: dev.tsv -> test, validation = `validation_size` rows of train
    picked with `seed` (defaults: 872 and 42, as in params.yaml). SQuAD: the dev set split by article with
    `seed` (split_by_article). SAMSum: as in the files (ingest drops the examples unfit for training)."""
    files = split_files(name, folder)
    features = FEATURES[name]
    if name == "squad":
        every = datasets.Dataset.from_dict(_read_squad(files["train"][0]), features=features)
        return split_by_article(every, seed)
    splits: dict[str, datasets.Dataset] = {}
    for split, paths in files.items():
        if name == "emotion":
            columns = _read_emotion(paths[0])
        elif name == "sst2":
            columns = _read_sst2(paths[0])
        elif name == "conll2003":
            columns = _read_conll(paths[0])
        elif name == "multi30k":
            columns = _read_multi30k(*paths)
        elif name == "samsum":
            columns = _read_samsum(paths[0], SAMSUM_MEMBERS[split])
        else:
            columns = _read_wikitext(paths[0])
        splits[split] = datasets.Dataset.from_dict(columns, features=features)
    if name == "sst2":
        size = validation_size or DEFAULT_SST2_VALIDATION_SIZE
        splits["train"], splits["validation"] = carve_validation(splits["train"], size, seed)
    order = [s for s in ("train", "validation", "test") if s in splits]
    return datasets.DatasetDict({s: splits[s] for s in order})


def _check_name(name: str) -> None:
    if name not in MIRROR_FOLDERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(MIRROR_FOLDERS)}")
