"""What the validate stage checks: one Great Expectations suite per dataset, and the pandas frame it runs on.

The frame holds the canonical columns in a checkable form plus helper columns for checks that built-in
expectations cannot express on raw lists or across splits:
  row          position in the split (GX reports offending rows by it)
  n_chars      characters of the text (conll2003: tokens joined by spaces)
  n_tokens / n_tags / bio_valid / tags_known   conll2003 only
  len_ratio    multi30k only: len(de) / len(en) (inf when en is empty)
  en_looks_english / de_looks_german   multi30k only: the side's text looks like its language (looks_like)
  is_blank     wikitext only: empty line (a legitimate paragraph break there)
  n_answers / answers_aligned   squad only: answers of the question; every answer_start indexes its answer text
  summary_shorter   samsum only: the summary has fewer characters than its dialogue
  id_repeated  squad/samsum: the row's id occurs more than once across all splits
  in_other_split    squad: the row's article (title) is also in another split; samsum: its dialogue is
  is_duplicate the row's content already appeared earlier in the split (wikitext: non-blank lines only)
  in_test      train/validation only: the row's content also appears in the test split (leakage)
"""

from __future__ import annotations

import re

import datasets
import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd

from pipeline.core.config import DatasetChecks
from pipeline.data.readers import (
    FEATURES,
    MIRROR_FILES,
    NER_TAGS,
    SAMSUM_FILE,
    SAMSUM_MEMBERS,
    SQUAD_FILE,
    SQUAD_MEMBER,
)

ROW = "row"
# columns shown when a row is reported as offending
DISPLAY_COLUMNS: dict[str, list[str]] = {
    "emotion": ["text", "label"],
    "sst2": ["text", "label"],
    "conll2003": ["text", "tags"],
    "multi30k": ["en", "de"],
    "wikitext": ["text"],
    "squad": ["id", "title", "question"],
    "samsum": ["id", "dialogue", "summary"],
}
TEXT_COLUMNS: dict[str, list[str]] = {
    "emotion": ["text"],
    "sst2": ["text"],
    "conll2003": ["text"],
    "multi30k": ["en", "de"],
    "wikitext": ["text"],
    "squad": ["question", "context"],
    "samsum": ["dialogue", "summary"],
}
# squad/samsum: the column whose value may not occur in two splits
SPLIT_KEY = {"squad": "title", "samsum": "dialogue"}
WIKITEXT_MAX_BLANK_FRACTION = 0.5  # real WikiText-2: about a third of the lines are blank paragraph breaks

# ---------------------------------------------------------------- language of a translation side
LANGUAGE_NAMES = {"en": "English", "de": "German"}
_WORD = re.compile(r"[^\W\d_]+")  # a run of letters


def words(text: str) -> list[str]:
    """The lower-cased words of `text` (letters only: digits and punctuation split words)."""
    return _WORD.findall(text.lower())


# closed-class words (articles, prepositions, pronouns, auxiliaries, small numerals) frequent in image captions,
# each spelled differently in the other language; words of both ("in", "an", "was", "man", "hat") are left out
LANGUAGE_MARKERS: dict[str, frozenset[str]] = {
    "en": frozenset(
        words(
            "the a of and is are on with at to for from by his her its their while this that some who into near "
            "two three four"
        )
    ),
    "de": frozenset(
        words(
            "der die das den dem des ein eine einen einem einer eines und mit auf ist sind im am zum zur vom beim "
            "von zu bei sich seine ihre ihrem ihren für über während zwei drei vier"
        )
    ),
}
LANGUAGE_LETTERS = {"de": frozenset("äöüß")}  # a word with one of these is a marker too


def language_markers(text: str) -> dict[str, int]:
    """language -> how many words of `text` are markers of it (each word counts at most once per language)."""
    found = words(text)
    letters = {lang: LANGUAGE_LETTERS.get(lang, frozenset()) for lang in LANGUAGE_MARKERS}
    return {
        lang: sum(w in markers or not letters[lang].isdisjoint(w) for w in found)
        for lang, markers in LANGUAGE_MARKERS.items()
    }


def looks_like(text: str | None, lang: str) -> bool:
    """`text` has at least one marker of `lang` and no more markers of any other language."""
    if not isinstance(text, str):
        return False
    counts = language_markers(text)
    return counts[lang] >= 1 and all(n <= counts[lang] for other, n in counts.items() if other != lang)


