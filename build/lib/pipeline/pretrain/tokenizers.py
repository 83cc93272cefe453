"""Train this pipeline's own tokenizers on the pretraining corpus.

- BERT: WordPiece, cased, accents kept (NFC only, so German umlauts survive), BERT pre-tokenizer,
  `[CLS] A [SEP] B [SEP]` post-processor with token_type_ids.
- GPT: byte-level BPE (GPT-2 style): every string round-trips exactly, no unknown tokens.

Both are saved as transformers tokenizer folders (tokenizer.json + tokenizer_config.json) that
`AutoTokenizer.from_pretrained(folder)` loads with their special tokens set.

Both are reproducible: the same corpus gives byte-identical files in every process. The byte-level BPE trainer
already is (its alphabet is the 256 sorted bytes, merge ties are broken by token id). The WordPiece trainer is not
on its own: it adds the '##c' continuation tokens in the iteration order of a randomly seeded Rust hash map (a new
order per process, whatever PYTHONHASHSEED says), so their ids, and with them the merges picked among pairs of equal
count (ties are broken by id), change from run to run; its `limit_alphabet` cut is an unstable sort by count, so
which of several equally rare characters survive changes too. train_wordpiece therefore fixes both before training:
it picks the alphabet itself (most frequent first, ties by code point) and hands the sorted '##c' tokens to the
trainer as special tokens (ids right after [PAD]..[MASK]), then makes them ordinary vocabulary entries again.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from pipeline.core import paths
from pipeline.core.config import Params
from pipeline.core.io import atomic_dir, write_json
from pipeline.data.corpus import read_corpus

log = logging.getLogger(__name__)

BERT_SPECIALS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
GPT_EOS = "<|endoftext|>"
GPT_PAD = "<|pad|>"
GPT_SPECIALS = {"bos_token": GPT_EOS, "eos_token": GPT_EOS, "unk_token": GPT_EOS, "pad_token": GPT_PAD}
# WordPiece keeps at most this many distinct characters; rarer ones become [UNK] (as in the original BERT).
WORDPIECE_ALPHABET_LIMIT = 1000
STATS_FILE = "stats.json"


def _non_blank(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if text and not text.isspace():
            yield text


def wordpiece_alphabet_limit(vocab_size: int) -> int:
    """Characters WordPiece may keep: each can also appear as '##c', so cap the alphabet at a third of the
    vocabulary (less the special tokens) to keep the vocabulary within vocab_size and leave room for merges."""
    return max(1, min(WORDPIECE_ALPHABET_LIMIT, (vocab_size - len(BERT_SPECIALS)) // 3))


def wordpiece_alphabet(tok: Tokenizer, texts: Iterable[str], limit: int, prefix: str) -> tuple[list[str], list[str]]:
    """The characters WordPiece will keep and the continuation tokens (prefix + char) it will need, both sorted.

    Counts characters over the words that `tok`'s normalizer and pre-tokenizer make of `texts`, as the trainer does,
    and keeps the `limit` most frequent (ties by code point, so the cut is the same on every run). A continuation
    token is needed for each kept character that occurs after the first character of some word."""
    counts: Counter[str] = Counter()
    inside: set[str] = set()
    for text in texts:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)):
            counts.update(word)
            inside.update(word[1:])
    kept = sorted(sorted(counts, key=lambda c: (-counts[c], c))[:limit])
    return kept, [prefix + c for c in kept if c in inside]


def _without_added_tokens(tok: Tokenizer, contents: set[str]) -> Tokenizer:
    """`tok` with `contents` dropped from its added (special) tokens; they stay in the model vocabulary, same ids."""
    state = json.loads(tok.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] not in contents]
    return Tokenizer.from_str(json.dumps(state))


def train_wordpiece(
    texts: Iterable[str], vocab_size: int, min_frequency: int, out_dir: str | Path, show_progress: bool = False
) -> PreTrainedTokenizerFast:
    """Train a cased BERT WordPiece tokenizer on `texts` and save it to `out_dir` (byte-identical on every run).

    Vocabulary ids: [PAD] [UNK] [CLS] [SEP] [MASK] (0..4), the '##c' continuation characters (sorted), the kept
    characters (sorted), then the learned word pieces in the order they were merged."""
    texts = list(_non_blank(texts))
    if not texts:
        raise ValueError("no text to train the WordPiece tokenizer on")
    specials = list(BERT_SPECIALS.values())
    prefix = "##"
    tok = Tokenizer(models.WordPiece(unk_token=BERT_SPECIALS["unk_token"], continuing_subword_prefix=prefix))
    tok.normalizer = normalizers.NFC()  # no lowercasing, no accent stripping: "Mädchen" stays "Mädchen"
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix=prefix)
    alphabet, continuations = wordpiece_alphabet(tok, texts, wordpiece_alphabet_limit(vocab_size), prefix)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        # the continuation tokens as specials: the trainer gives them these ids instead of hash-map-order ones
        special_tokens=specials + continuations,
        # exactly these characters: every other one is rarer, so the trainer's own cut removes just those
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        continuing_subword_prefix=prefix,
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    unplanned = {t for t in tok.get_vocab() if t.startswith(prefix) and len(t) == len(prefix) + 1} - set(continuations)
    if unplanned:  # the trainer saw other words than wordpiece_alphabet did: these ids would change from run to run
        raise RuntimeError(f"WordPiece training added continuation tokens in hash order: {sorted(unplanned)[:10]}")
    tok = _without_added_tokens(tok, set(continuations))  # ordinary word pieces again: matched, decoded as such
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        **BERT_SPECIALS,
    )
    _save(wrapped, out_dir)
    return wrapped


def train_bpe(
    texts: Iterable[str], vocab_size: int, min_frequency: int, out_dir: str | Path, show_progress: bool = False
) -> PreTrainedTokenizerFast:
    """Train a GPT-2 style byte-level BPE tokenizer on `texts` and save it to `out_dir` (byte-identical on every
    run: the trainer is deterministic here, see the module docstring)."""
    tok = Tokenizer(models.BPE())  # byte-level: every byte is in the alphabet, so no unk token is needed
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[GPT_EOS, GPT_PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(_non_blank(texts), trainer=trainer)
    # GPT-2 takes no token_type_ids (it would add them through its word embeddings).
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, model_input_names=["input_ids", "attention_mask"], **GPT_SPECIALS
    )
    _save(wrapped, out_dir)
    return wrapped


def _save(tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))


def tokens_per_word(tokenizer, texts: list[str]) -> float:
    """Average number of tokens (without special tokens) per whitespace-separated word."""
    words = sum(len(t.split()) for t in texts)
    if not words:
        return 0.0
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return sum(len(x) for x in ids) / words


def unk_rate(tokenizer, texts: list[str]) -> float:
    """Fraction of tokens that are the unknown token (always 0 for byte-level BPE)."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    total = sum(len(x) for x in ids)
    if not total or tokenizer.unk_token_id is None:
        return 0.0
    unk = tokenizer.unk_token_id
    return sum(x.count(unk) for x in ids) / total


