"""Turn prepared task data into model inputs, per task kind, and batch them with dynamic padding.

- classification: text -> input_ids, label -> labels.
- ner: words -> sub-word tokens; each word's label goes on its FIRST sub-token, the other positions get -100.
  Words are aligned through character offsets (text = words joined by spaces), which works the same for
  WordPiece and byte-level BPE tokenizers and for raw text at serving time.
- source -> target text (TEXT_PAIRS: translation en -> de, summarization dialogue -> summary):
  decoder-only (GPT): `prompt(source) + " " + target + eos`, the loss on the target only;
  encoder-decoder: source -> encoder input_ids (encoder tokenizer), target + eos -> labels (decoder tokenizer).
- qa, decoder-only (GPT): `Context: <context>\nQuestion: <question>\nAnswer:` + " " + first answer + eos; the loss
  is on the answer only; a long context is cut, never the question or the cue. (Extractive QA windows for the
  bert family: pipeline/data/qa_features.py.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, repeat
from operator import call
from pathlib import Path

import datasets
import torch

from pipeline.core import paths
from pipeline.core.config import TASK_SPECS
from pipeline.data.qa_features import answer_tokens

IGNORE_INDEX = -100  # label value the loss skips (torch CrossEntropyLoss default)
_WORD = re.compile(r"\S+")


class TaskDataError(RuntimeError):
    """Prepared task data is missing or does not have the task's columns."""


REQUIRED_COLUMNS = {
    "classification": ("text", "label"),
    "ner": ("tokens", "ner_tags"),
    "translation": ("en", "de"),
    # answers: {"text": [str, ...], "answer_start": [int, ...]} (character offsets into context), as on the hub
    "qa": ("id", "title", "context", "question", "answers"),
    "summarization": ("id", "dialogue", "summary"),
}


def task_kind(task: str) -> str:
    if task not in TASK_SPECS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_SPECS)}")
    return TASK_SPECS[task].kind


def load_prepared(task: str, root: Path | None = None) -> datasets.DatasetDict:
    """data/prepared/<task> with its train/validation/test splits and the task's columns."""
    folder = (root or Path.cwd()) / paths.prepared_dir(task)
    if not folder.exists():
        raise TaskDataError(f"{folder} not found: run the prepare stage first (python -m flows.data prepare {task})")
    data = datasets.load_from_disk(str(folder))
    check_columns(data, task, str(folder))
    return data


def cap_split(ds: datasets.Dataset, cap: int | None, seed: int) -> datasets.Dataset:
    """At most `cap` rows: a seeded shuffle then the first `cap`; all rows in their order when cap is None or larger."""
    if cap is None or len(ds) <= cap:
        return ds
    # keep_in_memory: datasets would otherwise write cache-*.arrow files into data/raw/<dataset>/, which
    # changes the ingest stage's DVC output and makes every downstream stage look stale.
    return (
        ds.shuffle(seed=seed, keep_in_memory=True)
        .select(range(cap), keep_in_memory=True)
        .flatten_indices(keep_in_memory=True)
    )


def train_share(data: datasets.DatasetDict, max_examples: int | None, seed: int) -> datasets.DatasetDict:
    """data with its train split cut to a run's share (train.tasks.<task>.max_train_examples): a seeded sample of
    at most max_examples rows, the whole split when None or larger; validation and test unchanged."""
    if max_examples is None or len(data["train"]) <= max_examples:
        return data
    return datasets.DatasetDict({**data, "train": cap_split(data["train"], max_examples, seed)})


def check_columns(data: datasets.DatasetDict, task: str, where: str = "task data") -> None:
    for split in ("train", "validation", "test"):
        if split not in data:
            raise TaskDataError(f"{where}: split {split!r} missing (has {list(data)}); re-run prepare for {task}")
        missing = [c for c in REQUIRED_COLUMNS[task_kind(task)] if c not in data[split].column_names]
        if missing:
            raise TaskDataError(f"{where}/{split}: column(s) {missing} missing (has {data[split].column_names})")


def label_names(data: datasets.DatasetDict, task: str) -> list[str]:
    """Class names (classification) or tag names (ner), in label-id order, from the ClassLabel feature."""
    kind = task_kind(task)
    features = data["train"].features
    if kind == "classification":
        return list(features["label"].names)
    if kind == "ner":
        return list(features["ner_tags"].feature.names)
    raise ValueError(f"task {task!r} ({kind}) has no labels")


