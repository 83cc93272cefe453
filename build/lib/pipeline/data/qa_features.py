"""Extractive question answering (SQuAD): question + context -> overlapping windows of model inputs, and the
model's start/end logits per window -> the best answer span of the context.

- `encode_windows`: a (fast) tokenizer encodes question + context pairs; a context longer than max_length is
  split into windows that overlap by `stride` tokens (only the context is cut, never the question). Each window
  keeps its example index and, per token, the character span it covers in the context ((-1, -1) for question,
  special and padding tokens). With answers, each window gets start/end token positions of the first answer,
  or the CLS position (0) when the answer is not (wholly) inside the window.
- `best_answers`: per example, the n-best start and end tokens of each window make candidate spans (inside the
  context, end >= start, at most max_answer_length tokens); the best-scoring one (start + end logit) across
  the example's windows is the answer, its character span cut from the context. Its score is the softmax of
  its logit sum over all the candidates of that example (a probability-like number in (0, 1]).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CLS_POSITION = 0  # where the start/end labels of a window without the answer point
NO_OFFSET = (-1, -1)  # a token that is not part of the context


@dataclass
class Windows:
    """Model inputs of every window, plus what maps them back to the examples' contexts."""

    inputs: dict[str, list[list[int]]]  # input_ids, attention_mask (, token_type_ids)
    example_index: list[int]  # window -> example
    offsets: list[list[tuple[int, int]]]  # window -> per token (start, end) character span in the context
    start_positions: list[int] | None = None
    end_positions: list[int] | None = None

    def __len__(self) -> int:
        return len(self.example_index)

    def rows(self) -> dict[str, list]:
        """Columns for a datasets.Dataset the Trainer reads: model inputs (+ labels when there are answers)."""
        out = dict(self.inputs)
        if self.start_positions is not None:
            out["start_positions"], out["end_positions"] = self.start_positions, self.end_positions
        return out


def clip_questions(tokenizer, questions: Sequence[str], max_tokens: int) -> list[str]:
    """Questions cut to at most max_tokens tokens (an over-long question would leave no room for the context)."""
    enc = tokenizer([q.strip() for q in questions], add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for question, offsets in zip(questions, enc["offset_mapping"]):
        question = question.strip()
        out.append(question if len(offsets) <= max_tokens else question[: offsets[max_tokens - 1][1]])
    return out


def encode_windows(
    tokenizer,
    questions: Sequence[str],
    contexts: Sequence[str],
    max_length: int,
    stride: int,
    answers: Sequence[dict] | None = None,
) -> Windows:
    """Windows of question + context (see the module doc). `answers`: SQuAD's {"text": [...], "answer_start":
    [...]} per example; the first answer labels the windows."""
    if not tokenizer.is_fast:
        raise ValueError(f"{type(tokenizer).__name__}: extractive QA needs a fast tokenizer (offset mappings)")
    stride = max(0, min(stride, max_length // 4))
    questions = clip_questions(tokenizer, questions, max_length // 2)
    enc = tokenizer(
        list(questions),
        list(contexts),
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    example_index = [int(i) for i in enc["overflow_to_sample_mapping"]]
    offsets = []
    for w in range(len(example_index)):
        sequence_ids = enc.sequence_ids(w)
        offsets.append([tuple(o) if s == 1 else NO_OFFSET for o, s in zip(enc["offset_mapping"][w], sequence_ids)])
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    windows = Windows(inputs, example_index, offsets)
    if answers is not None:
        labels = [answer_tokens(offsets[w], answers[example_index[w]]) for w in range(len(example_index))]
        windows.start_positions = [s for s, _ in labels]
        windows.end_positions = [e for _, e in labels]
    return windows


def answer_tokens(offsets: Sequence[tuple[int, int]], answer: dict) -> tuple[int, int]:
    """(start, end) token positions of the first answer in a window, or (CLS, CLS) when it is not wholly inside."""
    if not answer["text"]:
        return CLS_POSITION, CLS_POSITION
    start_char = int(answer["answer_start"][0])
    end_char = start_char + len(answer["text"][0])
    context = [i for i, o in enumerate(offsets) if o != NO_OFFSET]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return CLS_POSITION, CLS_POSITION
    start = next(i for i in context if offsets[i][1] > start_char)
    end = next(i for i in reversed(context) if offsets[i][0] < end_char)
    return start, end


def _top(logits: np.ndarray, n: int) -> np.ndarray:
    return np.argsort(logits)[::-1][:n]


def best_answers(
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    windows: Windows,
    contexts: Sequence[str],
    n_best: int,
    max_answer_length: int,
) -> list[tuple[str, float]]:
    """(answer text, score) per example: the best valid span over its windows (see the module doc); ("", 0.0)
    when no window has one. Logit rows may be longer than their window (padding): positions past the window's
    offsets are never chosen."""
    candidates: list[list[tuple[float, int, int]]] = [[] for _ in contexts]  # (logit sum, start char, end char)
    for w, example in enumerate(windows.example_index):
        offsets = windows.offsets[w]
        start_row = np.asarray(start_logits[w], dtype=np.float64)[: len(offsets)]  # [window_len]
        end_row = np.asarray(end_logits[w], dtype=np.float64)[: len(offsets)]  # [window_len]
        for s in _top(start_row, n_best):
            if offsets[s] == NO_OFFSET:
                continue
            for e in _top(end_row, n_best):
                if offsets[e] == NO_OFFSET or e < s or e - s + 1 > max_answer_length:
                    continue
                candidates[example].append((float(start_row[s] + end_row[e]), offsets[s][0], offsets[e][1]))
    out = []
    for context, found in zip(contexts, candidates):
        if not found:
            out.append(("", 0.0))
            continue
        found.sort(key=lambda c: -c[0])
        found = found[:n_best]
        logits = np.array([c[0] for c in found])
        probs = np.exp(logits - logits.max())
        _, start, end = found[0]
        out.append((context[start:end], float(probs[0] / probs.sum())))
    return out