def language_column(side: str) -> str:
    return f"{side}_looks_{LANGUAGE_NAMES[side].lower()}"


# ---------------------------------------------------------------- frames
def build_frames(name: str, dsdict: datasets.DatasetDict) -> dict[str, pd.DataFrame]:
    """split -> the frame the suite runs on (leakage flags need the test split)."""
    frames = {split: _base_frame(name, ds) for split, ds in dsdict.items()}
    if name in SPLIT_KEY:
        _flag_across_splits(name, frames)
    test_keys = set(frames["test"]["_key"].dropna()) if "test" in frames else set()
    for split, frame in frames.items():
        if split == "test":
            frame["in_test"] = False
        else:
            frame["in_test"] = frame["_key"].isin(test_keys) & frame["_key"].notna()
        key = frame["_key"]
        frame["is_duplicate"] = key.notna() & key.duplicated(keep="first")
        frames[split] = frame.drop(columns="_key")
    return frames


def _flag_across_splits(name: str, frames: dict[str, pd.DataFrame]) -> None:
    """id_repeated (the id occurs twice anywhere) and in_other_split (SPLIT_KEY's value is in another split)."""
    ids = pd.concat([frame["id"] for frame in frames.values()], ignore_index=True)
    counts = ids.value_counts(dropna=True)
    key = SPLIT_KEY[name]
    values = {split: set(frame[key].dropna()) for split, frame in frames.items()}
    for split, frame in frames.items():
        others = set().union(*(v for s, v in values.items() if s != split))
        frame["id_repeated"] = frame["id"].map(counts).fillna(0).gt(1)
        frame["in_other_split"] = frame[key].isin(others) & frame[key].notna()


def _base_frame(name: str, ds: datasets.Dataset) -> pd.DataFrame:
    raw = ds.to_pandas()
    frame = pd.DataFrame({ROW: np.arange(len(raw), dtype="int64")})
    if name in ("emotion", "sst2"):
        frame["text"] = raw["text"]
        frame["label"] = raw["label"]
        frame["n_chars"] = raw["text"].str.len()
        frame["_key"] = raw["text"]
    elif name == "conll2003":
        tokens = raw["tokens"].map(lambda t: [] if t is None else list(t))
        tags = raw["ner_tags"].map(lambda t: [] if t is None else [int(i) for i in t])
        frame["text"] = tokens.map(" ".join)
        frame["tags"] = tags.map(lambda ids: " ".join(NER_TAGS[i] if 0 <= i < len(NER_TAGS) else f"<{i}>" for i in ids))
        frame["n_chars"] = frame["text"].str.len()
        frame["n_tokens"] = tokens.map(len)
        frame["n_tags"] = tags.map(len)
        frame["tags_known"] = tags.map(lambda ids: all(0 <= i < len(NER_TAGS) for i in ids))
        frame["bio_valid"] = tags.map(
            lambda ids: bio_valid([NER_TAGS[i] if 0 <= i < len(NER_TAGS) else "O" for i in ids])
        )
        frame["_key"] = frame["text"]
    elif name == "multi30k":
        frame["en"] = raw["en"]
        frame["de"] = raw["de"]
        en_len = raw["en"].str.len()
        de_len = raw["de"].str.len()
        frame["n_chars_en"] = en_len
        frame["n_chars_de"] = de_len
        ratio = (de_len / en_len).astype("float64")  # null when a side is null
        frame["len_ratio"] = ratio.mask(en_len.eq(0) | de_len.eq(0), 0.0)  # an empty side: out of any bounds
        for side in ("en", "de"):
            frame[language_column(side)] = raw[side].map(lambda text, side=side: looks_like(text, side)).astype(bool)
        frame["_key"] = raw["en"] + "\t" + raw["de"]
    elif name == "squad":
        for column in ("id", "title", "question", "context"):
            frame[column] = raw[column]
        answers = raw["answers"].map(_answer_lists)
        frame["n_answers"] = answers.map(lambda a: len(a[0])).astype("int64")
        frame["answers_aligned"] = [
            answers_aligned(context, texts, starts) for context, (texts, starts) in zip(raw["context"], answers)
        ]
        frame["_key"] = raw["context"] + "\n" + raw["question"]
    elif name == "samsum":
        for column in ("id", "dialogue", "summary"):
            frame[column] = raw[column]
        frame["summary_shorter"] = [
            isinstance(d, str) and isinstance(s, str) and len(s) < len(d)
            for d, s in zip(raw["dialogue"], raw["summary"])
        ]
        frame["_key"] = raw["dialogue"]
    else:  # wikitext
        frame["text"] = raw["text"]
        frame["n_chars"] = raw["text"].str.len()
        frame["is_blank"] = raw["text"].eq("")
        frame["_key"] = raw["text"].where(~frame["is_blank"])
    return frame


