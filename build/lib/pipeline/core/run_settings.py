"""The effective settings of one model × task run, resolved once from params.

Everything that reads a run's settings (the driver, the checkpoint fingerprint, MLflow params and tags, the
family trainers) reads this frozen object, so the override rules live in one place:
train.tasks.<task> with train.overrides.<model>-<task> applied, and the batch size from the override or
train.common. A control (models.<name>.twin_of, e.g. gpt_scratch or rnn_noattn) trains with its twin's override
unless it has its own, so that it differs from its twin only in what it controls for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.core import paths
from pipeline.core.config import (
    PRETRAINED_FAMILIES,
    TASK_SPECS,
    GenerationConfig,
    ModelConfig,
    Params,
    QAConfig,
    TaskTraining,
    TrainCommon,
    twin_config,
)


class RunSettingsError(ValueError):
    """The model or task is not in params.yaml."""


@dataclass(frozen=True)
class RunSettings:
    model: str  # the params.models key, e.g. "minilm"
    task: str
    kind: str  # classification | ner | translation | qa | summarization
    model_cfg: ModelConfig
    training: TaskTraining  # the task's settings with the model-task override applied
    batch_size: int
    common: TrainCommon
    generation: GenerationConfig  # train.generation with the task's max_new_tokens / num_beams (if set) applied
    seed: int
    qa: QAConfig  # windows and answer spans of extractive QA (recorded for qa tasks only)
    # a transformer scratch twin's twin (models.<twin_of>): where its architecture and tokenizer come from
    twin_cfg: ModelConfig | None = None
    micro_batch_size: int | None = None  # examples per forward/backward pass when less than batch_size

    @property
    def accumulation_steps(self) -> int:
        """Forward/backward passes per optimizer step (batch_size / micro_batch_size)."""
        return self.batch_size // self.micro_batch_size if self.micro_batch_size else 1

    @classmethod
    def resolve(cls, model: str, task: str, params: Params) -> RunSettings:
        if model not in params.models:
            raise RunSettingsError(f"models.{model}: no such model in params.yaml (have {sorted(params.models)})")
        if task not in params.train.tasks:
            raise RunSettingsError(
                f"train.tasks.{task}: no such task in params.yaml (have {sorted(params.train.tasks)})"
            )
        training = params.train.tasks[task].model_dump()
        twin = getattr(params.models[model], "twin_of", None)
        override = params.train.overrides.get(f"{model}-{task}")
        if override is None and twin:
            override = params.train.overrides.get(f"{twin}-{task}")
        changes = {k: v for k, v in (override.model_dump() if override else {}).items() if v is not None}
        batch_size = changes.pop("batch_size", params.train.common.batch_size)
        micro_batch_size = changes.pop("micro_batch_size", None)
        if micro_batch_size is not None:
            _check_micro_batch(f"train.overrides.{model}-{task}", micro_batch_size, batch_size, params.models[model])
        task_training = TaskTraining(**{**training, **changes})
        # the task's (or model-task's) own generation cap and beam width replace the common ones
        own = {k: getattr(task_training, k) for k in ("max_new_tokens", "num_beams")}
        generation = params.train.generation.model_copy(update={k: v for k, v in own.items() if v is not None})
        return cls(
            model=model,
            task=task,
            kind=TASK_SPECS[task].kind,
            model_cfg=twin_config(model, params.models),
            training=task_training,
            batch_size=batch_size,
            # at most this many per pass: a batch no larger goes in one
            micro_batch_size=micro_batch_size if micro_batch_size and micro_batch_size < batch_size else None,
            common=params.train.common,
            generation=generation,
            seed=params.common.seed,
            qa=params.train.qa,
            twin_cfg=params.models[twin] if twin and params.models[model].family in PRETRAINED_FAMILIES else None,
        )

    # ------------------------------------------------------------ derived names
    @property
    def family(self) -> str:
        return self.model_cfg.family

    @property
    def source(self) -> str:
        return self.model_cfg.source

    @property
    def twin_of(self) -> str | None:
        """The model this control mirrors (models.<name>.twin_of), None for a model that is no control."""
        return getattr(self.model_cfg, "twin_of", None)

    @property
    def attention(self) -> str | None:
        """rnn only: "bahdanau" (additive attention over the encoder states) or "none" (fixed context vector)."""
        if self.family != "rnn":
            return None
        return "bahdanau" if self.model_cfg.attention else "none"

    @property
    def stage(self) -> str:
        """The dvc.yaml stage: `finetune` for a model that starts from pretrained weights, `scratch` for a gpt/bert
        architecture randomly initialised (a scratch twin), `train` for the rnn/encdec trained from scratch."""
        if self.source != "scratch":
            return "finetune"
        return "scratch" if self.family in PRETRAINED_FAMILIES else "train"

    @property
    def init(self) -> str:
        """Where the weights start: pretrained-here (this pipeline's pretraining), pretrained-checkpoint, scratch."""
        return {"pretrain": "pretrained-here", "pretrained": "pretrained-checkpoint"}.get(self.source, "scratch")

    @property
    def name(self) -> str:
        return f"{self.model}-{self.task}"

    @property
    def checkpoint_dir(self) -> Path:
        return paths.checkpoint_dir(self.stage, self.name)

    @property
    def output_dir(self) -> Path:
        return paths.model_dir(self.model, self.task)

    # ------------------------------------------------------------ what the run records
    def as_dict(self) -> dict:
        """Every setting, nested: the checkpoint fingerprint's base."""
        return {
            "model": self.model_cfg.model_dump(),
            "training": self.training.model_dump(),
            "batch_size": self.batch_size,
            **({"micro_batch_size": self.micro_batch_size} if self.micro_batch_size else {}),
            "common": self.common.model_dump(),
            "generation": self.generation.model_dump(),
            "seed": self.seed,
            **({"qa": self.qa.model_dump()} if self.kind == "qa" else {}),
            **({"twin": self.twin_cfg.model_dump()} if self.twin_cfg is not None else {}),
        }

    def mlflow_params(self) -> dict[str, object]:
        """The same core params for every family (flat keys; a family adds its own via describe())."""
        flat: dict[str, object] = {f"model.{k}": v for k, v in self.model_cfg.model_dump().items() if v is not None}
        flat.update(
            {f"train.{k}": v for k, v in self.training.model_dump().items() if v is not None or k == "max_steps"}
        )
        flat["train.batch_size"] = self.batch_size
        flat["train.micro_batch_size"] = self.micro_batch_size or self.batch_size
        flat.update({f"train.common.{k}": v for k, v in self.common.model_dump().items() if k != "batch_size"})
        flat.update({f"train.generation.{k}": v for k, v in self.generation.model_dump().items()})
        flat["seed"] = self.seed
        if self.kind == "qa":
            flat.update({f"train.qa.{k}": v for k, v in self.qa.model_dump().items()})
        return flat

    def tags(self) -> dict[str, str]:
        tags = {"task": self.task, "model": self.model, "family": self.family, "stage": self.stage, "init": self.init}
        if self.attention is not None:
            tags["attention"] = self.attention
        if self.twin_of is not None:
            tags["twin_of"] = self.twin_of
        return tags


def _check_micro_batch(where: str, micro: int, batch: int, model_cfg) -> None:
    if model_cfg.family not in PRETRAINED_FAMILIES:
        raise RunSettingsError(
            f"{where}.micro_batch_size: only the gpt/bert families (the Trainer's gradient accumulation) split a "
            f"batch; remove it from this {model_cfg.family} run"
        )
    if micro < batch and batch % micro:
        raise RunSettingsError(
            f"{where}.micro_batch_size: {micro} must divide the batch size {batch} (e.g. {batch // 2})"
        )
