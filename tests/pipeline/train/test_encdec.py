"""Label-set scoring of the encoder-decoder classifier (pipeline.train.encdec.score_labels) against a brute-force
per-label sequence log-probability; NER's tag-sequence constraint and the word counts it is given."""

from __future__ import annotations

import pytest
import torch

from pipeline.train.encdec import TagSequenceConstraint, pad_sources, score_labels


def _tiny_bart(vocab: int = 50):
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=vocab,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=32,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    return BartForConditionalGeneration(config).eval()


def _sequence_log_prob(model, source: list[int], target: list[int], start: int) -> float:
    ids = torch.tensor([source])  # [1, src_len]
    decoder_in = torch.tensor([[start, *target[:-1]]])  # [1, tgt_len]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=decoder_in).logits
    log_probs = logits[0].log_softmax(-1)  # [tgt_len, vocab]
    return float(sum(log_probs[i, t] for i, t in enumerate(target)))


def test_score_labels_picks_the_most_probable_label_sequence_for_every_source():
    model = _tiny_bart()
    labels = [[10, 2], [11, 12, 2], [13, 14, 15, 2], [10, 16, 2]]  # different lengths, shared prefixes, eos last
    sources = [[5, 6, 7, 2], [8, 2], [9, 9, 9, 9, 9, 2], [20, 21, 2]]
    ids, mask = pad_sources(sources, pad=1, device="cpu")
    assert ids.shape == mask.shape == (4, 6) and mask.sum().item() == sum(map(len, sources))
    picked = score_labels(model, labels, ids, mask, start_id=2).tolist()
    expected = [max(range(len(labels)), key=lambda j: _sequence_log_prob(model, s, labels[j], 2)) for s in sources]
    assert picked == expected
    # batch of one gives the same answer as the padded batch
    assert [score_labels(model, labels, *pad_sources([s], 1, "cpu"), start_id=2).item() for s in sources] == expected


# ---------------------------------------------------------------- NER: one tag per word, then eos
def _generate(model, constraint, sources: list[list[int]], num_beams: int) -> list[list[int]]:
    from transformers import LogitsProcessorList

    ids, mask = pad_sources(sources, pad=1, device="cpu")
    kwargs = {"logits_processor": LogitsProcessorList([constraint])} if constraint else {}
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, num_beams=num_beams, max_length=20, **kwargs)
    return out.tolist()  # [batch, out_len]: the decoder start token first


def _one_tag_per_word_then_eos(row: list[int], n: int, tags: list[int], eos: int, pad: int) -> bool:
    return all(t in tags for t in row[1 : 1 + n]) and row[1 + n : 2 + n] == [eos] and set(row[2 + n :]) <= {pad}


@pytest.mark.parametrize("num_beams", [1, 3])
def test_tag_constraint_makes_every_output_one_tag_per_word_then_eos(num_beams):
    model = _tiny_bart()
    tags, eos, pad = [40, 41, 42, 43], 2, 1
    sources = [[5, 6, 7, 2], [8, 2], [9, 9, 9, 9, 9, 2], [20, 2]]
    words = torch.tensor([3, 1, 5, 0])
    unconstrained = _generate(model, None, sources, num_beams)
    assert not all(_one_tag_per_word_then_eos(r, n, tags, eos, pad) for r, n in zip(unconstrained, words))
    constrained = _generate(model, TagSequenceConstraint(words, tags, eos, num_beams), sources, num_beams)
    for row, n in zip(constrained, words):
        assert _one_tag_per_word_then_eos(row, n, tags, eos, pad), (row, n)


def test_word_counts_are_the_words_of_every_real_ner_source(t2t_data_root):
    """The codec counts a source's words from its byte-level BPE ids (the constraint's lengths): equal to the
    CoNLL word count for every subsampled sentence, padded in batches as generation sees them."""
    from pipeline.data.task_data import load_prepared
    from pipeline.train.encdec import TextCodec, load_bpe_tokenizer
    from pipeline.train.text2text import task_format

    data = load_prepared("conll2003", t2t_data_root)
    fmt = task_format("conll2003", data["train"])
    codec = TextCodec(load_bpe_tokenizer(fmt, t2t_data_root / "data" / "tokenizers" / "gpt"), fmt, 64, 16)
    for split in ("train", "test"):
        examples = list(data[split])
        ids, _ = pad_sources([codec.source(fmt.source_text(ex)) for ex in examples], codec.pad, "cpu")
        assert codec.word_counts(ids).tolist() == [len(ex["tokens"]) for ex in examples]
