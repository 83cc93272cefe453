"""Logging and registering models: pinned requirements, natural-form predictions, no duplicate versions."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipeline.core.config import parse_params
from pipeline.data.readers import NER_TAGS, SST2_LABELS
from pipeline.models.pyfunc import MODEL_ARTIFACT, ClassificationModel, NerModel
from pipeline.tracking import registry
from pipeline.tracking import runs as tracking


@pytest.fixture
def store(tmp_path, default_params_dict):
    """A real MLflow SQLite store under tmp_path, configured as the current one."""
    raw = dict(default_params_dict)
    raw["common"] = {
        **raw["common"],
        "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "mlflow_artifact_root": str(tmp_path / "artifacts"),
    }
    params = parse_params(raw)
    return tracking.ensure_experiment("task-conll2003", params), params


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, pretrain_inputs):
    """Untrained tiny BERT token- and sequence-classifiers with the pipeline's WordPiece tokenizer, saved."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertForTokenClassification

    tok = AutoTokenizer.from_pretrained(str(pretrain_inputs / "data" / "tokenizers" / "bert"))
    size = dict(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
    )
    root = tmp_path_factory.mktemp("tiny_models")
    ner = BertForTokenClassification(
        BertConfig(
            **size, num_labels=9, id2label=dict(enumerate(NER_TAGS)), label2id={t: i for i, t in enumerate(NER_TAGS)}
        )
    )
    ner.save_pretrained(root / "ner")
    tok.save_pretrained(root / "ner")
    cls = BertForSequenceClassification(
        BertConfig(
            **size,
            num_labels=2,
            id2label=dict(enumerate(SST2_LABELS)),
            label2id={t: i for i, t in enumerate(SST2_LABELS)},
        )
    )
    return {"ner": root / "ner", "cls": cls, "tokenizer": tok}


def test_default_pip_requirements_pin_the_installed_versions():
    pins = registry.default_pip_requirements()
    assert f"torch=={metadata.version('torch').split('+')[0]}" in pins
    assert f"transformers=={metadata.version('transformers')}" in pins
    assert f"mlflow=={metadata.version('mlflow')}" in pins
    assert all("+" not in p for p in pins)
    with pytest.raises(RuntimeError, match="'no-such-package' is not installed"):
        registry.default_pip_requirements(extra=("no-such-package",))


def test_the_environment_check_of_our_pins_is_skipped_only_while_logging():
    from mlflow.utils import environment

    original = environment.warn_dependency_requirement_mismatches
    with registry.pinned_requirements_unchecked():
        assert environment.warn_dependency_requirement_mismatches is not original
        assert environment.warn_dependency_requirement_mismatches(["torch==0.0.0"]) is None
    assert environment.warn_dependency_requirement_mismatches is original
    with pytest.raises(ValueError), registry.pinned_requirements_unchecked():
        raise ValueError("a failed log_model")
    assert environment.warn_dependency_requirement_mismatches is original


def test_registering_needs_an_active_run(store, tiny_models):
    with pytest.raises(RuntimeError, match="inside tracking.stage_run"):
        registry.register_pyfunc(
            NerModel(),
            {MODEL_ARTIFACT: tiny_models["ner"]},
            "conll2003",
            "tiny",
            input_example=["John lives in Berlin"],
        )


@pytest.mark.integration
def test_pyfunc_registration_is_idempotent_and_loads_back_in_natural_form(store, tiny_models):
    exp_id, _ = store
    example = ["EU rejects German call to boycott British lamb .", "Peter Blackburn"]
    with mlflow.start_run(experiment_id=exp_id) as run:
        first = registry.register_pyfunc(
            NerModel(), {MODEL_ARTIFACT: tiny_models["ner"]}, "conll2003", "tiny", input_example=example
        )
        again = registry.register_pyfunc(
            NerModel(), {MODEL_ARTIFACT: tiny_models["ner"]}, "conll2003", "tiny", input_example=example
        )
    client = MlflowClient()
    assert first == again == "1"
    assert len(client.search_model_versions("name='conll2003-tiny'")) == 1
    assert client.get_run(run.info.run_id).data.tags[registry.VERSION_TAG] == "1"

    client.set_registered_model_alias("conll2003-tiny", "champion", "1")
    for ref in ("1", "champion", "latest"):
        served = registry.load_registered("conll2003-tiny", ref)
        assert served.metadata.signature is not None
        [entities, none] = served.predict([example[0], "..."])
        assert none == [] or all(e["entity"] in {"PER", "ORG", "LOC", "MISC"} for e in none)
        for e in entities:  # untrained: whatever it finds must be well-formed
            assert example[0][e["start"] : e["end"]] == e["word"]
            assert e["entity"] in {"PER", "ORG", "LOC", "MISC"} and 0 <= e["word_start"] < e["word_end"] <= 9
    requirements = Path(mlflow.pyfunc.get_model_dependencies("models:/conll2003-tiny/1")).read_text().split()
    assert set(registry.default_pip_requirements()) <= set(requirements)


@pytest.mark.integration
def test_a_model_logged_before_a_crash_is_registered_not_logged_again(store, tiny_models):
    exp_id, _ = store
    example = ["John lives in Berlin"]
    with mlflow.start_run(experiment_id=exp_id) as run:
        logged = mlflow.pyfunc.log_model(
            name=registry.MODEL_ARTIFACT,
            python_model=NerModel(),
            artifacts={MODEL_ARTIFACT: str(tiny_models["ner"])},
            pip_requirements=registry.default_pip_requirements(),
        )
        version = registry.register_pyfunc(
            NerModel(), {MODEL_ARTIFACT: tiny_models["ner"]}, "conll2003", "tiny", input_example=example
        )
    models = mlflow.search_logged_models(
        experiment_ids=[exp_id], filter_string=f"source_run_id='{run.info.run_id}'", output_format="list"
    )
    assert [m.model_id for m in models] == [logged.model_id]
    assert MlflowClient().get_model_version("conll2003-tiny", version).source == logged.model_uri


@pytest.mark.integration
def test_classification_registers_as_pyfunc_and_serves_label_and_score(store, tiny_models, tmp_path):
    _, params = store
    exp_id = tracking.ensure_experiment("task-sst2", params)
    folder = tmp_path / "cls"
    tiny_models["cls"].save_pretrained(folder)
    tiny_models["tokenizer"].save_pretrained(folder)
    long_text = "a fine film " * 100  # longer than the model's 64 positions: served inputs are truncated
    with mlflow.start_run(experiment_id=exp_id):
        first = registry.register_pyfunc(
            ClassificationModel(max_length=512), {MODEL_ARTIFACT: folder}, "sst2", "tiny", ["a fine film", long_text]
        )
        again = registry.register_pyfunc(
            ClassificationModel(), {MODEL_ARTIFACT: folder}, "sst2", "tiny", input_example=["a fine film"]
        )
    assert first == again == "1"
    served = registry.load_registered("sst2-tiny", 1)
    predicted = served.predict(["a fine film", "a dull one", long_text])
    assert [set(p) for p in predicted] == [{"label", "score"}] * 3
    assert {p["label"] for p in predicted} <= set(SST2_LABELS) and all(0.5 <= p["score"] <= 1 for p in predicted)
    assert served.predict(pd.DataFrame({"text": ["a dull one"]})) == predicted[1:2]
    assert served.metadata.signature is not None
