"""Metric functions the leaderboard ranks by: SQuAD exact match / F1 and ROUGE (hand-computed cases)."""

import pytest


# ---------------------------------------------------------------- SQuAD exact match / F1 (hand-computed)
def test_squad_normalisation_drops_case_punctuation_articles_and_extra_spaces():
    from pipeline.core.metrics import normalize_answer

    assert normalize_answer("  The  Denver Broncos! ") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Theatre") == "theatre"  # 'the' only as a whole word


def test_qa_metrics_take_the_best_reference_and_report_percent():
    from pipeline.core.metrics import qa_metrics

    refs = [["Denver Broncos", "the Denver Broncos"], ["Santa Clara, California"], ["1990"]]
    preds = ["denver broncos", "Santa Clara", "in 1989"]
    scores = qa_metrics(refs, preds)
    # q1 exact; q2 P=2/2 R=2/3 -> F1 0.8; q3 no shared token -> 0
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 0.8 + 0) / 3)


def test_qa_metrics_reject_mismatched_or_empty_references():
    from pipeline.core.metrics import qa_metrics

    with pytest.raises(ValueError, match="2 questions but 1 predictions"):
        qa_metrics([["a"], ["b"]], ["a"])
    with pytest.raises(ValueError, match="at least one reference"):
        qa_metrics([[]], ["a"])


# ---------------------------------------------------------------- ROUGE wiring
def test_rouge_is_percent_f1_with_stemming():
    from pipeline.core.metrics import summarization_metrics

    same = summarization_metrics(["Amanda baked cookies."], ["Amanda baked cookies."])
    assert same == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
    # stemming: "bakes" and "baked" share the stem; 'cookie'/'cookies' too
    stemmed = summarization_metrics(["Amanda baked cookies"], ["Amanda bakes cookie"])
    assert stemmed["rouge1"] == pytest.approx(100.0)
    # unigram overlap 2 of 3 reference and 2 of 4 hypothesis words -> F1 = 2*(1/2*2/3)/(1/2+2/3) = 4/7
    partial = summarization_metrics(["Jerry likes cats"], ["Jerry really likes dogs"])
    assert partial["rouge1"] == pytest.approx(100 * 4 / 7)
    assert summarization_metrics([], []) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
