"""Source text -> target text with pretrained transformers (translation, summarization: the task kinds of
pipeline.data.task_data.TEXT_PAIRS): GPT as a conditional LM, BERT-family encoders + GPT decoder.

- `GptGenerator`: the kind's prompt (`English: <en>\\nGerman:`, `<dialogue>\\nSummary:`) is left-padded so a
  batch generates together; the output is what comes after the prompt, up to eos.
- `EncoderDecoderGenerator`: a transformers EncoderDecoderModel (BERT/MiniLM encoder, this pipeline's
  pretrained GPT decoder with cross-attention added); sources use the encoder tokenizer, outputs the
  decoder's byte-level tokenizer (which covers German umlauts).
Both save to / load from one folder (weights + tokenizer(s) + task_kind.json naming the task kind), so the
MLflow wrapper serves them as trained.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pipeline.data.task_data import prompt_ids, target_room, text_pair
from pipeline.models.loading import load_tokenizer

log = logging.getLogger(__name__)

ENCODER_TOKENIZER = "encoder_tokenizer"
DECODER_TOKENIZER = "decoder_tokenizer"
KIND_FILE = "task_kind.json"  # {"kind": "translation" | "summarization"}, saved with the weights


def save_kind(folder: Path, kind: str) -> None:
    text_pair(kind)  # a known source -> target kind
    (folder / KIND_FILE).write_text(json.dumps({"kind": kind}), encoding="utf-8")


def load_kind(folder: Path) -> str:
    """The task kind a saved generator was trained for (folders saved before generation.json: translation)."""
    path = folder / KIND_FILE
    return json.loads(path.read_text(encoding="utf-8"))["kind"] if path.exists() else "translation"


def reorder_only_decoder_cache(model):
    """Make beam search reorder only the decoder's own (self-attention) cache of this encoder-decoder `model`.

    Each step, beam search reorders the key/value cache by the beams it keeps. A kept beam always comes from the
    same example, and all beams of an example attend to the same (expanded) encoder states: reordering the
    cross-attention cache (batch x beams x source length, every layer, every step) copies identical rows. That copy
    was 125 of 183 s of encdec-squad's beam search (profiled). transformers' generate calls a model's
    `_reorder_cache` when there is one; returns the model."""
    from transformers.cache_utils import EncoderDecoderCache

    def reorder(cache, beam_idx):
        if isinstance(cache, EncoderDecoderCache):
            cache.self_attention_cache.reorder_cache(beam_idx)
        else:
            cache.reorder_cache(beam_idx)
        return cache

    model._reorder_cache = reorder
    return model


def build_encoder_decoder(encoder_path: str | Path, decoder_path: str | Path, decoder_tokenizer):
    """EncoderDecoderModel from a BERT-family encoder folder and a GPT decoder folder (cross-attention added)."""
    from transformers import AutoConfig, EncoderDecoderModel

    decoder_config = AutoConfig.from_pretrained(str(decoder_path))
    decoder_config.is_decoder = True
    decoder_config.add_cross_attention = True  # new, randomly initialised cross-attention blocks
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(
        str(encoder_path),
        str(decoder_path),
        encoder_use_safetensors=True,
        decoder_use_safetensors=True,
        decoder_config=decoder_config,
    )
    set_decoder_special_tokens(model, decoder_tokenizer)
    return model


def set_decoder_special_tokens(model, decoder_tokenizer) -> None:
    """Decoding starts with the GPT bos token, stops at eos, pads with its own pad token."""
    bos = (
        decoder_tokenizer.bos_token_id if decoder_tokenizer.bos_token_id is not None else decoder_tokenizer.eos_token_id
    )
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id = bos
        cfg.bos_token_id = bos
        cfg.eos_token_id = decoder_tokenizer.eos_token_id
        cfg.pad_token_id = decoder_tokenizer.pad_token_id
    model.config.vocab_size = model.config.decoder.vocab_size


def length_sorted_batches(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Indices of the sources in batches of `size`, longest first: a batch pads to its longest source and decodes
    until its longest output, so sources of similar lengths share one (the caller puts each output back at its
    index). Ties keep the sources' order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + size] for i in range(0, len(order), size)]


class GptGenerator:
    def __init__(self, model, tokenizer, kind: str):
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind

    @classmethod
    def load(cls, folder: str | Path) -> GptGenerator:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True)
        return cls(model, load_tokenizer(folder), load_kind(Path(folder)))

    def save(self, folder: str | Path) -> None:
        self.model.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        save_kind(Path(folder), self.kind)

    def prompt_ids(self, sources: Sequence, max_tokens: int) -> list[list[int]]:
        """The token ids each generation continues (a subclass prompts for another task: pipeline/models/qa.py)."""
        return prompt_ids(self.tokenizer, sources, max_tokens, self.kind)

    def max_prompt_length(self, max_new_tokens: int) -> int:
        """Prompt tokens: the model's positions less the output's room, as in training rows of the model's full
        length (task_data.encode_causal: at most half of them for the output)."""
        positions = self.model.config.n_positions
        return max(8, positions - target_room(positions, max_new_tokens))

    @torch.no_grad()
    def generate(
        self,
        sources: Sequence[str],
        *,
        num_beams: int = 1,
        max_new_tokens: int = 64,
        length_penalty: float = 1.0,
        batch_size: int = 32,
        progress: bool = False,
    ) -> list[str]:
        tok, model = self.tokenizer, self.model
        model.eval()
        side = tok.padding_side
        tok.padding_side = "left"  # generation continues every row from its last real token
        prompts = self.prompt_ids(list(sources), self.max_prompt_length(max_new_tokens))
        out = [""] * len(prompts)
        try:
            batches = length_sorted_batches([len(p) for p in prompts], batch_size)
            for batch in tqdm(batches, desc="generate", disable=not progress):
                ids = [prompts[i] for i in batch]
                enc = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(model.device)
                room = model.config.n_positions - enc["input_ids"].shape[1]  # never past the last position
                generated = model.generate(
                    **enc,  # input_ids [batch, prompt_len]
                    max_new_tokens=max(1, min(max_new_tokens, room)),
                    num_beams=num_beams,
                    do_sample=False,
                    length_penalty=length_penalty,
                    early_stopping=num_beams > 1,
                    eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                )  # [batch, prompt_len + new]
                new_tokens = generated[:, enc["input_ids"].shape[1] :]
                for i, text in zip(batch, tok.batch_decode(new_tokens, skip_special_tokens=True)):
                    out[i] = text.strip()
        finally:
            tok.padding_side = side
        return out


class EncoderDecoderGenerator:
    def __init__(self, model, encoder_tokenizer, decoder_tokenizer, kind: str):
        self.model = model
        self.encoder_tokenizer = encoder_tokenizer
        self.decoder_tokenizer = decoder_tokenizer
        self.kind = kind

    @property
    def model(self):
        return self._model

    @model.setter
    def model(self, model) -> None:  # also a scratch twin's fresh model (pipeline/train/finetune.py)
        self._model = reorder_only_decoder_cache(model)

    @classmethod
    def load(cls, folder: str | Path) -> EncoderDecoderGenerator:
        from transformers import EncoderDecoderModel

        folder = Path(folder)
        model = EncoderDecoderModel.from_pretrained(str(folder), use_safetensors=True)
        return cls(
            model,
            load_tokenizer(folder / ENCODER_TOKENIZER),
            load_tokenizer(folder / DECODER_TOKENIZER),
            load_kind(folder),
        )

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.model.save_pretrained(str(folder))
        self.encoder_tokenizer.save_pretrained(str(folder / ENCODER_TOKENIZER))
        self.decoder_tokenizer.save_pretrained(str(folder / DECODER_TOKENIZER))
        save_kind(folder, self.kind)

    @torch.no_grad()
    def generate(
        self,
        sources: Sequence[str],
        *,
        num_beams: int = 1,
        max_new_tokens: int = 64,
        length_penalty: float = 1.0,
        batch_size: int = 32,
        progress: bool = False,
    ) -> list[str]:
        self.model.eval()
        dec = self.decoder_tokenizer
        encoded = self.encoder_tokenizer(
            list(sources),
            truncation=True,
            max_length=self.model.config.encoder.max_position_embeddings,
            return_token_type_ids=False,
        )["input_ids"]
        out = [""] * len(encoded)
        for batch in tqdm(
            length_sorted_batches([len(e) for e in encoded], batch_size), desc="generate", disable=not progress
        ):
            enc = self.encoder_tokenizer.pad(
                {"input_ids": [encoded[i] for i in batch]}, padding=True, return_tensors="pt"
            ).to(self.model.device)
            generated = self.model.generate(
                **enc,  # input_ids [batch, src_len]
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                do_sample=False,
                length_penalty=length_penalty,
                early_stopping=num_beams > 1,
                decoder_start_token_id=self.model.config.decoder_start_token_id,
                eos_token_id=dec.eos_token_id,
                pad_token_id=dec.pad_token_id,
            )  # [batch, 1 + new]
            for i, text in zip(batch, dec.batch_decode(generated, skip_special_tokens=True)):
                out[i] = text.strip()
        return out


def load_generator(folder: str | Path):
    """The generator saved in `folder` (an encoder-decoder when it holds an encoder tokenizer)."""
    folder = Path(folder)
    if (folder / ENCODER_TOKENIZER).is_dir():
        return EncoderDecoderGenerator.load(folder)
    return GptGenerator.load(folder)