def _answer_lists(answers) -> tuple[list, list]:
    """(texts, starts) of one row's answers struct (None-safe)."""
    if not isinstance(answers, dict):
        return [], []
    texts, starts = answers.get("text"), answers.get("answer_start")
    return ([] if texts is None else list(texts)), ([] if starts is None else list(starts))


def answers_aligned(context: str | None, texts: list, starts: list) -> bool:
    """Every answer_start indexes its answer text in the context: context[start:start+len(text)] == text."""
    if not isinstance(context, str) or len(texts) != len(starts):
        return False
    return all(
        isinstance(text, str)
        and start is not None
        and int(start) >= 0
        and context[int(start) : int(start) + len(text)] == text
        for text, start in zip(texts, starts)
    )


def bio_valid(tags: list[str]) -> bool:
    """IOB2: I-X only right after B-X or I-X."""
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return False
        previous = tag
    return True


# ---------------------------------------------------------------- suite
def build_suite(name: str, checks: DatasetChecks) -> gx.ExpectationSuite:
    """The expectation suite of one dataset, with thresholds from params.yaml validate.datasets.<name>."""
    expectations = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectTableColumnsToMatchSet(column_set=frame_columns(name), exact_match=True),
        *_text_expectations(name, checks),
        *_kind_expectations(name, checks),
        gxe.ExpectColumnMeanToBeBetween(column="is_duplicate", min_value=0, max_value=checks.max_duplicate_fraction),
        gxe.ExpectColumnSumToBeBetween(column="in_test", min_value=0, max_value=checks.max_leaked_texts),
    ]
    # not yet bound to a context: validate.py adds it to its own (context.suites.add)
    return gx.ExpectationSuite(name=f"{name}_raw", expectations=expectations)


def frame_columns(name: str) -> list[str]:
    per_kind = {
        "emotion": ["text", "label", "n_chars"],
        "sst2": ["text", "label", "n_chars"],
        "conll2003": ["text", "tags", "n_chars", "n_tokens", "n_tags", "tags_known", "bio_valid"],
        "multi30k": ["en", "de", "n_chars_en", "n_chars_de", "len_ratio", *map(language_column, ("en", "de"))],
        "wikitext": ["text", "n_chars", "is_blank"],
        "squad": [
            "id",
            "title",
            "question",
            "context",
            "n_answers",
            "answers_aligned",
            "id_repeated",
            "in_other_split",
        ],
        "samsum": ["id", "dialogue", "summary", "summary_shorter", "id_repeated", "in_other_split"],
    }
    return [ROW, *per_kind[name], "is_duplicate", "in_test"]


def _text_expectations(name: str, checks: DatasetChecks) -> list:
    out = []
    for column in TEXT_COLUMNS[name]:
        out += [
            gxe.ExpectColumnValuesToNotBeNull(column=column),
            gxe.ExpectColumnValuesToBeOfType(column=column, type_="str"),
            gxe.ExpectColumnValueLengthsToBeBetween(
                column=column, min_value=checks.min_chars, max_value=checks.max_chars
            ),
            # whitespace-only text is empty text in disguise (wikitext stores its blank lines as "")
            gxe.ExpectColumnValuesToNotMatchRegex(column=column, regex=r"^\s+$"),
        ]
    return out


