"""Model, tokenizer(s), encoded splits and metrics for fine-tuning one pretrained transformer on one task.

- classification: AutoModelForSequenceClassification (GPT-2 pools its last non-pad token: pad_token_id set).
- ner: AutoModelForTokenClassification; labels on each word's first sub-token.
- source -> target text (translation, summarization: task_data.TEXT_PAIRS): GPT as a conditional LM;
  BERT-family models as the encoder of an EncoderDecoderModel whose decoder is this pipeline's pretrained GPT
  (cross-attention added), with the GPT byte-level tokenizer. Both are scored from generated text.
- qa: BERT-family models extract the answer span (AutoModelForQuestionAnswering over strided context windows,
  validation EM/F1 from the n-best span post-processing); GPT generates the answer after a prompt.
Weights are read as safetensors only; no remote code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from pipeline.core import paths
from pipeline.core.config import QAConfig
from pipeline.core.metrics import MAIN_METRIC, classification_metrics, ner_metrics, qa_metrics
from pipeline.data.task_data import (
    TEXT_PAIRS,
    PaddingCollator,
    encode_causal,
    encode_causal_qa,
    encode_classification,
    encode_ner,
    encode_seq2seq,
    label_names,
    task_kind,
    word_predictions,
)
from pipeline.models.loading import load_tokenizer

log = logging.getLogger(__name__)

GPT_DECODER = paths.pretrain_dir("gpt") / "model"


@dataclass
class TaskSetup:
    kind: str
    model: Any
    tokenizer: Any  # tokenizer of the model inputs (saved with checkpoints)
    data: datasets.DatasetDict  # the prepared (raw) splits
    encoded: datasets.DatasetDict  # model inputs per split
    collator: Callable
    main_metric: str
    max_length: int
    labels: list[str] | None = None
    generator: Any = None  # generates the outputs validation and test are scored on (source -> target kinds, gpt qa)
    reader: Any = None  # extractive qa: pipeline.models.qa.ExtractiveReader
    compute_metrics: Callable | None = None
    inputs: list[Path] = field(default_factory=list)  # files this run depends on (for tags)


def max_positions(config) -> int:
    for attr in ("max_position_embeddings", "n_positions"):
        value = getattr(config, attr, None)
        if value:
            return int(value)
    return 512


def argmax_logits(logits, labels):
    """Keep only predicted ids during evaluation (full logits of a whole split would not fit in memory)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(-1)


def build_setup(
    family: str,
    weights: Path,
    task: str,
    data: datasets.DatasetDict,
    max_length: int,
    max_new_tokens: int,
    qa: QAConfig | None = None,
) -> TaskSetup:
    """max_new_tokens: the run's generation cap (source -> target text kinds keep that much room for the target);
    qa: the train.qa settings (question answering only)."""
    kind = task_kind(task)
    if kind == "classification":
        return _classification(family, weights, task, data, max_length)
    if kind == "ner":
        return _ner(family, weights, task, data, max_length)
    if kind == "qa":
        if qa is None:
            raise ValueError(f"task {task!r} is question answering: build_setup needs the train.qa settings")
        return _gpt_qa(weights, data, max_length) if family == "gpt" else _extractive_qa(weights, data, max_length, qa)
    if kind not in TEXT_PAIRS:
        raise ValueError(f"fine-tuning has no setup for task kind {kind!r} ({task})")
    if family == "gpt":
        return _gpt_generation(weights, data, kind, max_length, max_new_tokens)
    return _encoder_decoder_generation(weights, data, kind, max_length)


def _labelled_config(names: list[str], tokenizer):
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
        "pad_token_id": tokenizer.pad_token_id,
        "use_safetensors": True,
        "trust_remote_code": False,
    }


