"""Generation: beam search that reorders only the encoder-decoder's own decoder cache; sources batched by length,
outputs in the sources' order."""

from __future__ import annotations

import copy

import torch

from pipeline.models.conditional_generation import (
    EncoderDecoderGenerator,
    GptGenerator,
    length_sorted_batches,
    reorder_only_decoder_cache,
)


def _tiny_bart():
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=64,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=None,
        init_std=0.3,  # sharp attention: outputs depend on the cached past (at 0.02 even no reordering passes)
    )
    return BartForConditionalGeneration(config).eval()


def test_beam_search_is_unchanged_when_only_the_decoder_cache_is_reordered():
    """The cross-attention cache holds one example's encoder states in each of its beams: skipping its reordering
    leaves beam search's output exactly as it was (random weights: the beams change ranks often)."""
    plain = _tiny_bart()
    fast = reorder_only_decoder_cache(copy.deepcopy(plain))
    ids = torch.randint(3, 64, (3, 20), generator=torch.Generator().manual_seed(1))  # [batch, src_len]
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0  # a padded source too
    options = dict(num_beams=4, max_new_tokens=16, min_new_tokens=16, do_sample=False)
    expected = plain.generate(input_ids=ids, attention_mask=mask, **options)  # [batch, tgt_len]
    calls = []
    fast_reorder = fast._reorder_cache
    fast._reorder_cache = lambda cache, beam_idx: calls.append(beam_idx.clone()) or fast_reorder(cache, beam_idx)
    got = fast.generate(input_ids=ids, attention_mask=mask, **options)
    assert torch.equal(got, expected)
    assert calls and any(not torch.equal(i, torch.arange(len(i))) for i in calls)  # beams were really reordered
    unordered = copy.deepcopy(plain)
    unordered._reorder_cache = lambda cache, beam_idx: cache  # the check can fail: no reordering changes the output
    assert not torch.equal(unordered.generate(input_ids=ids, attention_mask=mask, **options), expected)


def test_the_generator_applies_it_to_every_model_it_is_given():
    generator = EncoderDecoderGenerator(_tiny_bart(), None, None, "translation")
    assert hasattr(generator.model, "_reorder_cache")
    generator.model = _tiny_bart()  # e.g. a scratch twin's fresh model
    assert hasattr(generator.model, "_reorder_cache")


def test_length_sorted_batches_put_the_longest_sources_together_and_keep_the_order_of_ties():
    assert length_sorted_batches([3, 9, 1, 9, 5], 2) == [[1, 3], [4, 0], [2]]
    assert length_sorted_batches([], 4) == []


def test_batched_generation_returns_each_output_at_its_source(t2t_data_root):
    """Sources batched by length (GptGenerator; EncoderDecoderGenerator batches the same way): every output is
    the one its source gets alone (sharp random weights: outputs differ between sources)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from pipeline.models.loading import load_tokenizer

    tok = load_tokenizer(t2t_data_root / "data" / "tokenizers" / "gpt")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.5)
    generator = GptGenerator(GPT2LMHeadModel(config).eval(), tok, "translation")
    sources = ["A dog .", "Two men are playing football in a large park .", "A woman sings .", "People walk outside ."]
    alone = [generator.generate([s], max_new_tokens=6, batch_size=1)[0] for s in sources]
    assert len(set(alone)) == len(sources)
    assert generator.generate(sources, max_new_tokens=6, batch_size=2) == alone