def _kind_expectations(name: str, checks: DatasetChecks) -> list:
    if name in ("emotion", "sst2"):
        label = FEATURES[name]["label"]
        return [
            gxe.ExpectColumnValuesToNotBeNull(column="label"),
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(label.num_classes))),
        ]
    if name == "conll2003":
        return [
            gxe.ExpectColumnValuesToBeBetween(column="n_tokens", min_value=1),
            gxe.ExpectColumnPairValuesToBeEqual(column_A="n_tokens", column_B="n_tags"),
            gxe.ExpectColumnValuesToBeInSet(column="tags_known", value_set=[True]),
            gxe.ExpectColumnValuesToBeInSet(column="bio_valid", value_set=[True]),
        ]
    if name == "multi30k":
        out = [gxe.ExpectColumnValuesToNotBeNull(column="len_ratio")]
        if checks.min_length_ratio is not None or checks.max_length_ratio is not None:
            out.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column="len_ratio",
                    min_value=checks.min_length_ratio,
                    max_value=checks.max_length_ratio,
                    mostly=checks.length_ratio_mostly,
                )
            )
        if checks.language_check_mostly is not None:
            out += [_language_expectation(name, side, checks.language_check_mostly) for side in ("en", "de")]
        return out
    if name in ("squad", "samsum"):
        out = [
            gxe.ExpectColumnValuesToNotBeNull(column="id"),
            gxe.ExpectColumnValuesToBeInSet(
                column="id_repeated",
                value_set=[False],
                description="Every id is unique across the train, validation and test splits.",
            ),
            _no_other_split(name),
        ]
        if name == "squad":
            out += [
                gxe.ExpectColumnValuesToNotBeNull(column="title"),
                gxe.ExpectColumnValuesToBeBetween(
                    column="n_answers", min_value=1, description="Every question has at least one answer."
                ),
                gxe.ExpectColumnValuesToBeInSet(
                    column="answers_aligned",
                    value_set=[True],
                    description="Every answer_start indexes its answer text: context[start:start+len(text)] == text.",
                ),
            ]
        elif checks.summary_shorter_mostly is not None:
            out.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column="summary_shorter",
                    value_set=[True],
                    mostly=checks.summary_shorter_mostly,
                    description=(
                        f"At least {checks.summary_shorter_mostly:.1%} of the summaries are shorter than their "
                        "dialogue."
                    ),
                )
            )
        return out
    # wikitext: blank lines are paragraph breaks, but a file that is mostly blank is broken
    return [gxe.ExpectColumnMeanToBeBetween(column="is_blank", min_value=0, max_value=WIKITEXT_MAX_BLANK_FRACTION)]


def _no_other_split(name: str):
    what = {"squad": "article (title)", "samsum": "dialogue"}[name]
    return gxe.ExpectColumnValuesToBeInSet(
        column="in_other_split",
        value_set=[False],
        description=f"No {what} occurs in two of the train, validation and test splits.",
    )


def _language_expectation(name: str, side: str, mostly: float):
    """At least `mostly` of the `side` texts look like that language (looks_like)."""
    language = LANGUAGE_NAMES[side]
    others = "/".join(LANGUAGE_NAMES[lang] for lang in LANGUAGE_NAMES if lang != side)
    files = ", ".join(_side_file(name, split, side) for split in MIRROR_FILES[name])
    return gxe.ExpectColumnValuesToBeInSet(
        column=language_column(side),
        value_set=[True],
        mostly=mostly,
        description=(
            f"The {side!r} side of each pair (files {files}) is {language}: at least {mostly:.0%} of its texts "
            f"hold at least one {language} function word and no more {others} markers than {language} ones."
        ),
    )


def failure_hint(name: str, split: str, column: str | None) -> str | None:
    """What a failed expectation on `column` most likely means for this split's source files, if known."""
    if name == "squad":
        return f"split {split!r} holds articles of {SQUAD_FILE} (member {SQUAD_MEMBER}), split by title at ingest"
    if name == "samsum":
        return f"split {split!r} is read from {SAMSUM_FILE} (member {SAMSUM_MEMBERS.get(split, split)})"
    sides = {language_column(side): side for side in LANGUAGE_NAMES} if name == "multi30k" else {}
    if column not in sides:
        return None
    side = sides[column]
    pair = " and ".join(_side_file(name, split, s) for s in LANGUAGE_NAMES)
    return (
        f"the {side!r} side of split {split!r} ({_side_file(name, split, side)}) does not look "
        f"{LANGUAGE_NAMES[side]}: the languages look swapped ({pair} exchanged?) or wrong"
    )


def _side_file(name: str, split: str, side: str) -> str:
    """The mirror file one side of a translation split is read from (e.g. train.en.gz)."""
    (file,) = [f for f in MIRROR_FILES[name][split] if f.split(".")[-2] == side]
    return file
