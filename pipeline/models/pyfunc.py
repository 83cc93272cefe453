"""MLflow pyfunc wrappers for the fine-tuned models MLflow's transformers flavour cannot serve in natural form.

- `NerModel`: text -> list of entities {entity, word, start, end, word_start, word_end} per text
  (the transformers flavour's pyfunc collapses entities to a "PER,LOC" string, losing the words).
- `TranslationModel`: English text -> German text, for GPT prompt-style translation and for
  EncoderDecoderModels with separate encoder/decoder tokenizers.
- `QAModel`: rows {"question", "context"} -> [{"answer": str, "score": float | None}] (score: extractive models'
  softmax over their n-best spans; None for generated answers). Every qa model (the text-to-text ones too)
  answers in this shape.
Each loads its weights/tokenizers from the `model` artifact (a folder saved by the matching class).
Input: a list of strings, one string, or a DataFrame whose `text` column (or first column) holds them; qa: a
DataFrame with `question` and `context` columns, a list of such dicts or one dict.
"""

from __future__ import annotations

import mlflow.pyfunc

MODEL_ARTIFACT = "model"


def texts_of(model_input) -> list[str]:
    """The input texts, whichever form pyfunc passes them in."""
    import pandas as pd

    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame):
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        return [str(x) for x in model_input[column].tolist()]
    if isinstance(model_input, pd.Series):
        return [str(x) for x in model_input.tolist()]
    if isinstance(model_input, dict) and "text" in model_input:
        return texts_of(model_input["text"])
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


class TranslationModel(mlflow.pyfunc.PythonModel):
    def __init__(self, num_beams: int = 4, max_new_tokens: int = 64, length_penalty: float = 1.0):
        self.generation = {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "length_penalty": length_penalty}
        self.translator = None

    def __getstate__(self):
        return {"generation": self.generation, "translator": None}

    def load_context(self, context):
        from pipeline.models.translation import load_translator

        self.translator = load_translator(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context, model_input, params=None):
        options = {**self.generation, **{k: v for k, v in (params or {}).items() if k in self.generation}}
        return self.translator.translate(texts_of(model_input), **options)


class QAModel(mlflow.pyfunc.PythonModel):
    def __init__(self, max_new_tokens: int = 64, batch_size: int = 32):
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
