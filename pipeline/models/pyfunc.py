"""MLflow pyfunc wrappers for the fine-tuned models MLflow's transformers flavour cannot serve in natural form.

- `NerModel`: text -> list of entities {entity, word, start, end, word_start, word_end} per text
  (the transformers flavour's pyfunc collapses entities to a "PER,LOC" string, losing the words).
- `TextGenerationModel`: source text -> target text (translation: English -> German; summarization:
  dialogue -> summary), for GPT prompt-style generation and for EncoderDecoderModels with separate
  encoder/decoder tokenizers (pipeline.models.text_generation). Answers a list of strings.
Each loads its weights/tokenizers from the `model` artifact (a folder saved by the matching class).
Input: a list of strings, one string, or a DataFrame whose `text` (or `dialogue`) column, else its first
column, holds them.
"""

from __future__ import annotations

import mlflow.pyfunc

MODEL_ARTIFACT = "model"
TEXT_COLUMNS = ("text", "dialogue")  # a DataFrame's input column, by name (else its first column)


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
    if isinstance(model_input, dict) and any(c in model_input for c in TEXT_COLUMNS):
        return texts_of(model_input[next(c for c in TEXT_COLUMNS if c in model_input)])
    return [str(x) for x in list(model_input)]


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


class TextGenerationModel(mlflow.pyfunc.PythonModel):
    def __init__(self, num_beams: int = 4, max_new_tokens: int = 64, length_penalty: float = 1.0):
        self.generation = {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "length_penalty": length_penalty}
        self.generator = None

    def __getstate__(self):
        return {"generation": self.generation, "generator": None}

    def load_context(self, context):
        from pipeline.models.text_generation import load_generator

        self.generator = load_generator(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context, model_input, params=None):
        options = {**self.generation, **{k: v for k, v in (params or {}).items() if k in self.generation}}
        return self.generator.generate(texts_of(model_input), **options)
