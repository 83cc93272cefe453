"""Word-level NER with a token-classification model: raw text in, entities (words, type, offsets) out.

Words are whitespace-separated (as in CoNLL); each word takes the tag predicted on its first sub-token,
exactly as in training and evaluation (pipeline.data.task_data), and B-/I- tags are grouped into entities.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from pipeline.data.task_data import PaddingCollator, encode_words, word_spans
from pipeline.models.loading import load_tokenizer


def tags_to_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first_word, last_word + 1) per entity; an I- tag that does not continue its type starts one."""
    entities: list[list] = []
    current = None
    for i, tag in enumerate(tags):
        prefix, _, kind = tag.partition("-")
        if prefix == "B" or (prefix == "I" and (current is None or current[0] != kind)):
            current = [kind, i, i + 1]
            entities.append(current)
        elif prefix == "I":
            current[2] = i + 1
        else:
            current = None
    return [tuple(e) for e in entities]


def text_entities(text: str, tags: Sequence[str]) -> list[dict]:
    """IOB2 tags of the words of `text` -> the entities every NER model of the project serves:
    {"entity", "word", "start", "end", "word_start", "word_end"} (character and word ends exclusive)."""
    spans = word_spans(text)
    entities = []
    for kind, first, last in tags_to_entities(tags[: len(spans)]):
        start, end = spans[first][0], spans[last - 1][1]
        entities.append(
            {"entity": kind, "word": text[start:end], "start": start, "end": end, "word_start": first, "word_end": last}
        )
    return entities


class NerTagger:
    def __init__(self, model, tokenizer, max_length: int = 512):
        self.model = model
        self.tokenizer = tokenizer
        # the model has no position embeddings beyond this
        self.max_length = min(
            max_length,
            getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", max_length),
        )
        self.id2label = {int(k): v for k, v in model.config.id2label.items()}

    @classmethod
    def load(cls, folder: str | Path, max_length: int = 512) -> NerTagger:
        from transformers import AutoModelForTokenClassification

        model = AutoModelForTokenClassification.from_pretrained(str(folder), use_safetensors=True)
        return cls(model, load_tokenizer(folder), max_length)

    @torch.no_grad()
    def word_tags(self, texts: Sequence[str], batch_size: int = 32) -> list[list[str]]:
        """One tag per whitespace-separated word of each text (words cut off by max_length get 'O')."""
        self.model.eval()
        spans = [word_spans(t) for t in texts]
        enc = encode_words(self.tokenizer, list(texts), spans, self.max_length)
        collate = PaddingCollator(self.tokenizer.pad_token_id or 0)
        out = []
        for lo in range(0, len(texts), batch_size):
            rows = range(lo, min(lo + batch_size, len(texts)))
            batch = collate([{k: enc[k][i] for k in ("input_ids", "attention_mask")} for i in rows])
            batch = {k: v.to(self.model.device) for k, v in batch.items()}
            logits = self.model(**batch).logits  # [batch, width, tags]
            for i, pred in zip(rows, logits.argmax(-1).tolist()):
                tags = ["O"] * len(spans[i])
                seen = set()
                for p, w in zip(pred, enc["word_index"][i]):  # right padding: the real tokens come first
                    if w >= 0 and w not in seen:
                        seen.add(w)
                        tags[w] = self.id2label[p]
                out.append(tags)
        return out

    def entities(self, texts: Sequence[str]) -> list[list[dict]]:
        """Per text, its entities:
        [{'entity': 'PER', 'word': 'John Smith', 'start': 0, 'end': 10, 'word_start': 0, 'word_end': 2}]."""
        return [text_entities(text, tags) for text, tags in zip(texts, self.word_tags(texts))]