def tokenize_split(split: datasets.Dataset, encode) -> datasets.Dataset:
    """encode(the whole split as one batch) as an in-memory Dataset: one Arrow write. `datasets.map`'s per-batch
    machinery (batch formatting, writer, feature inference, fingerprinting the closure and the tokenizer in it)
    cost more than the tokenization on short texts (bench data_tokenization); nothing is cached on disk, so no
    cache-*.arrow lands in data/."""
    if len(split) == 0:  # no rows to infer the columns' types from: map keeps the empty columns typed
        return split.map(encode, batched=True, remove_columns=split.column_names, keep_in_memory=True)
    import pyarrow as pa
    from datasets.fingerprint import generate_random_fingerprint
    from datasets.table import InMemoryTable

    columns = {k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in encode(split[:]).items()}
    # a random fingerprint, as for any in-memory data: hashing the new table's state took longer than encoding it
    return datasets.Dataset(InMemoryTable(pa.table(columns)), fingerprint=generate_random_fingerprint())


def list_column(values, lengths: Sequence[int], dtype: str):
    """A column of integer lists as one Arrow array from its flat values (an iterable, a numpy array, or None: all
    ones) and each row's length: no per-value type inference as in `Dataset.from_dict` (bench data_tokenization)."""
    import numpy as np
    import pyarrow as pa

    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    if values is None:
        values = np.ones(total, dtype=dtype)
    elif not isinstance(values, np.ndarray):
        values = np.fromiter(values, dtype, total)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(dtype, copy=False)))


def encodings(tokenizer, texts: list[str], max_length: int) -> list:
    """The fast tokenizer's Rust encodings of `texts` (special tokens added, truncated to max_length, no padding):
    what `tokenizer(texts, truncation=True, max_length=max_length)` computes before it copies every field of every
    encoding into Python lists (BatchEncoding: token type ids, masks, offsets ...), which took more time than the
    tokenization itself on short texts (bench data_tokenization). Read only the fields needed: `.ids`,
    `.attention_mask`, `.offsets`. The tokenizer's truncation/padding are set as its own call sets them."""
    from transformers.tokenization_utils_base import PaddingStrategy, TruncationStrategy

    tokenizer.set_truncation_and_padding(
        padding_strategy=PaddingStrategy.DO_NOT_PAD,
        truncation_strategy=TruncationStrategy.LONGEST_FIRST,
        max_length=max_length,
        stride=0,
        pad_to_multiple_of=None,
        padding_side=None,
    )
    backend = tokenizer.backend_tokenizer
    if backend.encode_special_tokens != tokenizer.split_special_tokens:
        backend.encode_special_tokens = tokenizer.split_special_tokens
    return backend.encode_batch(list(texts), add_special_tokens=True)


