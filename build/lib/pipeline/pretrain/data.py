"""Pretraining examples built from the corpus (data/corpus/{train,heldout}.txt, one document per line).

- GPT (causal LM, run_clm style): every document is tokenized, followed by the end-of-text token, all of
  them concatenated and cut into blocks of `block_size` tokens (the tail that does not fill a block is dropped).
- BERT (MLM + NSP, as in BERT's create_pretraining_data): documents are split into sentences; consecutive
  sentences are grouped into chunks of about `block_size - 3` tokens and each chunk is cut at a random
  sentence boundary into segments A and B. Half of the pairs keep the true B (IsNext, label 0); the other half
  (NotNext, label 1) are, with pretrain.bert.nsp_negatives, either the same two segments swapped ("swapped", the
  default: ALBERT's sentence order, no shortcut) or A with a B from a random other document ("random_document",
  BERT's: on this corpus of unrelated short texts a topic shortcut). Only documents with at least two sentences give
  pairs, unless pretrain.bert.split_single_sentences cuts a one-sentence document (most task texts) at a random
  word. Masking happens per batch in mlm_collator: `mlm_probability` (15%) of the non-special tokens are picked;
  of those 80% become [MASK], 10% a random token, 10% stay as they are.
"""

from __future__ import annotations

import logging
import random
import re

import torch
from transformers import DataCollatorForLanguageModeling

log = logging.getLogger(__name__)

IS_NEXT, NOT_NEXT = 0, 1  # BertForPreTraining's next_sentence_label convention
# BERT's masking of the picked tokens: this share becomes [MASK], this share a random token, the rest stays.
MASK_REPLACE_PROB, RANDOM_REPLACE_PROB = 0.8, 0.1
# Sentence end: . ! or ? followed by whitespace and something that starts a sentence.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")


class PretrainDataError(RuntimeError):
    """The corpus is too small to build pretraining examples."""