def _classification(family, weights, task, data, max_length) -> TaskSetup:
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(weights)
    names = label_names(data, task)
    model = AutoModelForSequenceClassification.from_pretrained(str(weights), **_labelled_config(names, tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id  # GPT-2 pools the last non-pad token
    max_length = min(max_length, max_positions(model.config))
    encoded = datasets.DatasetDict({s: encode_classification(data[s], tokenizer, max_length) for s in data})

    def compute_metrics(pred) -> dict[str, float]:
        return classification_metrics(pred.label_ids.tolist(), np.asarray(pred.predictions).tolist(), len(names))

    return TaskSetup(
        "classification",
        model,
        tokenizer,
        data,
        encoded,
        PaddingCollator(tokenizer.pad_token_id),
        MAIN_METRIC["classification"],
        max_length,
        names,
        compute_metrics=compute_metrics,
    )


def ner_scores(pred_rows, label_rows, names: list[str]) -> dict[str, float]:
    """Entity metrics from token-level predicted ids and first-sub-token labels (-100 elsewhere)."""
    true_tags, pred_tags = [], []
    for pred, labels in zip(pred_rows, label_rows):
        labels = [int(x) for x in labels]
        true_tags.append([names[x] for x in labels if x != -100])
        pred_tags.append([names[x] for x in word_predictions(pred, labels)])
    return ner_metrics(true_tags, pred_tags)


def _ner(family, weights, task, data, max_length) -> TaskSetup:
    from transformers import AutoModelForTokenClassification

    tokenizer = load_tokenizer(weights)
    names = label_names(data, task)
    model = AutoModelForTokenClassification.from_pretrained(str(weights), **_labelled_config(names, tokenizer))
    max_length = min(max_length, max_positions(model.config))
    encoded = datasets.DatasetDict({s: encode_ner(data[s], tokenizer, max_length) for s in data})

    def compute_metrics(pred) -> dict[str, float]:
        return ner_scores(np.asarray(pred.predictions), pred.label_ids, names)

    return TaskSetup(
        "ner",
        model,
        tokenizer,
        data,
        encoded,
        PaddingCollator(tokenizer.pad_token_id),
        MAIN_METRIC["ner"],
        max_length,
        names,
        compute_metrics=compute_metrics,
    )


def _gpt_generation(weights, data, kind, max_length, max_new_tokens) -> TaskSetup:
    from transformers import AutoModelForCausalLM

    from pipeline.models.conditional_generation import GptGenerator

    tokenizer = load_tokenizer(weights)
    model = AutoModelForCausalLM.from_pretrained(str(weights), use_safetensors=True, trust_remote_code=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    max_length = min(max_length, max_positions(model.config))
    encoded = datasets.DatasetDict(
        {s: encode_causal(data[s], tokenizer, max_length, kind, max_new_tokens) for s in data}
    )
    return TaskSetup(
        kind,
        model,
        tokenizer,
        data,
        encoded,
        PaddingCollator(tokenizer.pad_token_id),
        MAIN_METRIC[kind],
        max_length,
        generator=GptGenerator(model, tokenizer, kind),
    )


def _encoder_decoder_generation(weights, data, kind, max_length) -> TaskSetup:
    from pipeline.models.conditional_generation import EncoderDecoderGenerator, build_encoder_decoder

    if not (GPT_DECODER / "config.json").exists():
        raise FileNotFoundError(
            f"{GPT_DECODER} not found: BERT-family {kind} uses this pipeline's pretrained GPT as its decoder; "
            "run the GPT pretraining stage first (python -m flows.pretrain gpt)"
        )
    encoder_tokenizer = load_tokenizer(weights)
    decoder_tokenizer = load_tokenizer(GPT_DECODER)
    model = build_encoder_decoder(weights, GPT_DECODER, decoder_tokenizer)
    # sources fill the encoder's positions, targets the decoder's (each at most max_length)
    source_length = min(max_length, max_positions(model.config.encoder))
    target_length = min(max_length, max_positions(model.config.decoder))
    encoded = datasets.DatasetDict(
        {
            s: encode_seq2seq(data[s], encoder_tokenizer, decoder_tokenizer, kind, source_length, target_length)
            for s in data
        }
    )
    return TaskSetup(
        kind,
        model,
        encoder_tokenizer,
        data,
        encoded,
        PaddingCollator(encoder_tokenizer.pad_token_id),
        MAIN_METRIC[kind],
        source_length,
        generator=EncoderDecoderGenerator(model, encoder_tokenizer, decoder_tokenizer, kind),
        inputs=[GPT_DECODER],
    )


def qa_references(split) -> list[list[str]]:
    """Every question's reference answers (SQuAD's answers.text)."""
    return [list(a["text"]) for a in split["answers"]]


def _extractive_qa(weights, data, max_length, qa: QAConfig) -> TaskSetup:
    from transformers import AutoModelForQuestionAnswering

    from pipeline.models.qa import ExtractiveReader

    tokenizer = load_tokenizer(weights)
    model = AutoModelForQuestionAnswering.from_pretrained(str(weights), use_safetensors=True, trust_remote_code=False)
    max_length = min(max_length, max_positions(model.config))
    reader = ExtractiveReader(model, tokenizer, max_length, qa.doc_stride, qa.n_best, qa.max_answer_length)
    windows = {s: reader.windows(data[s]["question"], data[s]["context"], data[s]["answers"]) for s in data}
    encoded = datasets.DatasetDict({s: datasets.Dataset.from_dict(w.rows()) for s, w in windows.items()})
    validation = data["validation"]
    contexts, references = list(validation["context"]), qa_references(validation)

    def compute_metrics(pred) -> dict[str, float]:
        """EM/F1 of the validation questions from the Trainer's start/end logits of their windows."""
        start_logits, end_logits = pred.predictions[:2]  # [windows, width] each (padded with -100)
        answers = reader.spans(start_logits, end_logits, windows["validation"], contexts)
        return qa_metrics(references, [text for text, _ in answers])

    return TaskSetup(
        "qa",
        model,
        tokenizer,
        data,
        encoded,
        PaddingCollator(tokenizer.pad_token_id),
        MAIN_METRIC["qa"],
        max_length,
        reader=reader,
        compute_metrics=compute_metrics,
    )


def _gpt_qa(weights, data, max_length) -> TaskSetup:
    from transformers import AutoModelForCausalLM

    from pipeline.models.qa import GptAnswerer

    tokenizer = load_tokenizer(weights)
    model = AutoModelForCausalLM.from_pretrained(str(weights), use_safetensors=True, trust_remote_code=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    max_length = min(max_length, max_positions(model.config))
    encoded = datasets.DatasetDict(
        {s: encode_causal_qa(data[s], tokenizer, max_length, answer_windows=s == "train") for s in data}
    )
    return TaskSetup(
        "qa",
        model,
        tokenizer,
        data,
        encoded,
        PaddingCollator(tokenizer.pad_token_id),
        MAIN_METRIC["qa"],
        max_length,
        generator=GptAnswerer(model, tokenizer, max_length),
    )
