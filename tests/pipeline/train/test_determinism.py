"""Two runs of the same commit on the same machine give the same stage outputs: the deterministic part of each
training stage (pretraining, fine-tuning) run twice from the same inputs gives byte-identical weights and the same
metrics. (Tokenizer training: tests/pipeline/pretrain/test_tokenizer_training.py, in two processes.)"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import shutil

import pytest

from pipeline.core.config import parse_params
from tests.fixtures.finetune import finetune_params, memorization_split, write_prepared
from tests.fixtures.models import copy_pretrain_inputs, tiny_pretrain_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pretraining_twice_gives_identical_weights(tmp_path, pretrain_inputs, default_params_dict):
    from pipeline.pretrain.run import pretrain

    digests = []
    for attempt in ("first", "second"):
        root = tmp_path / attempt
        copy_pretrain_inputs(pretrain_inputs, root)
        params = parse_params(tiny_pretrain_params(root, default_params_dict, max_steps=12, eval_steps=6, save_steps=6))
        with contextlib.chdir(root):
            pretrain("gpt", params)
        digests.append(sha256(root / "data" / "pretrain" / "gpt" / "model" / "model.safetensors"))
    assert digests[0] == digests[1]


def _curve(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_fine_tuning_twice_gives_identical_metrics_and_curves(
    tmp_path, pretrained_models, memorization_rows_by_task, default_params_dict
):
    from pipeline.train.driver import train

    results = []
    for attempt in ("first", "second"):
        root = tmp_path / attempt
        root.mkdir()
        for family, model_dir in pretrained_models.items():
            shutil.copytree(model_dir.parent, root / "data" / "pretrain" / family)
        write_prepared(root, "emotion", memorization_split("gpt", "emotion", memorization_rows_by_task["emotion"]))
        params = parse_params(finetune_params(root, default_params_dict, "gpt", "emotion"))
        with contextlib.chdir(root):
            summary = train("gpt", "emotion", params)
        out = root / "data" / "models" / "gpt-emotion"
        curve = [
            {k: v for k, v in row.items() if not k.endswith("_s")}
            for row in _curve(out / "plots" / "learning_curve.csv")
        ]
        results.append((json.dumps(summary["test"], sort_keys=True), curve))
    assert results[0] == results[1]
