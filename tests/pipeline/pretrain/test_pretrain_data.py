"""Pretraining examples: GPT blocks and BERT sentence pairs from the tiny real corpus, and the MLM masking (no
training)."""

from __future__ import annotations

import random

import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

from pipeline.core.config import parse_params
from pipeline.data.corpus import CorpusError, read_corpus
from pipeline.models.loading import load_tokenizer
from pipeline.pretrain.data import (
    IS_NEXT,
    MASK_REPLACE_PROB,
    NOT_NEXT,
    RANDOM_REPLACE_PROB,
    PretrainDataError,
    lm_blocks,
    mlm_collator,
    nsp_pairs,
    split_sentences,
)


@pytest.fixture(scope="module")
def tokenizers(pretrain_inputs):
    root = pretrain_inputs / "data" / "tokenizers"
    return {family: load_tokenizer(root / family) for family in ("gpt", "bert")}


@pytest.fixture(scope="module")
def corpus(pretrain_inputs):
    lines = (pretrain_inputs / "data" / "corpus" / "train.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()]


def test_split_sentences_keeps_abbreviations_and_wikitext_numbers():
    doc = 'It is related to H. americanus . It weighs 0 @.@ 7 kg . " Lobster red " is a colour ! Why ? 12 more.'
    assert split_sentences(doc) == [
        "It is related to H. americanus .",
        "It weighs 0 @.@ 7 kg .",
        '" Lobster red " is a colour !',
        "Why ?",
        "12 more.",
    ]


def test_gpt_blocks_have_fixed_length_and_end_of_text_between_documents(tokenizers):
    tok = tokenizers["gpt"]
    docs = ["first document here .", "second one", "third document , longer than the others ."]
    data = lm_blocks(docs, tok, block_size=8)
    flat = [i for d in tok(docs, add_special_tokens=False)["input_ids"] for i in [*d, tok.eos_token_id]]
    assert len(data) == len(flat) // 8
    assert data.blocks.shape == (len(flat) // 8, 8)
    assert data.blocks.flatten().tolist() == flat[: len(data) * 8]
    assert tok.eos_token_id in data.blocks.flatten().tolist()
    item = data[0]
    assert item["labels"].tolist() == item["input_ids"].tolist()


def test_gpt_blocks_refuse_a_corpus_shorter_than_a_block(tokenizers):
    with pytest.raises(PretrainDataError, match="fewer than one block of 512"):
        lm_blocks(["too short"], tokenizers["gpt"], block_size=512)


def test_bert_pairs_are_half_next_half_random_and_well_formed(tokenizers, corpus):
    tok = tokenizers["bert"]
    data = nsp_pairs(corpus, tok, block_size=64, seed=1)
    assert len(data) > 100
    labels = [e["next_sentence_label"] for e in data.examples]
    assert set(labels) == {IS_NEXT, NOT_NEXT}
    assert 0.4 < labels.count(IS_NEXT) / len(labels) < 0.6
    for e in data.examples:
        ids = e["input_ids"]
        assert len(ids) <= 64
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        sep = ids.index(tok.sep_token_id)
        assert 1 < sep < len(ids) - 2  # both segments are non-empty
        assert e["token_type_ids"] == [0] * (sep + 1) + [1] * (len(ids) - sep - 1)
        assert e["special_tokens_mask"] == [int(i in (0, sep, len(ids) - 1)) for i in range(len(ids))]
        assert e["attention_mask"] == [1] * len(ids)


def test_bert_is_next_pairs_are_consecutive_text_of_one_document(tokenizers):
    tok = tokenizers["bert"]
    docs = [f"Alpha{d} one . Beta{d} two . Gamma{d} three . Delta{d} four ." for d in range(20)]
    data = nsp_pairs(docs, tok, block_size=128, seed=3)
    joined = [
        tok.decode(d_ids, clean_up_tokenization_spaces=False).replace(" ", "")
        for d_ids in tok(docs, add_special_tokens=False)["input_ids"]
    ]
    for e in data.examples:
        ids = e["input_ids"]
        sep = ids.index(tok.sep_token_id)
        a = tok.decode(ids[1:sep]).replace(" ", "")
        b = tok.decode(ids[sep + 1 : -1]).replace(" ", "")
        same_doc = any(a + b in doc for doc in joined)
        assert same_doc == (e["next_sentence_label"] == IS_NEXT), (a, b, e["next_sentence_label"])


def test_bert_pairs_need_multi_sentence_documents(tokenizers):
    with pytest.raises(PretrainDataError, match="at least two sentences"):
        nsp_pairs(["one sentence only", "another single line"], tokenizers["bert"], block_size=64, seed=0)


def _segments(tok, e: dict) -> tuple[str, str]:
    ids = e["input_ids"]
    sep = ids.index(tok.sep_token_id)
    return tok.decode(ids[1:sep]).replace(" ", ""), tok.decode(ids[sep + 1 : -1]).replace(" ", "")


def test_swapped_negatives_are_the_same_text_in_the_wrong_order(tokenizers):
    tok = tokenizers["bert"]
    docs = [f"Alpha{d} one . Beta{d} two . Gamma{d} three . Delta{d} four ." for d in range(20)]
    data = nsp_pairs(docs, tok, block_size=128, seed=3, negatives="swapped")
    joined = [
        tok.decode(d_ids, clean_up_tokenization_spaces=False).replace(" ", "")
        for d_ids in tok(docs, add_special_tokens=False)["input_ids"]
    ]
    labels = [e["next_sentence_label"] for e in data.examples]
    assert set(labels) == {IS_NEXT, NOT_NEXT}
    for e in data.examples:
        a, b = _segments(tok, e)
        first, second = (a, b) if e["next_sentence_label"] == IS_NEXT else (b, a)
        assert any(first + second in doc for doc in joined), (a, b, e["next_sentence_label"])
        assert not any(a + b in doc for doc in joined) or e["next_sentence_label"] == IS_NEXT


def test_split_single_turns_one_sentence_documents_into_pairs(tokenizers):
    tok = tokenizers["bert"]
    docs = [f"i feel quite happy about item{d} today" for d in range(30)]
    with pytest.raises(PretrainDataError, match="at least two sentences"):
        nsp_pairs(docs, tok, block_size=64, seed=0)
    data = nsp_pairs(docs, tok, block_size=64, seed=0, negatives="swapped", split_single=True)
    assert len(data) == len(docs)
    joined = {tok.decode(ids).replace(" ", "") for ids in tok(docs, add_special_tokens=False)["input_ids"]}
    for e in data.examples:
        a, b = _segments(tok, e)
        assert (a + b if e["next_sentence_label"] == IS_NEXT else b + a) in joined


def test_unknown_nsp_negatives_are_refused(tokenizers):
    with pytest.raises(ValueError, match="unknown NSP negatives 'shuffled'"):
        nsp_pairs(["A one . B two ."] * 3, tokenizers["bert"], block_size=64, seed=0, negatives="shuffled")


def test_missing_corpus_says_which_stage_to_run(in_tmp_repo):
    with pytest.raises(CorpusError, match=r"data/corpus/train.txt not found.*flows.data corpus"):
        read_corpus("train")


def _synthetic_pairs(tok, n: int, seed: int) -> list[dict]:
    """`n` PairDataset-style examples of random ordinary tokens, of varying lengths (so batches get padding)."""
    rng = random.Random(seed)
    ordinary = [i for i in range(len(tok)) if i not in tok.all_special_ids]
    examples = []
    for _ in range(n):
        a = rng.choices(ordinary, k=rng.randint(5, 40))
        b = rng.choices(ordinary, k=rng.randint(5, 40))
        ids = [tok.cls_token_id, *a, tok.sep_token_id, *b, tok.sep_token_id]
        examples.append(
            {
                "input_ids": ids,
                "token_type_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1),
                "attention_mask": [1] * len(ids),
                "special_tokens_mask": [1] + [0] * len(a) + [1] + [0] * len(b) + [1],
                "next_sentence_label": rng.choice([IS_NEXT, NOT_NEXT]),
            }
        )
    return examples


def test_mlm_collator_picks_the_configured_share_and_masks_80_10_10(tokenizers, default_params_dict):
    tok = tokenizers["bert"]
    probability = parse_params(default_params_dict).pretrain.bert.mlm_probability
    examples = _synthetic_pairs(tok, 1500, seed=0)
    batch = mlm_collator(tok, probability, seed=7)(examples)
    ids = [torch.tensor(e["input_ids"]) for e in examples]
    original = pad_sequence(ids, batch_first=True, padding_value=tok.pad_token_id)  # [batch, seq]
    inputs, labels = batch["input_ids"], batch["labels"]  # [batch, seq]
    assert inputs.shape == labels.shape == original.shape
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "next_sentence_label", "labels"}

    special = torch.isin(original, torch.tensor([tok.cls_token_id, tok.sep_token_id, tok.pad_token_id]))
    assert (original == tok.pad_token_id).any(), "the batch has padding"
    picked = labels != -100
    assert not (picked & special).any(), "[CLS]/[SEP]/[PAD] are never picked"
    assert (inputs[~picked] == original[~picked]).all(), "tokens that were not picked are left alone"
    assert (labels[picked] == original[picked]).all(), "a picked token's label is its original id"

    ordinary = (~special).sum().item()
    n = picked.sum().item()
    assert ordinary > 50_000
    assert abs(n / ordinary - probability) < 0.01
    became_mask = (inputs[picked] == tok.mask_token_id).sum().item() / n
    unchanged = (inputs[picked] == original[picked]).sum().item() / n
    random_other = 1 - became_mask - unchanged
    assert abs(became_mask - MASK_REPLACE_PROB) < 0.025
    assert abs(random_other - RANDOM_REPLACE_PROB) < 0.02
    assert abs(unchanged - (1 - MASK_REPLACE_PROB - RANDOM_REPLACE_PROB)) < 0.02
    assert (MASK_REPLACE_PROB, RANDOM_REPLACE_PROB) == (0.8, 0.1)

    again = mlm_collator(tok, probability, seed=7)(examples)
    assert torch.equal(again["input_ids"], inputs) and torch.equal(again["labels"], labels), "seeded: same masks"
