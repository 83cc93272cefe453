"""MLflow pyfunc wrappers: every family of a task serves the same request and response shape.

Request (every task): a list of texts, one string, or a DataFrame whose `text` column holds them (translation
also `en`, summarization also `dialogue`; else the first column). NER texts are whitespace-separated words, as in
CoNLL.
Response, per task kind (one item per input text, in order):
- classification: {"label": str, "score": float | None} (the score is the predicted label's probability; None
  for models without one, the text-to-text families);
- ner: a list of entities {"entity", "word", "start", "end", "word_start", "word_end"} (pipeline.models.
  ner_tagger.text_entities; character and word ends exclusive);
- translation, summarization: the output text (str: the German text, the dialogue's summary), by
  `ConditionalGenerationModel` for gpt/bert/minilm (pipeline.models.conditional_generation) and the scratch
  families' own;
- qa (request: a DataFrame with `question` and `context` columns, a list of such dicts or one dict):
  {"answer": str, "score": float | None} (the score: extractive models' softmax over their n-best spans; None
  for generated answers).
- generation (the pretrained GPT, `generation-gpt`): the sampled continuation (str); the sampling settings
  (params.yaml `generate`) can be changed per request through pyfunc `params` (max_new_tokens, temperature,
  top_k, top_p, seed).
The fine-tuned transformers are served by the wrappers below; the scratch families by their own (rnn.py,
encdec.py), all through pyfunc. Each wrapper loads its weights/tokenizer from the `model` artifact (a folder
saved by the matching class) and pickles no weights.
"""

from __future__ import annotations

import mlflow.pyfunc

MODEL_ARTIFACT = "model"
BATCH_SIZE = 32  # a request's texts go through the model this many at a time
TEXT_COLUMNS = ("text", "en", "dialogue")  # DataFrame columns read as the input texts, in this order


def texts_of(model_input) -> list[str]:
    """The input texts, whichever form pyfunc passes them in."""
    import pandas as pd

    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame):
        column = next((c for c in TEXT_COLUMNS if c in model_input.columns), model_input.columns[0])
        return [str(x) for x in model_input[column].tolist()]
    if isinstance(model_input, pd.Series):
        return [str(x) for x in model_input.tolist()]
    if isinstance(model_input, dict):
        column = next((c for c in TEXT_COLUMNS if c in model_input), None)
        if column is not None:
            return texts_of(model_input[column])
    return [str(x) for x in list(model_input)]


