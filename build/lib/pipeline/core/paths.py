"""Where each stage reads and writes, relative to the repository root (the working directory)."""

from __future__ import annotations

from pathlib import Path

DATA = Path("data")
RAW = DATA / "raw"  # ingest: data/raw/<dataset>/ (a datasets.DatasetDict + SOURCE.json)
VALIDATION = DATA / "validation"  # validate: data/validation/<dataset>.json + docs/<dataset>/ (GX Data Docs)
PREPARED = DATA / "prepared"  # prepare: data/prepared/<task>/ (a datasets.DatasetDict)
CORPUS = DATA / "corpus"  # prepare: data/corpus/{train,heldout}.txt
TOKENIZERS = DATA / "tokenizers"  # tokenizers: data/tokenizers/{bert,gpt}/
PRETRAIN = DATA / "pretrain"  # pretrain: data/pretrain/<family>/{model,metrics.json,...}
GENERATE = DATA / "generate"  # generate: data/generate/{samples.jsonl,metrics.json}
MODELS = DATA / "models"  # finetune@, train@ and scratch@: data/models/<model>-<task>/{metrics.json,plots/}
CHECKPOINTS = Path("checkpoints")  # resumable state of running stages (Trainer checkpoints, MLflow run ids)
REPORTS = Path("reports")  # compare: reports/comparison.{md,json}, plots


def raw_dir(dataset: str) -> Path:
    return RAW / dataset


def validation_report(dataset: str) -> Path:
    return VALIDATION / f"{dataset}.json"


def validation_docs(dataset: str) -> Path:
    return VALIDATION / "docs" / dataset


def prepared_dir(task: str) -> Path:
    return PREPARED / task


def tokenizer_dir(family: str) -> Path:
    return TOKENIZERS / family


def pretrain_dir(family: str) -> Path:
    return PRETRAIN / family


def model_dir(model: str, task: str) -> Path:
    return MODELS / f"{model}-{task}"


def checkpoint_dir(stage: str, name: str) -> Path:
    """checkpoints/<stage>-<name>/: a running stage's resumable state (e.g. pretrain-gpt, finetune-bert-sst2)."""
    return CHECKPOINTS / f"{stage}-{name}"
