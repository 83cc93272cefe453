"""Question answering with the fine-tuned transformers: (question, context) -> (answer text, score).

- `ExtractiveReader` (bert family): AutoModelForQuestionAnswering over strided context windows
  (pipeline.data.qa_features); the answer is a span of the context, its score a softmax over the n-best spans.
- `GptAnswerer` (gpt): the prompt `Context: ...\\nQuestion: ...\\nAnswer:` continued greedily up to eos
  (pipeline.data.task_data.qa_prompt_ids); no score.
Both save to / load from one folder (weights, tokenizer and qa.json with their settings), which the MLflow
wrapper (pipeline/models/pyfunc.py QAModel) serves.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pipeline.data.qa_features import best_answers, encode_windows
from pipeline.data.task_data import PaddingCollator, qa_prompt_budget, qa_prompt_ids
from pipeline.models.conditional_generation import GptGenerator
from pipeline.models.loading import load_tokenizer

QA_SETTINGS = "qa.json"


class ExtractiveReader:
    def __init__(self, model, tokenizer, max_length: int, doc_stride: int, n_best: int, max_answer_length: int):
        self.model, self.tokenizer = model, tokenizer
        self.settings = {
            "kind": "extractive",
            "max_length": max_length,
            "doc_stride": doc_stride,
            "n_best": n_best,
            "max_answer_length": max_answer_length,
        }

    @classmethod
    def load(cls, folder: str | Path) -> ExtractiveReader:
        from transformers import AutoModelForQuestionAnswering

        settings = json.loads((Path(folder) / QA_SETTINGS).read_text(encoding="utf-8"))
        model = AutoModelForQuestionAnswering.from_pretrained(
            str(folder), use_safetensors=True, trust_remote_code=False
        )
        settings.pop("kind")
        return cls(model, load_tokenizer(folder), **settings)

    def save(self, folder: str | Path) -> None:
        self.model.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        (Path(folder) / QA_SETTINGS).write_text(json.dumps(self.settings, indent=2), encoding="utf-8")

    def windows(self, questions: Sequence[str], contexts: Sequence[str], answers=None):
        s = self.settings
        return encode_windows(self.tokenizer, questions, contexts, s["max_length"], s["doc_stride"], answers)

    def spans(self, start_logits, end_logits, windows, contexts: Sequence[str]) -> list[tuple[str, float]]:
        s = self.settings
        return best_answers(start_logits, end_logits, windows, contexts, s["n_best"], s["max_answer_length"])

    @torch.no_grad()
    def answer(
        self, questions: Sequence[str], contexts: Sequence[str], batch_size: int = 32, progress: bool = False
    ) -> list[tuple[str, float]]:
        """(answer, score) per question."""
        model = self.model
        model.eval()
        windows = self.windows(questions, contexts)
        collate = PaddingCollator(self.tokenizer.pad_token_id)
        rows = windows.inputs
        starts, ends = [], []
        for i in tqdm(range(0, len(windows), batch_size), desc="answer", disable=not progress):
            batch = collate([{k: v[j] for k, v in rows.items()} for j in range(i, min(i + batch_size, len(windows)))])
            out = model(**{k: v.to(model.device) for k, v in batch.items()})
            starts.extend(out.start_logits.float().cpu().numpy())  # [batch, width] rows
            ends.extend(out.end_logits.float().cpu().numpy())
        return self.spans(starts, ends, windows, contexts)


class GptAnswerer(GptGenerator):
    """GPT continuing a QA prompt; `generate(pairs)` / `answer(questions, contexts)` give the answer texts."""

    def __init__(self, model, tokenizer, max_length: int):
        super().__init__(model, tokenizer, "qa")
        self.max_length = max_length

    @classmethod
    def load(cls, folder: str | Path) -> GptAnswerer:
        settings = json.loads((Path(folder) / QA_SETTINGS).read_text(encoding="utf-8"))
        loaded = GptGenerator.load(folder)
        return cls(loaded.model, loaded.tokenizer, settings["max_length"])

    def save(self, folder: str | Path) -> None:
        self.model.save_pretrained(str(folder))  # weights and tokenizer as GptGenerator; the QA settings below
        self.tokenizer.save_pretrained(str(folder))
        settings = {"kind": "generative", "max_length": self.max_length}
        (Path(folder) / QA_SETTINGS).write_text(json.dumps(settings, indent=2), encoding="utf-8")

    def prompt_ids(self, sources: Sequence, max_tokens: int) -> list[list[int]]:
        return qa_prompt_ids(self.tokenizer, sources, max_tokens)

    def max_prompt_length(self, max_new_tokens: int) -> int:
        return qa_prompt_budget(self.max_length)  # the prompts the model was trained on

    def generate(self, sources: Sequence, *, max_new_tokens: int = 64, **options) -> list[str]:
        """Answers of (question, context) pairs; generation stops at the model's last position."""
        room = self.model.config.n_positions - qa_prompt_budget(self.max_length)
        return super().generate(sources, max_new_tokens=max(1, min(max_new_tokens, room)), **options)

    def answer(self, questions: Sequence[str], contexts: Sequence[str], **options) -> list[tuple[str, None]]:
        texts = self.generate(list(zip(questions, contexts)), **options)
        return [(t, None) for t in texts]


def load_qa_model(folder: str | Path):
    """The reader or answerer saved in `folder`."""
    kind = json.loads((Path(folder) / QA_SETTINGS).read_text(encoding="utf-8"))["kind"]
    return ExtractiveReader.load(folder) if kind == "extractive" else GptAnswerer.load(folder)