# ---------------------------------------------------------------- GPT: fixed-length blocks
class BlockDataset(torch.utils.data.Dataset):
    """Causal-LM blocks; the labels are the inputs (the model shifts them)."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks  # [n_blocks, block_size]

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def lm_blocks(docs: list[str], tokenizer, block_size: int, what: str = "corpus") -> BlockDataset:
    if tokenizer.eos_token_id is None:
        raise PretrainDataError("the GPT tokenizer has no eos_token: retrain it (python -m flows.tokenizers)")
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    flat: list[int] = []
    for doc_ids in ids:
        flat.extend(doc_ids)
        flat.append(tokenizer.eos_token_id)
    n_blocks = len(flat) // block_size
    if n_blocks == 0:
        raise PretrainDataError(
            f"the {what} has {len(flat)} tokens, fewer than one block of {block_size}: "
            "use a bigger corpus or a smaller pretrain.gpt.block_size"
        )
    blocks = torch.tensor(flat[: n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)
    log.info(
        "%s: %d GPT blocks of %d tokens (%d tokens dropped)",
        what,
        n_blocks,
        block_size,
        len(flat) - n_blocks * block_size,
    )
    return BlockDataset(blocks)


# ---------------------------------------------------------------- BERT: sentence pairs for NSP
def split_sentences(doc: str) -> list[str]:
    return [s for s in (part.strip() for part in _SENTENCE_END.split(doc)) if s]


class PairDataset(torch.utils.data.Dataset):
    """BERT pretraining pairs as lists of ids; mlm_collator pads and masks them."""

    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]

    def mean_length(self) -> float:
        return sum(len(e["input_ids"]) for e in self.examples) / max(1, len(self.examples))


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: random.Random) -> None:
    """Trim the longer segment (from a random end) until both fit, as BERT does."""
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def _random_segment(docs: list[list[list[int]]], avoid: int, length: int, rng: random.Random) -> list[int]:
    """About `length` tokens of consecutive sentences from a random document other than `avoid`."""
    j = rng.randrange(len(docs) - 1)
    j = j + 1 if j >= avoid else j
    doc = docs[j]
    start = rng.randrange(len(doc))
    segment: list[int] = []
    for sentence in doc[start:]:
        segment.extend(sentence)
        if len(segment) >= length:
            break
    return segment


def _pack(tokenizer, a: list[int], b: list[int], label: int) -> dict:
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    input_ids = [cls, *a, sep, *b, sep]
    return {
        "input_ids": input_ids,
        "token_type_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1),
        "attention_mask": [1] * len(input_ids),
        "special_tokens_mask": [1] + [0] * len(a) + [1] + [0] * len(b) + [1],
        "next_sentence_label": label,
    }


NSP_NEGATIVES = ("random_document", "swapped")


def _halves(sentence: str, rng: random.Random) -> list[str]:
    """A one-sentence document cut at a random word boundary into two parts (one part when it has one word)."""
    words = sentence.split()
    if len(words) < 2:
        return [sentence]
    cut = rng.randint(1, len(words) - 1)
    return [" ".join(words[:cut]), " ".join(words[cut:])]


def nsp_pairs(
    docs: list[str],
    tokenizer,
    block_size: int,
    seed: int,
    what: str = "corpus",
    *,
    negatives: str = "random_document",
    split_single: bool = False,
) -> PairDataset:
    """Sentence pairs for MLM + NSP. `negatives`: where a NotNext B comes from, "random_document" (BERT's: another
    document, which on a corpus of unrelated short texts is a topic/style shortcut) or "swapped" (the same two
    segments in the wrong order, as ALBERT's sentence-order prediction: no shortcut, and every document keeps its
    own text). `split_single`: a one-sentence document is cut at a random word boundary into two parts, so that the
    (mostly one-line) task texts become pairs too instead of only wikitext paragraphs."""
    if negatives not in NSP_NEGATIVES:
        raise ValueError(f"unknown NSP negatives {negatives!r}: choose one of {list(NSP_NEGATIVES)}")
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None or tokenizer.mask_token_id is None:
        raise PretrainDataError("the BERT tokenizer lacks [CLS]/[SEP]/[MASK]: retrain it (python -m flows.tokenizers)")
    rng = random.Random(seed)
    sentences = [split_sentences(doc) for doc in docs]
    if split_single:
        sentences = [_halves(doc[0], rng) if len(doc) == 1 else doc for doc in sentences]
    flat = [s for doc in sentences for s in doc]
    flat_ids = tokenizer(flat, add_special_tokens=False)["input_ids"]
    tokenized: list[list[list[int]]] = []
    pos = 0
    for doc in sentences:
        tokenized.append([ids for ids in flat_ids[pos : pos + len(doc)] if ids])
        pos += len(doc)
    tokenized = [doc for doc in tokenized if doc]
    if len(tokenized) < 2:
        raise PretrainDataError(f"the {what} has fewer than 2 non-empty documents: NSP needs at least 2")

    max_tokens = block_size - 3  # [CLS] A [SEP] B [SEP]
    examples: list[dict] = []
    for d, doc in enumerate(tokenized):
        if len(doc) < 2:
            continue
        chunk: list[list[int]] = []
        length = 0
        i = 0
        while i < len(doc):
            chunk.append(doc[i])
            length += len(doc[i])
            if i == len(doc) - 1 or length >= max_tokens:
                if len(chunk) >= 2:
                    a_end = rng.randint(1, len(chunk) - 1)
                    a = [t for s in chunk[:a_end] for t in s]
                    b = [t for s in chunk[a_end:] for t in s]
                    label = IS_NEXT
                    if rng.random() < 0.5:
                        label = NOT_NEXT
                        if negatives == "swapped":
                            a, b = b, a
                        else:
                            b = _random_segment(tokenized, d, max_tokens - len(a), rng)
                            i -= len(chunk) - a_end  # the unused true continuation starts the next chunk
                    _truncate_pair(a, b, max_tokens, rng)
                    if a and b:
                        examples.append(_pack(tokenizer, a, b, label))
                chunk, length = [], 0
            i += 1
    if not examples:
        raise PretrainDataError(
            f"the {what} gave no sentence pairs: NSP needs documents (lines) with at least two sentences"
        )
    n_next = sum(e["next_sentence_label"] == IS_NEXT for e in examples)
    log.info("%s: %d BERT sentence pairs (%d IsNext, %d NotNext)", what, len(examples), n_next, len(examples) - n_next)
    return PairDataset(examples)


def cap(dataset: torch.utils.data.Dataset, max_examples: int) -> torch.utils.data.Dataset:
    """The first `max_examples` examples (bounds the evaluation time on a large held-out split)."""
    if len(dataset) <= max_examples:
        return dataset
    return torch.utils.data.Subset(dataset, range(max_examples))


def mlm_collator(tokenizer, mlm_probability: float, seed: int | None = None) -> DataCollatorForLanguageModeling:
    """Pads PairDataset examples and masks them for MLM: each non-special token (the examples'
    special_tokens_mask: [CLS], [SEP]; padding too) is picked with `mlm_probability`; a picked token gets its id
    as label (-100 elsewhere) and becomes [MASK] (80%), a random token (10%) or stays (10%). With `seed` the masks
    come from the collator's own generator (a new collator with the same seed repeats them); without, from torch's
    global one (seeded by the trainer)."""
    return DataCollatorForLanguageModeling(
        tokenizer,
        mlm=True,
        mlm_probability=mlm_probability,
        mask_replace_prob=MASK_REPLACE_PROB,
        random_replace_prob=RANDOM_REPLACE_PROB,
        seed=seed,
    )
