"""Pretraining examples: GPT blocks and BERT sentence pairs from the tiny real corpus (no training)."""

from __future__ import annotations

import pytest

from pipeline.data.corpus import CorpusError, read_corpus
from pipeline.models.loading import load_tokenizer
from pipeline.pretrain.data import (
    IS_NEXT,
    NOT_NEXT,
    PretrainDataError,
    lm_blocks,
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


def test_missing_corpus_says_which_stage_to_run(in_tmp_repo):
    with pytest.raises(CorpusError, match=r"data/corpus/train.txt not found.*flows.data corpus"):
        read_corpus("train")
