"""The BERT WordPiece and GPT byte-level BPE tokenizers, trained on a tiny corpus (a few seconds)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
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
    wordpiece_alphabet,
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


# Trains both tokenizers in a fresh interpreter: the WordPiece trainer's hash maps are seeded per process.
_TRAIN_BOTH = """
import json, sys
from pathlib import Path
from pipeline.pretrain.tokenizers import train_bpe, train_wordpiece
texts = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
out = Path(sys.argv[2])
train_wordpiece(texts, vocab_size=150, min_frequency=2, out_dir=out / "bert")
train_bpe(texts, vocab_size=400, min_frequency=2, out_dir=out / "gpt")
"""
# Characters that occur once each, so the WordPiece alphabet cut (a third of vocab_size 150: 48 of the corpus's
# ~70 characters) falls among equally rare ones.
RARE = "Ωmega ✓ ẞ Ææ Øø Åå Çç Ññ Ŧŧ Ŋŋ Þþ Ðð"


def _file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_training_twice_in_separate_processes_gives_identical_files(tmp_path, repo_root):
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps([*CORPUS, RARE]), encoding="utf-8")
    hashes = []
    for run, hash_seed in (("first", "1"), ("second", "2")):
        env = {**os.environ, "PYTHONPATH": str(repo_root), "PYTHONHASHSEED": hash_seed, "HF_HUB_OFFLINE": "1"}
        subprocess.run(
            [sys.executable, "-c", _TRAIN_BOTH, str(corpus), str(tmp_path / run)], env=env, cwd=tmp_path, check=True
        )
        hashes.append(_file_hashes(tmp_path / run))
    assert set(hashes[0]) == {f"{f}/{n}" for f in ("bert", "gpt") for n in ("tokenizer.json", "tokenizer_config.json")}
    assert hashes[0] == hashes[1]


def test_wordpiece_vocabulary_order_is_canonical(tmp_path):
    train_wordpiece([*CORPUS, RARE], vocab_size=150, min_frequency=2, out_dir=tmp_path)
    state = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    ids = sorted(state["model"]["vocab"], key=state["model"]["vocab"].get)
    continuations = [t for t in ids if t.startswith("##") and len(t) == 3]
    chars = [t for t in ids if len(t) == 1]
    assert ids[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert ids[5 : 5 + len(continuations) + len(chars)] == continuations + chars
    assert continuations == sorted(continuations) and chars == sorted(chars)
    assert len(chars) == 48  # wordpiece_alphabet_limit(150)
    # the continuation tokens were specials only while training: now ordinary pieces, kept when decoding
    assert [t["content"] for t in state["added_tokens"]] == ids[:5]
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    pieces = tok.tokenize("Brusselsberlin")
    assert any(p in continuations for p in pieces)
    assert tok.decode(tok("Brusselsberlin")["input_ids"], skip_special_tokens=True) == "Brusselsberlin"


def test_wordpiece_alphabet_keeps_the_most_frequent_characters_ties_by_code_point():
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # a, b, c: 3 each; ".", x, y, z: 1 each ("." is a word of its own: punctuation never continues a word)
    texts = ["abc cab.", "bca zyx"]
    kept, continuations = wordpiece_alphabet(tok, texts, limit=5, prefix="##")
    assert kept == [".", "a", "b", "c", "x"]  # the tie among the rare ones is cut by code point: "." < x < y < z
    assert continuations == ["##a", "##b", "##c", "##x"]  # only kept characters that occur inside a word
    kept, continuations = wordpiece_alphabet(tok, texts, limit=100, prefix="##")
    assert kept == [".", "a", "b", "c", "x", "y", "z"] and continuations == ["##a", "##b", "##c", "##x", "##y"]
