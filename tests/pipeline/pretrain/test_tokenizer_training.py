"""The BERT WordPiece and GPT byte-level BPE tokenizers, trained on a tiny corpus (a few seconds)."""

from __future__ import annotations

import copy
import json
import unicodedata

import pytest
from transformers import AutoTokenizer

from pipeline.core import paths
from pipeline.core.config import parse_params
from pipeline.data.corpus import CorpusError
from pipeline.pretrain.tokenizers import (
    GPT_EOS,
    GPT_PAD,
    train_bpe,
    train_tokenizers,
    train_wordpiece,
)

GERMAN = "Ein Mädchen läuft über die Straße, während große Hunde müde schlafen."
CORPUS = [
    GERMAN,
    "Zwei Männer stehen vor einem Gebäude und essen Äpfel.",
    "A little girl runs across the street while big dogs sleep.",
    "EU rejects German call to boycott British lamb .",
    "Peter Blackburn visits Berlin and Brussels on Monday .",
    "the film is a charming , funny and touching story .",
    " = Robert Boulter = ",
    "i feel so happy about the weekend",
] * 30


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "bert"
    train_wordpiece(CORPUS, vocab_size=300, min_frequency=2, out_dir=out)
    return out


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "gpt"
    train_bpe(CORPUS, vocab_size=400, min_frequency=2, out_dir=out)
    return out


def test_wordpiece_loads_with_bert_special_tokens(bert_dir):
    tok = AutoTokenizer.from_pretrained(str(bert_dir))
    assert (tok.pad_token, tok.unk_token, tok.cls_token, tok.sep_token, tok.mask_token) == (
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    )
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id] == [
        0,
        1,
        2,
        3,
        4,
    ]
    assert 5 < len(tok) <= 300
    assert (bert_dir / "tokenizer.json").exists()


def test_wordpiece_is_cased_keeps_umlauts_and_normalizes_to_nfc(bert_dir):
    tok = AutoTokenizer.from_pretrained(str(bert_dir))
    tokens = tok.tokenize(GERMAN)
    assert "Mädchen" in tokens and "Straße" in tokens and tok.unk_token not in tokens
    assert tok.tokenize("Berlin") != tok.tokenize("berlin")
    decomposed = unicodedata.normalize("NFD", GERMAN)
    assert decomposed != GERMAN and tok(decomposed)["input_ids"] == tok(GERMAN)["input_ids"]
    assert tok.decode(tok(GERMAN)["input_ids"], skip_special_tokens=True) == GERMAN  # "##" joined, cleanup
    assert any(t.startswith("##") for t in tok.tokenize("Brusselsberlin"))


def test_wordpiece_pairs_get_cls_sep_and_token_type_ids(bert_dir):
    tok = AutoTokenizer.from_pretrained(str(bert_dir))
    enc = tok("Zwei Männer", "stehen vor")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["[CLS]", "Zwei", "Männer", "[SEP]", "stehen", "vor", "[SEP]"]
    assert enc["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]
    words = tok(["EU", "rejects", "German"], is_split_into_words=True).word_ids()
    assert words[0] is None and words[-1] is None and set(words[1:-1]) == {0, 1, 2}
    batch = tok(["Ein Mädchen", "Zwei Männer stehen vor einem Gebäude"], padding=True)
    assert batch["input_ids"][0][-1] == tok.pad_token_id and batch["attention_mask"][0][-1] == 0


def test_bpe_round_trips_any_text_without_unknowns(gpt_dir):
    tok = AutoTokenizer.from_pretrained(str(gpt_dir))
    for text in (GERMAN, "Fußgängerübergänge ÄÖÜ äöü ß", "  two  spaces\tand a tab\n", "unseen: Ωmega ✓ 😀 ẞ"):
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
        assert tok.unk_token_id not in ids  # byte-level: nothing is unknown
    assert len(tok.tokenize(GERMAN)) < len(GERMAN.encode("utf-8")), "merges were learned"


def test_bpe_special_tokens_and_inputs(gpt_dir):
    tok = AutoTokenizer.from_pretrained(str(gpt_dir))
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == (GPT_EOS, GPT_EOS, GPT_EOS, GPT_PAD)
    assert tok.pad_token_id != tok.eos_token_id
    enc = tok("Ein Mädchen")
    assert set(enc) == {"input_ids", "attention_mask"}  # GPT-2 takes no token_type_ids
    assert tok.eos_token_id not in enc["input_ids"]  # nothing added implicitly: the pretrain stage decides
    assert tok.convert_tokens_to_ids(GPT_EOS) == tok.eos_token_id
    assert 258 < len(tok) <= 400


def _params(default_params_dict, **tokenizers):
    raw = copy.deepcopy(default_params_dict)
    raw["tokenizers"].update(tokenizers)
    return parse_params(raw)


def _write_corpus(train: list[str], heldout: list[str]) -> None:
    paths.CORPUS.mkdir(parents=True, exist_ok=True)
    (paths.CORPUS / "train.txt").write_text("\n".join(train) + "\n", encoding="utf-8")
    (paths.CORPUS / "heldout.txt").write_text("\n".join(heldout) + "\n", encoding="utf-8")


def test_train_tokenizers_writes_both_and_stats(in_tmp_repo, default_params_dict):
    _write_corpus(CORPUS, ["Ein Mädchen läuft über die Straße.", "British lamb in Berlin ."])
    params = _params(default_params_dict, bert_vocab_size=300, gpt_vocab_size=350, min_frequency=2)
    out = train_tokenizers(params)
    assert out == {"bert": paths.tokenizer_dir("bert"), "gpt": paths.tokenizer_dir("gpt")}
    assert AutoTokenizer.from_pretrained(str(out["bert"])).mask_token == "[MASK]"
    assert AutoTokenizer.from_pretrained(str(out["gpt"])).pad_token == GPT_PAD
    stats = json.loads((paths.TOKENIZERS / "stats.json").read_text())
    assert stats["train_lines"] == len(CORPUS) and stats["heldout_lines"] == 2
    assert stats["bert"]["requested_vocab_size"] == 300 and 5 < stats["bert"]["vocab_size"] <= 300
    assert 258 < stats["gpt"]["vocab_size"] <= 350
    assert stats["gpt"]["heldout_unk_rate"] == 0
    for family in ("bert", "gpt"):
        assert 1 <= stats[family]["heldout_tokens_per_word"] < 10

    # a second run replaces the output in one move and leaves no temp folders behind
    train_tokenizers(_params(default_params_dict, bert_vocab_size=280, gpt_vocab_size=350))
    assert json.loads((paths.TOKENIZERS / "stats.json").read_text())["bert"]["requested_vocab_size"] == 280
    assert sorted(p.name for p in paths.DATA.iterdir()) == ["corpus", "tokenizers"]


def test_train_tokenizers_needs_the_corpus(in_tmp_repo, default_params_dict):
    with pytest.raises(CorpusError, match=r"data/corpus/train.txt not found.*flows.data corpus"):
        train_tokenizers(_params(default_params_dict))
    _write_corpus(["", "   "], ["x"])
    with pytest.raises(CorpusError, match="no text lines"):
        train_tokenizers(_params(default_params_dict))
    assert not paths.TOKENIZERS.exists()
