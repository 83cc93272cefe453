"""MLflow pyfunc wrappers for the fine-tuned models MLflow's transformers flavour cannot serve in natural form.

- `NerModel`: text -> list of entities {entity, word, start, end, word_start, word_end} per text
  (the transformers flavour's pyfunc collapses entities to a "PER,LOC" string, losing the words).
- `TranslationModel`: English text -> German text, for GPT prompt-style translation and for
  EncoderDecoderModels with separate encoder/decoder tokenizers.
- `GenerationModel`: prompt -> sampled continuation, from this pipeline's pretrained GPT (registered as
  `generation-gpt`); the sampling settings (params.yaml `generate`) can be changed per request through pyfunc
  `params` (max_new_tokens, temperature, top_k, top_p, seed).
Each loads its weights/tokenizers from the `model` artifact (a folder saved by the matching class).
Input: a list of strings, one string, or a DataFrame whose `text` column (or first column) holds them.
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