# ---------------------------------------------------------------- classification
def encode_classification(split: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
    def encode(batch):
        enc = encodings(tokenizer, batch["text"], max_length)
        lengths = [len(e) for e in enc]
        return {  # never padded: the attention mask is all ones
            "input_ids": list_column(chain.from_iterable(e.ids for e in enc), lengths, "int32"),
            "attention_mask": list_column(None, lengths, "int8"),
            "labels": batch["label"],
        }

    return tokenize_split(split, encode)


# ---------------------------------------------------------------- ner
def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character span of each whitespace-separated word."""
    return [m.span() for m in _WORD.finditer(text)]


def word_starts(words: Sequence[str]) -> list[int]:
    """Where each word starts in `" ".join(words)` (C-level loops: the NER hot path)."""
    return [0, *accumulate(map((1).__add__, map(len, words)))][: len(words)]  # each: the previous + length + 1


def token_words(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int | None]:
    """For each token (character offsets), the index of the word it belongs to (None: special token/space)."""
    return [None if w < 0 else w for w in _word_index(offsets, spans)]


def _word_index(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """token_words with -1 for "no word" (one pass per token: the tokenization hot loop)."""
    out: list[int] = []
    append, n, w = out.append, len(spans), 0
    for start, end in offsets:
        if end <= start:  # special tokens have empty offsets
            append(-1)
            continue
        while w < n and spans[w][1] <= start:
            w += 1
        # byte-level tokens may start on the space before the word they belong to
        append(w if w < n and spans[w][0] < end else -1)
    return out


def encode_words(tokenizer, texts: list[str], spans: list[list[tuple[int, int]]], max_length: int) -> dict:
    """Tokenize texts; return input_ids, attention_mask and word_index per token (-1: not a word)."""
    enc = encodings(tokenizer, texts, max_length)
    word_index = [_word_index(e.offsets, s) for e, s in zip(enc, spans)]
    return {
        "input_ids": [e.ids for e in enc],
        "attention_mask": [e.attention_mask for e in enc],
        "word_index": word_index,
    }


def first_subtoken_labels(word_index: Sequence[int], word_labels: Sequence[int]) -> list[int]:
    """The word's label on its first token, IGNORE_INDEX elsewhere (word indices never decrease along a text)."""
    labels: list[int] = []
    append, last = labels.append, -1
    for w in word_index:
        if w > last:
            last = w
            append(int(word_labels[w]))
        else:
            append(IGNORE_INDEX)
    return labels


def first_token_labels(encodings: Sequence, words: Sequence[Sequence[str]], word_labels: Sequence[Sequence[int]]):
    """The labels of a batch, flat (numpy int64, [sum of the encodings' lengths]): each word's label on the token that
    holds its first character in `" ".join(words)` (the Rust encoding's `char_to_token`, one call per word instead
    of every token's offsets), IGNORE_INDEX elsewhere; a word cut off by truncation gets none. The same first tokens
    as token_words + first_subtoken_labels (byte-level tokens that start on the space before a word hold its first
    character too). Word-level C loops and one numpy scatter: no Python loop per word or per text."""
    import numpy as np

    n_words = list(map(len, words))
    starts = list(chain.from_iterable(map(word_starts, words)))
    per_word = chain.from_iterable(map(repeat, (e.char_to_token for e in encodings), n_words))
    tokens = list(map(call, per_word, starts))
    row = np.repeat(np.arange(len(encodings)), n_words)  # [words]: the text each word is in
    if None in tokens:  # cut off by truncation, or a first character without a token (dropped by the normalizer)
        flat_words = list(chain.from_iterable(words))
        for i in (i for i, t in enumerate(tokens) if t is None):
            later = map(encodings[row[i]].char_to_token, range(starts[i] + 1, starts[i] + len(flat_words[i])))
            tokens[i] = next((t for t in later if t is not None), -1)
    token = np.array(tokens, dtype=np.int64)  # [words]
    offsets = np.zeros(len(encodings) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encodings], out=offsets[1:])
    labels = np.full(int(offsets[-1]), IGNORE_INDEX, dtype=np.int64)  # [tokens of all texts]
    kept = token >= 0
    labels[(token + offsets[row])[kept]] = np.fromiter(chain.from_iterable(word_labels), np.int64, len(token))[kept]
    return labels


