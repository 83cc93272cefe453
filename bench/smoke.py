"""Smoke-size params for checking the pipeline-level benchmarks' machinery without the training time of a
default run: `HT_BENCH_SMOKE=1 make bench FULL=1`. The whole pipeline then runs on params.yaml shrunk here
(every stage still runs, on tiny data and models); its numbers are not the default run's, so whole_pipeline
and quality report them without a verdict.
"""

from __future__ import annotations

import copy
import os

SMOKE_ENV = "HT_BENCH_SMOKE"

CAPS = {"max_train": 200, "max_validation": 40, "max_test": 40}
PRETRAIN = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64, "max_steps": 10, "batch_size": 8,
            "warmup_steps": 2, "eval_steps": 5, "save_steps": 5}
TASK = {"epochs": 1, "max_steps": 5, "max_length": 32}


def enabled() -> bool:
    return os.environ.get(SMOKE_ENV, "") not in ("", "0", "false", "no")


def smoke_params(raw: dict) -> dict:
    """A shrunk copy of a params.yaml mapping (only sizes change; the result is validated like params.yaml)."""
    from pipeline.core.config import parse_params

    out = copy.deepcopy(raw)
    for caps in out["prepare"]["tasks"].values():
        caps.update(CAPS)
    out["tokenizers"].update({"bert_vocab_size": 600, "gpt_vocab_size": 600})
    for family in out["pretrain"].values():
        family.update(PRETRAIN)
    for task in out["train"]["tasks"].values():
        task.update(TASK)
    out["train"]["common"].update({"batch_size": 8, "eval_batch_size": 16})
    out["train"]["generation"].update({"num_beams": 1, "max_new_tokens": 8})
    for name, override in list(out["train"].get("overrides", {}).items()):
        out["train"]["overrides"][name] = {k: v for k, v in (override or {}).items()
                                              if k not in ("epochs", "max_steps")}
    for model in out["models"].values():
        if model["family"] == "rnn":
            model.update({"emb_dim": 16, "hid_dim": 32})
        elif model["family"] == "encdec":
            model.update({"d_model": 32, "layers": 1, "heads": 2, "ffn_dim": 64})
    parse_params(out, "smoke params")
    return out
