"""Label-set scoring of the encoder-decoder classifier (pipeline.train.encdec.score_labels) against a brute-force
per-label sequence log-probability."""

from __future__ import annotations

import torch

from pipeline.train.encdec import pad_sources, score_labels


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