def train_tokenizers(params: Params) -> dict[str, Path]:
    """Train both tokenizers on data/corpus/train.txt; write data/tokenizers/{bert,gpt,stats.json} atomically."""
    cfg = params.tokenizers
    train, heldout = read_corpus("train"), read_corpus("heldout")
    target = paths.TOKENIZERS
    with atomic_dir(target) as tmp:
        log.info("training BERT WordPiece (vocab %d) on %d lines", cfg.bert_vocab_size, len(train))
        bert = train_wordpiece(train, cfg.bert_vocab_size, cfg.min_frequency, tmp / "bert", show_progress=True)
        log.info("training GPT byte-level BPE (vocab %d) on %d lines", cfg.gpt_vocab_size, len(train))
        gpt = train_bpe(train, cfg.gpt_vocab_size, cfg.min_frequency, tmp / "gpt", show_progress=True)
        stats = {"train_lines": len(train), "heldout_lines": len(heldout), "min_frequency": cfg.min_frequency}
        for name, tok, asked in (("bert", bert, cfg.bert_vocab_size), ("gpt", gpt, cfg.gpt_vocab_size)):
            stats[name] = {
                "vocab_size": len(tok),
                "requested_vocab_size": asked,
                "heldout_tokens_per_word": round(tokens_per_word(tok, heldout), 4),
                "heldout_unk_rate": round(unk_rate(tok, heldout), 6),
            }
        write_json(tmp / STATS_FILE, stats)
    log.info("tokenizers written to %s: %s", target, json.dumps({k: stats[k] for k in ("bert", "gpt")}))
    return {"bert": paths.tokenizer_dir("bert"), "gpt": paths.tokenizer_dir("gpt")}
