"""The GRU encoder-decoder: attention masking, packed sequences, greedy and beam-search decoding."""

from __future__ import annotations

import dataclasses
import functools
import itertools

import pytest
import torch
from torch import nn

from pipeline.models.seq2seq_rnn import (
    EOS_IDX,
    NEVER_GENERATED,
    PAD_IDX,
    SOS_IDX,
    RNNConfig,
    Seq2Seq,
    beam_search,
    greedy_decode,
    sequence_log_prob,
)

SRC_VOCAB, TGT_VOCAB = 40, 12


def make_model(seed: int, tgt_vocab: int = TGT_VOCAB) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(RNNConfig(SRC_VOCAB, tgt_vocab, emb_dim=16, hid_dim=24, dropout=0.1)).eval()


def random_batch(seed: int, batch: int = 6, max_len: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (batch,), generator=gen)  # [batch]
    lengths[0] = max_len  # the batch is as wide as its longest source
    src = torch.randint(4, SRC_VOCAB, (batch, max_len), generator=gen)  # [batch, src_len]
    src[torch.arange(max_len).unsqueeze(0) >= lengths.unsqueeze(1)] = PAD_IDX
    return src, lengths


@functools.cache
def briefly_trained(seed: int, steps: int = 30) -> Seq2Seq:
    """A model trained for a few steps to copy (source token mod vocab), so its distributions are peaked."""
    model = make_model(seed)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD_IDX)
    for step in range(steps):
        src, lengths = random_batch(1000 + step, batch=16, max_len=6)
        body = 4 + src % (TGT_VOCAB - 4)  # [batch, src_len]
        tgt = torch.full((16, 8), PAD_IDX)  # [batch, tgt_len]
        tgt[:, 0] = SOS_IDX
        for b, n in enumerate(lengths.tolist()):
            tgt[b, 1 : n + 1] = body[b, :n]
            tgt[b, n + 1] = EOS_IDX
        logits, _ = model(src, lengths, tgt, teacher_forcing_ratio=0.5)  # [batch, tgt_len-1, vocab]
        loss = loss_fn(logits.reshape(-1, TGT_VOCAB), tgt[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_attention_sums_to_one_over_source_and_is_zero_on_padding():
    model = make_model(0)
    src, lengths = random_batch(0)
    tgt = torch.randint(4, TGT_VOCAB, (src.size(0), 5))  # [batch, tgt_len]
    tgt[:, 0] = SOS_IDX
    with torch.no_grad():
        _, attn = model(src, lengths, tgt)  # [batch, tgt_len-1, src_len]
    assert attn.shape == (src.size(0), 4, src.size(1))
    torch.testing.assert_close(attn.sum(dim=2), torch.ones(src.size(0), 4))
    for b, n in enumerate(lengths.tolist()):
        assert torch.all(attn[b, :, n:] == 0.0), f"row {b}: attention on padding"
        assert torch.all(attn[b, :, :n] > 0.0)
    for hyp, n in zip(greedy_decode(model, src, lengths, max_len=6), lengths.tolist()):
        assert torch.all(hyp.attention[:, n:] == 0.0)
        torch.testing.assert_close(hyp.attention.sum(dim=1), torch.ones(hyp.length))


def test_encoder_outputs_are_zero_on_padding_and_extra_padding_changes_nothing():
    model = make_model(1)
    src, lengths = random_batch(1)
    with torch.no_grad():
        enc = model.encode(src, lengths)
        for b, n in enumerate(lengths.tolist()):
            assert torch.all(enc.outputs[b, n:] == 0.0)
            assert enc.outputs[b, :n].abs().sum() > 0
        wider = torch.cat([src, torch.full((src.size(0), 5), PAD_IDX)], dim=1)  # [batch, src_len+5]
        enc_wide = model.encode(wider, lengths)
        torch.testing.assert_close(enc_wide.outputs[:, : src.size(1)], enc.outputs)
        torch.testing.assert_close(enc_wide.hidden, enc.hidden)
        tgt = torch.tensor([[SOS_IDX, 5, 6, 7]] * src.size(0))  # [batch, 4]
        torch.testing.assert_close(model(wider, lengths, tgt)[0], model(src, lengths, tgt)[0])
    narrow = [h.tokens for h in greedy_decode(model, src, lengths, 8)]
    wide = [h.tokens for h in greedy_decode(model, wider, lengths, 8)]
    assert narrow == wide


def test_decoding_one_sequence_alone_or_in_a_batch_gives_the_same_result():
    model = make_model(2)
    src, lengths = random_batch(2)
    batched = beam_search(model, src, lengths, beam_size=3, max_len=7)
    for b, n in enumerate(lengths.tolist()):
        alone = beam_search(model, src[b : b + 1, :n], lengths[b : b + 1], beam_size=3, max_len=7)[0]
        assert alone.tokens == batched[b].tokens
        assert alone.log_prob == pytest.approx(batched[b].log_prob, abs=1e-4)


@pytest.mark.parametrize("trained", [False, True], ids=["untrained", "briefly-trained"])
@pytest.mark.parametrize("length_penalty", [1.0, 0.0])
def test_beam_search_never_scores_below_greedy_and_reports_true_log_probs(trained, length_penalty):
    """Checked on the search itself (include_greedy=False); the default also lets the greedy output compete."""
    for seed in range(4):
        model = briefly_trained(seed) if trained else make_model(seed)
        src, lengths = random_batch(100 + seed)
        greedy = greedy_decode(model, src, lengths, max_len=8)
        beam = beam_search(
            model, src, lengths, beam_size=4, max_len=8, length_penalty=length_penalty, include_greedy=False
        )
        for b, (g, h) in enumerate(zip(greedy, beam)):
            assert h.score(length_penalty) >= g.score(length_penalty) - 1e-5, f"seed {seed} row {b}"
            # the reported score is the model's own log-probability of that exact output
            n = int(lengths[b])
            ends = [EOS_IDX] if h.length == len(h.tokens) + 1 else []
            rescored = sequence_log_prob(model, src[b : b + 1, :n], lengths[b : b + 1], h.tokens + ends)
            assert h.log_prob == pytest.approx(rescored, abs=1e-4)
            assert not set(h.tokens) & {*NEVER_GENERATED, EOS_IDX}


def test_beam_search_finds_the_exhaustive_best_on_a_tiny_vocabulary():
    """With beams enough for every prefix, beam search returns the best of all outputs up to max_len."""
    vocab, max_len = 6, 3  # generable: <unk>, <eos>, two words
    model = make_model(5, tgt_vocab=vocab)
    src, lengths = random_batch(5, batch=3, max_len=4)
    symbols = [t for t in range(vocab) if t not in (*NEVER_GENERATED, EOS_IDX)]
    beam = beam_search(model, src, lengths, beam_size=40, max_len=max_len, length_penalty=0.0)
    for b in range(src.size(0)):
        n = int(lengths[b])
        candidates = [list(p) + [EOS_IDX] for k in range(max_len) for p in itertools.product(symbols, repeat=k)]
        candidates += [list(p) for p in itertools.product(symbols, repeat=max_len)]  # cut off at max_len
        scores = {tuple(c): sequence_log_prob(model, src[b : b + 1, :n], lengths[b : b + 1], c) for c in candidates}
        best = max(scores, key=scores.get)
        got = tuple(beam[b].tokens + ([EOS_IDX] if beam[b].length == len(beam[b].tokens) + 1 else []))
        assert got == best
        assert beam[b].log_prob == pytest.approx(scores[best], abs=1e-4)


def test_beam_size_one_is_greedy():
    model = briefly_trained(7, steps=10)
    src, lengths = random_batch(7)
    assert [h.tokens for h in beam_search(model, src, lengths, 1, 8)] == [
        h.tokens for h in greedy_decode(model, src, lengths, 8)
    ]


def test_teacher_forcing_ratio_controls_the_decoder_inputs():
    model = make_model(8)
    src, lengths = random_batch(8)
    tgt = torch.randint(4, TGT_VOCAB, (src.size(0), 6))  # [batch, tgt_len]
    tgt[:, 0] = SOS_IDX
    with torch.no_grad():
        forced = model(src, lengths, tgt, teacher_forcing_ratio=1.0)[0]
        free = model(src, lengths, tgt, teacher_forcing_ratio=0.0)[0]
        tgt_other = tgt.clone()
        tgt_other[:, 1:] = 4 + (tgt[:, 1:] - 3) % (TGT_VOCAB - 4)
        # free running never reads the gold tokens after <sos>; teacher forcing does
        torch.testing.assert_close(model(src, lengths, tgt_other, 0.0)[0], free)
        assert not torch.allclose(model(src, lengths, tgt_other, 1.0)[0], forced)
    torch.testing.assert_close(forced[:, 0], free[:, 0])  # the first step sees <sos> either way


# ---------------------------------------------------------------- the attention switch (control rnn_noattn)
def _noattn_model(seed: int) -> Seq2Seq:
    torch.manual_seed(seed)
    config = RNNConfig(SRC_VOCAB, TGT_VOCAB, emb_dim=16, hid_dim=24, dropout=0.1, attention=False)
    return Seq2Seq(config).eval()


@pytest.mark.parametrize("attention", [True, False])
def test_without_attention_the_decoder_reads_only_the_encoders_final_states(attention):
    """Replacing every per-position encoder output leaves a no-attention decoder's step unchanged (it reads the
    fixed context: the GRUs' final states); with attention the same change moves the output."""
    model = make_model(0) if attention else _noattn_model(0)
    src, lengths = random_batch(3)
    with torch.no_grad():
        enc = model.encode(src, lengths)
        token = torch.full((src.size(0),), SOS_IDX, dtype=torch.long)  # [batch]
        logits, hidden, attn = model.decoder(token, enc.hidden, enc)  # [batch, vocab], [batch, hid], [batch, src_len]
        other = dataclasses.replace(enc, outputs=torch.randn_like(enc.outputs))  # [batch, src_len, 2*hid]
        if attention:
            other = dataclasses.replace(other, keys=model.decoder.attention.keys(other.outputs))
        logits2, hidden2, _ = model.decoder(token, enc.hidden, other)
    if attention:
        assert not torch.allclose(logits, logits2)
        assert torch.allclose(attn.sum(1), torch.ones(src.size(0)))
    else:
        assert torch.equal(logits, logits2) and torch.equal(hidden, hidden2)
        assert torch.equal(attn, torch.zeros_like(attn))  # no weights to draw
        # but the source does matter, through the final states
        changed = dataclasses.replace(enc, final=torch.randn_like(enc.final))  # [batch, 2*hid]
        assert not torch.allclose(model.decoder(token, enc.hidden, changed)[0], logits)


def test_the_no_attention_model_has_no_attention_weights_and_still_decodes():
    with_attn, without = make_model(0), _noattn_model(0)
    n_attention = sum(p.numel() for p in with_attn.decoder.attention.parameters())
    assert sum(p.numel() for p in without.parameters()) == sum(p.numel() for p in with_attn.parameters()) - n_attention
    src, lengths = random_batch(5)
    greedy = greedy_decode(without, src, lengths, max_len=6)
    beams = beam_search(without, src, lengths, beam_size=3, max_len=6)
    assert len(greedy) == len(beams) == src.size(0)
    for g, b in zip(greedy, beams):
        assert b.score(1.0) >= g.score(1.0) - 1e-5  # beam search never scores below greedy
        assert g.attention.shape == (g.length, src.size(1)) and not g.attention.any()
    # an old registered model's meta (no `attention` key) loads as the attention model
    legacy = {k: v for k, v in with_attn.config.to_dict().items() if k != "attention"}
    assert RNNConfig(**legacy).attention is True