def qa_rows(model_input) -> tuple[list[str], list[str]]:
    """(questions, contexts) of served qa rows: a DataFrame with `question` and `context` columns, a list of
    {"question", "context"} dicts, or one such dict."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        rows = model_input.to_dict(orient="records")
    elif isinstance(model_input, dict):
        rows = (
            [model_input]
            if isinstance(model_input.get("question"), str)
            else pd.DataFrame(model_input).to_dict(orient="records")
        )
    else:
        rows = list(model_input)
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not {"question", "context"} <= set(row):
            got = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"qa input row {i}: expected the fields 'question' and 'context', got {got}")
    return [str(r["question"]) for r in rows], [str(r["context"]) for r in rows]


def qa_answers(pairs) -> list[dict]:
    """The one served shape of every qa model: [{"answer": str, "score": float | None}]."""
    return [{"answer": text, "score": None if score is None else float(score)} for text, score in pairs]


def label_answer(label: str, score: float | None = None) -> dict:
    """One classification answer, as every classification model serves it."""
    return {"label": label, "score": None if score is None else float(score)}


class ClassificationModel(mlflow.pyfunc.PythonModel):
    """A fine-tuned sequence classifier (safetensors weights + tokenizer): texts -> {"label", "score"}."""

    def __init__(self, max_length: int = 512):
        self.max_length = max_length
        self.model = self.tokenizer = None

    def __getstate__(self):
        return {"max_length": self.max_length, "model": None, "tokenizer": None}

    def load_context(self, context):
        import torch
        from transformers import AutoModelForSequenceClassification

        from pipeline.models.loading import load_tokenizer

        folder = context.artifacts[MODEL_ARTIFACT]
        self.tokenizer = load_tokenizer(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True)
        self.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        positions = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", self.max_length
        )
        self.max_length = min(self.max_length, positions)
        self.id2label = {int(k): v for k, v in self.model.config.id2label.items()}

    def predict(self, context, model_input, params=None) -> list[dict]:
        import torch

        texts, answers = texts_of(model_input), []
        for lo in range(0, len(texts), BATCH_SIZE):
            enc = self.tokenizer(
                texts[lo : lo + BATCH_SIZE],
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
                return_token_type_ids=False,
            ).to(self.model.device)
            with torch.no_grad():
                probs = self.model(**enc).logits.float().softmax(-1)  # [batch, labels]
            best, index = probs.max(-1)  # [batch]
            answers += [label_answer(self.id2label[i], p) for i, p in zip(index.tolist(), best.tolist())]
        return answers


class NerModel(mlflow.pyfunc.PythonModel):
    def __init__(self, max_length: int = 512):
        self.max_length = max_length
        self.tagger = None

    def __getstate__(self):
        return {"max_length": self.max_length, "tagger": None}  # weights live in the artifact, not the pickle

    def load_context(self, context):
        from pipeline.models.ner_tagger import NerTagger

        self.tagger = NerTagger.load(context.artifacts[MODEL_ARTIFACT], self.max_length)

    def predict(self, context, model_input, params=None):
        return self.tagger.entities(texts_of(model_input))


class ConditionalGenerationModel(mlflow.pyfunc.PythonModel):
    def __init__(self, num_beams: int = 4, max_new_tokens: int = 64, length_penalty: float = 1.0):
        self.generation = {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "length_penalty": length_penalty}
        self.generator = None

    def __getstate__(self):
        return {"generation": self.generation, "generator": None}

    def load_context(self, context):
        from pipeline.models.conditional_generation import load_generator

        self.generator = load_generator(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context, model_input, params=None):
        options = {**self.generation, **{k: v for k, v in (params or {}).items() if k in self.generation}}
        return self.generator.generate(texts_of(model_input), batch_size=BATCH_SIZE, **options)


class QAModel(mlflow.pyfunc.PythonModel):
    """A fine-tuned qa model (pipeline.models.qa: extractive reader or GPT answerer): rows -> {"answer", "score"}."""

    def __init__(self, max_new_tokens: int = 64, batch_size: int = BATCH_SIZE):
        self.options = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
        self.reader = None

    def __getstate__(self):
        return {"options": self.options, "reader": None}

    def load_context(self, context):
        from pipeline.models.qa import load_qa_model

        self.reader = load_qa_model(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context, model_input, params=None):
        from pipeline.models.qa import ExtractiveReader

        questions, contexts = qa_rows(model_input)
        if isinstance(self.reader, ExtractiveReader):
            return qa_answers(self.reader.answer(questions, contexts, batch_size=self.options["batch_size"]))
        return qa_answers(self.reader.answer(questions, contexts, **self.options))


class GenerationModel(mlflow.pyfunc.PythonModel):
    """Completes prompts with the pretrained GPT (pipeline.models.generation.TextGenerator); returns one string per
    prompt: the sampled continuation without the prompt."""

    def __init__(self, max_new_tokens: int, temperature: float, top_k: int, top_p: float, seed: int):
        self.sampling = {
            "max_new_tokens": int(max_new_tokens),
            "temperature": float(temperature),
            "top_k": int(top_k),
            "top_p": float(top_p),
            "seed": int(seed),
        }
        self.generator = None

    def __getstate__(self):
        return {"sampling": self.sampling, "generator": None}

    def load_context(self, context):
        from pipeline.models.generation import TextGenerator

        self.generator = TextGenerator.load(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context, model_input, params=None):
        chosen = {k: v for k, v in (params or {}).items() if k in self.sampling and v is not None}
        options = {**self.sampling, **{k: type(self.sampling[k])(v) for k, v in chosen.items()}}
        return self.generator.complete(texts_of(model_input), **options)
