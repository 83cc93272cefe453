"""pipeline.data.validate / .expectations: GX suites on raw datasets, report JSON, Data Docs, readable failures."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from pipeline.data.expectations import (
    answers_aligned,
    bio_valid,
    build_frames,
    build_suite,
    failure_hint,
    frame_columns,
    language_column,
    language_markers,
    looks_like,
)
from pipeline.data.readers import FEATURES, NER_TAGS
from pipeline.data.validate import DataValidationError, validate_dataset


def save_raw(name: str, splits: dict[str, dict], features: datasets.Features | None = None) -> Path:
    """Write data/raw/<name> in the cwd as ingest would (features default to the canonical ones)."""
    features = features or FEATURES[name]
    dsdict = datasets.DatasetDict(
        {s: datasets.Dataset.from_dict(cols, features=features) for s, cols in splits.items()}
    )
    path = Path("data/raw") / name
    dsdict.save_to_disk(str(path))
    return path


def emotion_rows(n: int, start: int = 0) -> dict:
    return {"text": [f"i feel number {i} today" for i in range(start, start + n)], "label": [i % 6 for i in range(n)]}


def tag_ids(*tags: str) -> list[int]:
    return [NER_TAGS.index(t) for t in tags]


# ---------------------------------------------------------------- helper columns
@pytest.mark.parametrize(
    "tags,ok",
    [
        (["O", "B-PER", "I-PER", "O"], True),
        (["B-LOC", "I-LOC", "I-LOC", "B-LOC"], True),
        (["I-PER"], False),
        (["O", "I-ORG"], False),
        (["B-PER", "I-ORG"], False),
        ([], True),
    ],
)
def test_bio_valid(tags, ok):
    assert bio_valid(tags) is ok


def test_frames_flag_duplicates_leaks_and_conll_helpers():
    feats = FEATURES["conll2003"]
    train = {
        "tokens": [["EU", "rejects"], ["EU", "rejects"], ["Peter"]],
        "ner_tags": [tag_ids("B-ORG", "O"), tag_ids("B-ORG", "O"), tag_ids("I-PER")],
    }
    test = {"tokens": [["Peter"]], "ner_tags": [tag_ids("B-PER")]}
    dsdict = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(train, features=feats),
            "test": datasets.Dataset.from_dict(test, features=feats),
        }
    )
    frames = build_frames("conll2003", dsdict)
    train_frame = frames["train"]
    assert sorted(train_frame.columns) == sorted(frame_columns("conll2003"))
    assert train_frame["is_duplicate"].tolist() == [False, True, False]
    assert train_frame["in_test"].tolist() == [False, False, True]
    assert train_frame["bio_valid"].tolist() == [True, True, False]
    assert train_frame["text"][0] == "EU rejects" and train_frame["tags"][0] == "B-ORG O"
    assert frames["test"]["in_test"].tolist() == [False]


def test_frames_translation_ratio_and_wikitext_blank_lines():
    pairs = {"en": ["A dog.", "Cats", ""], "de": ["Ein Hund.", "", "Vogel"]}
    ds = datasets.DatasetDict({"test": datasets.Dataset.from_dict(pairs, features=FEATURES["multi30k"])})
    ratio = build_frames("multi30k", ds)["test"]["len_ratio"].tolist()
    assert ratio == [pytest.approx(9 / 6), 0.0, 0.0]  # an empty side is out of any bounds
    lines = {"text": ["", " = T = \n", "", " = T = \n"]}
    ds = datasets.DatasetDict({"test": datasets.Dataset.from_dict(lines, features=FEATURES["wikitext"])})
    frame = build_frames("wikitext", ds)["test"]
    assert frame["is_blank"].tolist() == [True, False, True, False]
    assert frame["is_duplicate"].tolist() == [False, False, False, True]  # blank lines are not duplicates


def test_suite_thresholds_come_from_params(make_params):
    params = make_params(validate={"datasets": {"multi30k": {"min_length_ratio": 0.5, "max_length_ratio": 2.0}}})
    suite = build_suite("multi30k", params.validate_.datasets["multi30k"])
    ratio = [
        e
        for e in suite.expectations
        if getattr(e, "column", None) == "len_ratio" and e.expectation_type == "expect_column_values_to_be_between"
    ]
    assert len(ratio) == 1 and (ratio[0].min_value, ratio[0].max_value, ratio[0].mostly) == (0.5, 2.0, 0.999)


@pytest.mark.parametrize(
    "text,lang,ok",
    [
        ("A man in a blue shirt is standing on a ladder.", "en", True),
        ("Ein Mann in einem blauen Hemd steht auf einer Leiter.", "de", True),
        ("Ein Mann in einem blauen Hemd steht auf einer Leiter.", "en", False),
        ("A man in a blue shirt is standing on a ladder.", "de", False),
        ("Zwei Frauen in Tank-Tops blicken in die Kamera.", "de", True),  # "in" belongs to neither language
        ("Mädchen läuft über grüne Wiese.", "de", True),  # umlauts and ß are German markers
        ("Young woman climbing rock face", "en", False),  # no marker at all
        ("", "en", False),
        (None, "de", False),
    ],
)
def test_looks_like_needs_a_marker_and_no_more_of_the_other_language(text, lang, ok):
    assert looks_like(text, lang) is ok


def test_language_markers_count_words_not_substrings():
    assert language_markers("The man and the dog") == {"en": 3, "de": 0}
    assert language_markers("Theater, Dieb, Einstein") == {"en": 0, "de": 0}
    assert language_markers("Die Frau und das Kind für Müller") == {"en": 0, "de": 5}


def test_frames_flag_each_translation_side_that_is_not_its_language():
    pairs = {"en": ["A dog on the grass.", "Ein Hund auf dem Gras."], "de": ["Ein Hund auf dem Gras.", "A dog."]}
    ds = datasets.DatasetDict({"test": datasets.Dataset.from_dict(pairs, features=FEATURES["multi30k"])})
    frame = build_frames("multi30k", ds)["test"]
    assert language_column("en") == "en_looks_english" and language_column("de") == "de_looks_german"
    assert frame["en_looks_english"].tolist() == [True, False]
    assert frame["de_looks_german"].tolist() == [True, False]


def test_language_check_comes_from_params_and_names_the_files(make_params):
    checks = make_params().validate_.datasets["multi30k"]
    assert checks.language_check_mostly == 0.9
    suite = build_suite("multi30k", checks)
    found = {e.column: e for e in suite.expectations if getattr(e, "column", "").endswith(("english", "german"))}
    assert set(found) == {"en_looks_english", "de_looks_german"}
    en = found["en_looks_english"]
    assert (en.value_set, en.mostly) == ([True], 0.9)
    assert "train.en.gz" in en.description and "at least 90% of its texts" in en.description
    off = make_params(validate={"datasets": {"multi30k": {"language_check_mostly": None}}})
    suite = build_suite("multi30k", off.validate_.datasets["multi30k"])
    assert not [e for e in suite.expectations if getattr(e, "column", "") == "en_looks_english"]


def test_failure_hint_names_the_split_file_of_a_language_column_only():
    assert failure_hint("multi30k", "test", "de_looks_german") == (
        "the 'de' side of split 'test' (test_2016_flickr.de.gz) does not look German: the languages look swapped "
        "(test_2016_flickr.en.gz and test_2016_flickr.de.gz exchanged?) or wrong"
    )
    assert failure_hint("multi30k", "train", "len_ratio") is None
    assert failure_hint("emotion", "train", "text") is None


# ---------------------------------------------------------------- validate_dataset
def test_passing_dataset_writes_report_and_data_docs(in_tmp_repo, make_params):
    save_raw("emotion", {"train": emotion_rows(60), "validation": emotion_rows(12, 100), "test": emotion_rows(12, 200)})
    report = validate_dataset("emotion", make_params())
    assert report["success"] is True
    saved = json.loads(Path("data/validation/emotion.json").read_text())
    assert saved["success"] is True and set(saved["splits"]) == {"train", "validation", "test"}
    expectations = {r["expectation"] for r in saved["splits"]["train"]["results"]}
    assert {
        "expect_column_value_lengths_to_be_between",
        "expect_column_values_to_be_in_set",
        "expect_column_mean_to_be_between",
        "expect_column_sum_to_be_between",
        "raw_features_match_canonical",
    } <= expectations
    docs = Path("data/validation/docs/emotion")
    assert (docs / "index.html").is_file()
    assert len(list(docs.glob("validations/**/*.html"))) == 3  # one page per split
    assert not [p for p in Path("data/validation/docs").iterdir() if p.name.startswith(".")]


def test_failure_message_names_split_expectation_count_and_rows(in_tmp_repo, make_params):
    train = emotion_rows(60)
    train["text"][7] = ""
    train["text"][9] = "x" * 500
    leaked = emotion_rows(12, 200)
    train["text"][20:23] = leaked["text"][:3]
    save_raw("emotion", {"train": train, "validation": emotion_rows(12, 100), "test": leaked})
    params = make_params(validate={"datasets": {"emotion": {"max_leaked_texts": 2}}})
    with pytest.raises(DataValidationError) as err:
        validate_dataset("emotion", params)
    message = str(err.value)
    assert "dataset 'emotion'" in message
    assert "split 'train': expect_column_value_lengths_to_be_between on column 'text'" in message
    assert "2 unexpected of 60 rows" in message
    assert '"row": 7, "text": ""' in message
    assert "expect_column_sum_to_be_between on column 'in_test'" in message and "observed 3" in message
    assert "validate.datasets.emotion" in message  # says what to change
    report = json.loads(Path("data/validation/emotion.json").read_text())
    assert report["success"] is False and report["splits"]["validation"]["success"] is True
    assert report["failed_expectations"] == 2 and report["evaluated_expectations"] > 30
    leak = next(r for r in report["splits"]["train"]["results"] if r["column"] == "in_test")
    assert leak["unexpected_count"] == 3 and [r["row"] for r in leak["offending_rows"]] == [20, 21, 22]


def test_ner_bio_and_length_mismatch_are_caught(in_tmp_repo, make_params):
    feats = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=NER_TAGS)),
        }
    )
    good = {
        "tokens": [["Peter", "Blackburn"], ["in", "Paris"]],
        "ner_tags": [tag_ids("B-PER", "I-PER"), tag_ids("O", "B-LOC")],
    }
    bad = {
        "tokens": [["Peter", "Blackburn"], ["in", "Paris", "today"]],
        "ner_tags": [tag_ids("O", "I-PER"), tag_ids("O", "B-LOC")],
    }
    save_raw(
        "conll2003",
        {"train": bad, "validation": good, "test": {"tokens": [["Rome"]], "ner_tags": [tag_ids("B-LOC")]}},
        feats,
    )
    with pytest.raises(DataValidationError) as err:
        validate_dataset("conll2003", make_params())
    message = str(err.value)
    assert "split 'train': expect_column_values_to_be_in_set on column 'bio_valid'" in message
    assert '"tags": "O I-PER"' in message
    assert "expect_column_pair_values_to_be_equal on column 'n_tokens,n_tags'" in message
    assert "split 'validation'" not in message


def test_schema_mismatch_is_reported(in_tmp_repo, make_params):
    feats = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["joy", "sadness", "love", "anger", "fear", "surprise"]),
        }
    )
    save_raw(
        "emotion", {"train": emotion_rows(30), "validation": emotion_rows(6, 50), "test": emotion_rows(6, 80)}, feats
    )
    with pytest.raises(DataValidationError, match="raw_features_match_canonical"):
        validate_dataset("emotion", make_params())


def test_missing_column_is_reported_without_running_the_suite(in_tmp_repo, make_params):
    feats = datasets.Features({"text": datasets.Value("string")})
    save_raw("sst2", {"train": {"text": ["a"]}, "validation": {"text": ["b"]}, "test": {"text": ["c"]}}, feats)
    with pytest.raises(
        DataValidationError,
        match=r"(?s)split 'train': raw_features_match_canonical.*Missing columns: train: \['label'\]",
    ):
        validate_dataset("sst2", make_params())
    assert json.loads(Path("data/validation/sst2.json").read_text())["success"] is False


def test_missing_raw_data_says_run_ingest(in_tmp_repo, make_params):
    with pytest.raises(FileNotFoundError, match=r"data/raw/sst2 not found: run the ingest stage first"):
        validate_dataset("sst2", make_params())


def test_swapped_translation_sides_fail_naming_split_side_and_files(in_tmp_repo, make_params):
    en = [f"A dog with {i} balls runs on the grass." for i in range(30)]
    de = [f"Ein Hund mit {i} Bällen läuft auf dem Gras." for i in range(30)]
    save_raw(
        "multi30k",
        {
            "train": {"en": de[:20], "de": en[:20]},  # the two files swapped
            "validation": {"en": en[20:25], "de": de[20:25]},
            "test": {"en": en[25:], "de": de[25:]},
        },
    )
    with pytest.raises(DataValidationError) as err:
        validate_dataset("multi30k", make_params())
    message = str(err.value)
    assert "Data validation failed for dataset 'multi30k'" in message
    for side, language in (("en", "English"), ("de", "German")):
        column = f"{side}_looks_{language.lower()}"
        assert f"split 'train': expect_column_values_to_be_in_set on column {column!r}" in message, message
        assert f"the {side!r} side of split 'train' (train.{side}.gz) does not look {language}" in message
    assert "languages look swapped (train.en.gz and train.de.gz exchanged?) or wrong" in message
    assert "20 unexpected of 20 rows" in message
    assert "split 'validation'" not in message and "split 'test'" not in message


# ---------------------------------------------------------------- squad / samsum
def squad_rows(split: str, articles: list[str], questions: int = 2) -> dict:
    rows = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for title in articles:
        context = f"{title} is a city founded in 1850."
        for q in range(questions):
            rows["id"].append(f"{split}-{title}-{q}")
            rows["title"].append(title)
            rows["context"].append(context)
            rows["question"].append(f"When was {title} founded ({q})?")
            rows["answers"].append({"text": ["1850"], "answer_start": [context.index("1850")]})
    return rows


def samsum_rows(split: str, n: int) -> dict:
    return {
        "id": [f"{split}{i}" for i in range(n)],
        "dialogue": [f"Ann: see you at {i} in {split}?\nBob: yes, at {i} sharp." for i in range(n)],
        "summary": [f"They meet at {i}." for i in range(n)],
    }


def test_answers_aligned():
    assert answers_aligned("Paris is big", ["Paris", "big"], [0, 9])
    assert not answers_aligned("Paris is big", ["Paris"], [1])
    assert not answers_aligned("Paris is big", ["Paris"], [])  # one start per text
    assert not answers_aligned("Paris is big", ["big"], [-3])


def test_clean_squad_and_samsum_pass(in_tmp_repo, make_params):
    save_raw(
        "squad",
        {
            "train": squad_rows("tr", ["A", "B", "C"]),
            "validation": squad_rows("va", ["D"]),
            "test": squad_rows("te", ["E"]),
        },
    )
    save_raw("samsum", {s: samsum_rows(s, 5) for s in ("train", "validation", "test")})
    assert validate_dataset("squad", make_params())["success"] is True
    assert validate_dataset("samsum", make_params())["success"] is True


def test_squad_failures_name_split_row_id_and_expectation(in_tmp_repo, make_params):
    train, test = squad_rows("tr", ["A", "B", "C"]), squad_rows("te", ["C", "E"])  # article C in two splits
    train["answers"][1] = {"text": ["1850"], "answer_start": [3]}  # does not index its answer
    train["answers"][2] = {"text": [], "answer_start": []}  # no answer
    train["question"][3] = " "
    test["id"][3] = train["id"][0]  # an id used twice
    save_raw("squad", {"train": train, "validation": squad_rows("va", ["D"]), "test": test})
    with pytest.raises(DataValidationError) as err:
        validate_dataset("squad", make_params())
    message = str(err.value)
    for fragment in (
        "split 'train': expect_column_values_to_be_in_set on column 'answers_aligned'",
        '"row": 1, "id": "tr-A-1"',
        "split 'train': expect_column_values_to_be_between on column 'n_answers'",
        '"row": 2, "id": "tr-B-0"',
        "split 'train': expect_column_values_to_not_match_regex on column 'question'",
        "split 'test': expect_column_values_to_be_in_set on column 'in_other_split'",
        '"title": "C"',
        "split 'test': expect_column_values_to_be_in_set on column 'id_repeated'",
        '"row": 3, "id": "tr-A-0"',
        "split 'train' holds articles of dev-v1.1.json.zip",
    ):
        assert fragment in message, f"{fragment!r} missing:\n{message}"
    report = json.loads(Path("data/validation/squad.json").read_text())
    assert report["splits"]["validation"]["success"] is True


def test_samsum_failures_name_split_row_id_and_expectation(in_tmp_repo, make_params):
    train, validation, test = (samsum_rows(s, 120) for s in ("train", "validation", "test"))
    validation["dialogue"][4] = test["dialogue"][9]  # a dialogue in two splits
    test["summary"][2] = ""
    for i in range(2):  # 2 of 120 summaries longer than their dialogue: more than 1 %
        train["summary"][i] = train["dialogue"][i] + " and more"
    save_raw("samsum", {"train": train, "validation": validation, "test": test})
    with pytest.raises(DataValidationError) as err:
        validate_dataset("samsum", make_params())
    message = str(err.value)
    for fragment in (
        "split 'validation': expect_column_values_to_be_in_set on column 'in_other_split'",
        '"row": 4, "id": "validation4"',
        "split 'test': expect_column_values_to_be_in_set on column 'in_other_split'",
        '"row": 9, "id": "test9"',
        "split 'test': expect_column_value_lengths_to_be_between on column 'summary'",
        "split 'train': expect_column_values_to_be_in_set on column 'summary_shorter' (mostly=0.99, value_set=[True])",
        "2 unexpected of 120 rows",
        "split 'test' is read from samsum.zip (member samsum/test.json)",
    ):
        assert fragment in message, f"{fragment!r} missing:\n{message}"


def test_summary_shorter_check_comes_from_params(make_params):
    def check(params):
        suite = build_suite("samsum", params.validate_.datasets["samsum"])
        return [e.mostly for e in suite.expectations if getattr(e, "column", None) == "summary_shorter"]

    assert check(make_params()) == [0.99]
    assert check(make_params(validate={"datasets": {"samsum": {"summary_shorter_mostly": None}}})) == []
    assert "summary_shorter" in frame_columns("samsum") and "answers_aligned" in frame_columns("squad")