def encode_ner(split: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
    def encode(batch):
        enc = encodings(tokenizer, list(map(" ".join, batch["tokens"])), max_length)
        lengths = [len(e) for e in enc]
        return {  # never padded: the attention mask is all ones
            "input_ids": list_column(chain.from_iterable(e.ids for e in enc), lengths, "int32"),
            "attention_mask": list_column(None, lengths, "int8"),
            "labels": list_column(first_token_labels(enc, batch["tokens"], batch["ner_tags"]), lengths, "int64"),
        }

    return tokenize_split(split, encode)


def word_predictions(pred_ids: Sequence[int], labels: Sequence[int]) -> list[int]:
    """Per-word predicted tag ids: the predictions at the first sub-token positions (labels != -100)."""
    return [int(p) for p, lab in zip(pred_ids, labels) if lab != IGNORE_INDEX]


# ---------------------------------------------------------------- conditional generation (source text -> target text)
@dataclass(frozen=True)
class TextPair:
    """A task kind whose examples are a source text and a target text, and how GPT is prompted with it:
    `prefix + " " + source + cue + " " + target + eos` (prefix may be empty: then no leading space)."""

    source: str  # column of the source text
    target: str  # column of the target text
    prefix: str
    cue: str  # the target follows it; never cut


TEXT_PAIRS: dict[str, TextPair] = {
    "translation": TextPair("en", "de", "English:", "\nGerman:"),
    # dialogue turns are separated by "\n" (each "Speaker: text"); the summary follows the cue
    "summarization": TextPair("dialogue", "summary", "", "\nSummary:"),
}


def text_pair(kind: str) -> TextPair:
    if kind not in TEXT_PAIRS:
        raise ValueError(f"task kind {kind!r} is not source -> target text (those are {sorted(TEXT_PAIRS)})")
    return TEXT_PAIRS[kind]


def prompt_text(kind: str, source: str) -> str:
    """The GPT prompt of one source (what prompt_ids encodes when nothing is cut)."""
    pair = text_pair(kind)
    return f"{pair.prefix} {source.strip()}{pair.cue}".lstrip(" ")


def translation_prompt(source: str) -> str:
    return prompt_text("translation", source)


def prompt_ids(tokenizer, sources: Sequence[str], max_tokens: int, kind: str = "translation") -> list[list[int]]:
    """Token ids of prompt_text(kind, source) for each source; a long source is cut at its end, never the cue
    the target follows (e.g. "\nGerman:", "\nSummary:"): the same ids in training and generation."""
    pair = text_pair(kind)
    prefix = tokenizer(pair.prefix, add_special_tokens=False)["input_ids"] if pair.prefix else []
    suffix = tokenizer(pair.cue, add_special_tokens=False)["input_ids"]
    room = max(1, max_tokens - len(prefix) - len(suffix))
    lead = " " if pair.prefix else ""
    ids = tokenizer([lead + s.strip() for s in sources], add_special_tokens=False)["input_ids"]
    return [prefix + x[:room] + suffix for x in ids]


def target_room(max_length: int, max_new_tokens: int) -> int:
    """Tokens of a causal training row kept for the target: as many as generation may write, at most half the
    row (translation: half; summarization: the rest goes to the long dialogue)."""
    return max(1, min(max_new_tokens, max_length // 2))


def prompted_rows(prompts: list[list[int]], targets: list[list[int]], eos: int, max_length: int) -> dict:
    """Causal-LM rows: prompt + target + eos cut to max_length, with labels -100 on the prompt (loss on the target)."""
    ids, labels = [], []
    for p, t in zip(prompts, targets):
        t = (t + [eos])[: max_length - len(p)]
        ids.append(p + t)
        labels.append([IGNORE_INDEX] * len(p) + t)
    return {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids], "labels": labels}


def encode_causal(
    split: datasets.Dataset, tokenizer, max_length: int, kind: str, max_new_tokens: int
) -> datasets.Dataset:
    """GPT as a conditional LM: prompt + " " + target + eos; labels are -100 on the prompt (and padding).
    The prompt gets max_length - target_room(...) tokens (its source cut at the end, the cue kept)."""
    pair, eos = text_pair(kind), tokenizer.eos_token_id
    prompt_budget = max_length - target_room(max_length, max_new_tokens)

    def encode(batch):
        prompts = prompt_ids(tokenizer, batch[pair.source], prompt_budget, kind)
        targets = tokenizer([" " + t.strip() for t in batch[pair.target]], add_special_tokens=False)["input_ids"]
        return prompted_rows(prompts, targets, eos, max_length)

    return tokenize_split(split, encode)


def encode_seq2seq(
    split: datasets.Dataset, src_tokenizer, tgt_tokenizer, kind: str, source_length: int, target_length: int
) -> datasets.Dataset:
    """Encoder-decoder: source -> input_ids (encoder tokenizer, cut at source_length); target + eos -> labels
    (decoder tokenizer, at most target_length tokens)."""
    pair, eos = text_pair(kind), tgt_tokenizer.eos_token_id

    def encode(batch):
        src = src_tokenizer(batch[pair.source], truncation=True, max_length=source_length)
        tgt = tgt_tokenizer([t.strip() for t in batch[pair.target]], add_special_tokens=False)["input_ids"]
        labels = [(t[: target_length - 1] + [eos]) for t in tgt]
        return {"input_ids": src["input_ids"], "attention_mask": src["attention_mask"], "labels": labels}

    return tokenize_split(split, encode)


# ---------------------------------------------------------------- question answering (decoder-only)
QA_PROMPT_PARTS = ("Context:", "\nQuestion:", "\nAnswer:")  # around " " + context, " " + question
QA_ANSWER_TOKENS = 32  # room kept for the answer after a prompt (at most a quarter of max_length)


def qa_prompt_budget(max_length: int) -> int:
    """Prompt tokens of a GPT QA example of max_length tokens (the same in training and generation)."""
    return max_length - min(QA_ANSWER_TOKENS, max_length // 4)


def qa_prompt_ids(
    tokenizer, pairs: Sequence[tuple[str, str]], max_tokens: int, answers: Sequence[dict] | None = None
) -> list[list[int]]:
    """Token ids of the QA prompt of each (question, context): the context is cut to fit max_tokens; the question
    (at most half of max_tokens) and the "Answer:" cue are kept. Without answers the context's first tokens are
    kept (as at generation time); with them (SQuAD's {"text": [...], "answer_start": [...]} per pair, as training
    knows them), the window of context tokens is moved, when the first answer lies beyond the first tokens, so that
    it holds the answer, centred (a window cut at the start would teach the model to answer what it cannot see)."""
    context_part, question_part, cue = (tokenizer(p, add_special_tokens=False)["input_ids"] for p in QA_PROMPT_PARTS)
    questions = tokenizer([" " + q.strip() for q, _ in pairs], add_special_tokens=False)["input_ids"]
    contexts = tokenizer(
        [" " + c.strip() for _, c in pairs], add_special_tokens=False, return_offsets_mapping=answers is not None
    )
    fixed = len(context_part) + len(question_part) + len(cue)
    out = []
    for i, (q, c) in enumerate(zip(questions, contexts["input_ids"])):
        q = q[: max(1, max_tokens // 2)]
        room = max(1, max_tokens - fixed - len(q))
        start = 0
        if answers is not None and len(c) > room:
            start = _answer_window_start(contexts["offset_mapping"][i], _shifted(answers[i], pairs[i][1]), room)
        out.append(context_part + c[start : start + room] + question_part + q + cue)
    return out


def _shifted(answer: dict, context: str) -> dict:
    """The answer with its character offsets into " " + context.strip() (the text the prompt encodes)."""
    shift = 1 - (len(context) - len(context.lstrip()))
    return {"text": answer["text"], "answer_start": [int(a) + shift for a in answer["answer_start"]]}


def _answer_window_start(offsets: Sequence[tuple[int, int]], answer: dict, room: int) -> int:
    """The first token of a room-token window that holds the first answer, centred; 0 when the first window
    already holds it (answer_tokens gives (0, 0) for no answer)."""
    first, last = answer_tokens(offsets, answer)
    if last < room:
        return 0
    start = first - max(0, room - (last - first + 1)) // 2
    return max(0, min(start, len(offsets) - room))


def encode_causal_qa(
    split: datasets.Dataset, tokenizer, max_length: int, answer_windows: bool = False
) -> datasets.Dataset:
    """GPT QA: prompt + " " + first answer + eos; labels are -100 on the prompt (and padding). answer_windows (the
    training split): the prompt's context window holds the first answer (qa_prompt_ids with answers); without it
    the context's first tokens, as generation sees them (the validation and test losses)."""
    eos = tokenizer.eos_token_id

    def encode(batch):
        answers, pairs = batch["answers"], list(zip(batch["question"], batch["context"]))
        prompts = qa_prompt_ids(tokenizer, pairs, qa_prompt_budget(max_length), answers if answer_windows else None)
        texts = [" " + (a["text"][0] if a["text"] else "").strip() for a in answers]
        targets = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return prompted_rows(prompts, targets, eos, max_length)

    return tokenize_split(split, encode)


# ---------------------------------------------------------------- batching
@dataclass
class PaddingCollator:
    """Right-pads each batch to its longest row: input_ids with pad_token_id, attention_mask with 0,
    sequence labels with -100 (scalar labels are stacked)."""

    pad_token_id: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for key in rows[0]:
            values = [row[key] for row in rows]
            if not isinstance(values[0], (list, tuple)):
                batch[key] = torch.tensor(values)
                continue
            fill = {"input_ids": self.pad_token_id, "labels": IGNORE_INDEX}.get(key, 0)
            width = max(len(v) for v in values)
            batch[key] = torch.tensor([list(v) + [fill] * (width - len(v)) for v in values])  # [batch, width]
        return batch
