"""Typed, validated view of params.yaml (with the selected profile applied: pipeline/core/profiles.py).

Every stage reads its params only through `load_params()`. Unknown keys, missing keys, wrong types and
impossible values are rejected before any work starts, with a message naming the key and what is allowed.
params.yaml is the only place a default lives: fields here have no default values, except those that are
optional per entry (e.g. a dataset's hub `config`) and then mean "not used here".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, NamedTuple, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.core import profiles
from pipeline.core.profiles import ParamsError

DatasetName = Literal["emotion", "sst2", "conll2003", "multi30k", "wikitext", "squad", "samsum"]
TaskName = Literal["emotion", "sst2", "conll2003", "multi30k", "squad", "samsum"]
TaskKind = Literal["classification", "ner", "translation", "qa", "summarization"]
Family = Literal["rnn", "encdec", "gpt", "bert"]

DATASETS: tuple[str, ...] = get_args(DatasetName)
TASKS: tuple[str, ...] = get_args(TaskName)


class TaskSpec(NamedTuple):
    """What a task is built from and what kind of task it is."""

    dataset: DatasetName
    kind: TaskKind


TASK_SPECS: dict[str, TaskSpec] = {
    "emotion": TaskSpec("emotion", "classification"),
    "sst2": TaskSpec("sst2", "classification"),
    "conll2003": TaskSpec("conll2003", "ner"),
    "multi30k": TaskSpec("multi30k", "translation"),
    "squad": TaskSpec("squad", "qa"),
    "samsum": TaskSpec("samsum", "summarization"),
}
MIRROR_ENV = "HT_MIRROR_DIR"

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
OptionalCap = Annotated[int, Field(gt=0)] | None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


# ---------------------------------------------------------------- common
class CommonConfig(Strict):
    seed: NonNegInt
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    num_threads: NonNegInt
    torchrun_nproc: NonNegInt  # 0: a plain process; N: torchrun --nproc_per_node=N (pipeline/core/distributed.py)


# ---------------------------------------------------------------- ingest
class HubSource(Strict):
    hub_id: str
    revision: str
    # optional per dataset: the hub config name (when the dataset has several) and, for a dataset without a
    # validation split, how many train rows become validation
    config: str | None = None
    validation_size: PosInt | None = None


class IngestConfig(Strict):
    mirror_dir: str | None  # null: every dataset comes from the hub
    datasets: dict[DatasetName, HubSource]

    @model_validator(mode="after")
    def _all_datasets(self) -> IngestConfig:
        missing = sorted(set(DATASETS) - set(self.datasets))
        if missing:
            raise ValueError(f"missing dataset(s) {missing}; every one of {list(DATASETS)} needs an entry")
        return self

    def resolved_mirror_dir(self, root: Path | None = None) -> Path | None:
        """The mirror folder: HT_MIRROR_DIR, else the params key (relative to the repo root)."""
        raw = os.environ.get(MIRROR_ENV) or self.mirror_dir
        if not raw:
            return None
        path = Path(raw)
        if not path.is_absolute():
            path = (root or Path.cwd()) / path
        return path.resolve()


# ---------------------------------------------------------------- validate
class DatasetChecks(Strict):
    min_chars: NonNegInt
    max_chars: PosInt
    max_duplicate_fraction: Fraction
    max_leaked_texts: NonNegInt
    # optional per dataset (translation pairs only): bounds of the target/source length ratio, and the fraction
    # of pairs that must lie within them (GX `mostly`)
    min_length_ratio: PosFloat | None = None
    max_length_ratio: PosFloat | None = None
    length_ratio_mostly: Fraction | None = None
    # optional (translation pairs only): the fraction of each side's texts that must look like that side's
    # language (GX `mostly`); far fewer means the files are swapped or hold another language
    language_check_mostly: Fraction | None = None
    # optional (summarization only): the fraction of examples whose summary must be shorter than its dialogue
    summary_shorter_mostly: Fraction | None = None

    @model_validator(mode="after")
    def _bounds(self) -> DatasetChecks:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) must be <= max_chars ({self.max_chars})")
        if self.min_length_ratio and self.max_length_ratio and self.min_length_ratio > self.max_length_ratio:
            raise ValueError("min_length_ratio must be <= max_length_ratio")
        has_bounds = self.min_length_ratio is not None or self.max_length_ratio is not None
        if has_bounds != (self.length_ratio_mostly is not None):
            raise ValueError(
                "length_ratio_mostly goes with min_length_ratio/max_length_ratio: set all of them "
                "(translation datasets) or none"
            )
        return self


TRANSLATION_ONLY_CHECKS = ("min_length_ratio", "max_length_ratio", "length_ratio_mostly", "language_check_mostly")
SUMMARIZATION_ONLY_CHECKS = ("summary_shorter_mostly",)
# task kind -> the optional DatasetChecks keys that only apply to datasets of that kind
KIND_ONLY_CHECKS: dict[str, tuple[str, ...]] = {
    "translation": TRANSLATION_ONLY_CHECKS,
    "summarization": SUMMARIZATION_ONLY_CHECKS,
}


class ValidateConfig(Strict):
    datasets: dict[DatasetName, DatasetChecks]

    @model_validator(mode="after")
    def _kind_only(self) -> ValidateConfig:
        for kind, keys in KIND_ONLY_CHECKS.items():
            allowed = {spec.dataset for spec in TASK_SPECS.values() if spec.kind == kind}
            for name, checks in self.datasets.items():
                used = [key for key in keys if getattr(checks, key) is not None]
                if used and name not in allowed:
                    raise ValueError(
                        f"datasets.{name}: {', '.join(used)} only apply to {kind} datasets "
                        f"({', '.join(sorted(allowed))}); remove from {name}"
                    )
        return self


# ---------------------------------------------------------------- prepare
class SplitCaps(Strict):
    # null = keep the whole split
    max_train: OptionalCap
    max_validation: OptionalCap
    max_test: OptionalCap


class CorpusConfig(Strict):
    heldout_fraction: Annotated[float, Field(gt=0, lt=1)]
    min_chars: NonNegInt


class PrepareConfig(Strict):
    tasks: dict[TaskName, SplitCaps]
    corpus: CorpusConfig


# ---------------------------------------------------------------- tokenizers
class TokenizersConfig(Strict):
    bert_vocab_size: Annotated[int, Field(ge=256)]
    gpt_vocab_size: Annotated[int, Field(ge=300)]
    min_frequency: PosInt


# ---------------------------------------------------------------- pretrain
class PretrainModelConfig(Strict):
    """One pretrained model (gpt); bert adds its masking rate (BertPretrainConfig)."""

    n_layer: PosInt
    n_head: PosInt
    n_embd: PosInt
    block_size: Annotated[int, Field(ge=8)]
    max_steps: PosInt
    batch_size: PosInt
    learning_rate: PosFloat
    warmup_steps: NonNegInt
    weight_decay: Annotated[float, Field(ge=0)]
    eval_steps: PosInt
    save_steps: PosInt

    @model_validator(mode="after")
    def _heads_divide(self) -> PretrainModelConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self


class BertPretrainConfig(PretrainModelConfig):
    mlm_probability: Annotated[float, Field(gt=0, lt=1)]  # masked language modelling: share of tokens masked
    # NSP negatives: "swapped" (the pair's two segments in the wrong order, ALBERT's sentence order) or
    # "random_document" (BERT's: B from another document; a topic shortcut on this corpus of unrelated texts).
    nsp_negatives: Literal["swapped", "random_document"]
    split_single_sentences: bool  # a one-sentence document (most task texts) becomes a pair cut at a random word


class PretrainConfig(Strict):
    gpt: PretrainModelConfig
    bert: BertPretrainConfig


# ---------------------------------------------------------------- generate
class GenerateConfig(Strict):
    """Sampling from the pretrained GPT (generate stage and the registered generation model)."""

    num_prompts: PosInt  # prompts: the first held-out corpus lines with at least prompt_words words ...
    prompt_words: PosInt  # ... cut to their first prompt_words words
    max_new_tokens: PosInt
    temperature: PosFloat
    top_k: NonNegInt  # 0 = no top-k filtering
    top_p: Annotated[float, Field(gt=0, le=1)]  # 1.0 = no nucleus filtering
    seed: NonNegInt  # prompt i is sampled with torch seed `seed + i`: the same prompts give the same samples


# ---------------------------------------------------------------- models
Source = Literal["pretrain", "pretrained", "scratch"]
Dropout = Annotated[float, Field(ge=0, lt=1)]


class _ModelBase(Strict):
    """Where the weights come from: `pretrain` (this pipeline's), `pretrained` (name_or_path) or `scratch`."""

    source: Source
    name_or_path: str | None = None  # only with source 'pretrained'

    @model_validator(mode="after")
    def _source_fits(self) -> _ModelBase:
        if self.source == "pretrained" and not self.name_or_path:
            raise ValueError(
                "source 'pretrained' needs name_or_path (a hub id, a local folder or package:<module>/<folder>)"
            )
        if self.source != "pretrained" and self.name_or_path:
            raise ValueError(f"name_or_path is only used with source 'pretrained', not {self.source!r}")
        return self


class _ScratchOnly(_ModelBase):
    @model_validator(mode="after")
    def _scratch(self) -> _ScratchOnly:
        if self.source != "scratch":
            raise ValueError(f"family {self.family!r} is trained from scratch: source must be 'scratch'")
        return self


class RnnModel(_ScratchOnly):
    """GRU encoder-decoder; `attention` on: Bahdanau attention over the encoder states, off: the decoder sees only
    the encoder's final state (a fixed context vector). A control (attention off) names the model it mirrors in
    `twin_of` instead of copying its sizes: its fields are then the twin's, except `attention`."""

    family: Literal["rnn"]
    twin_of: str | None = None  # only on a control: the model whose sizes and training settings it shares
    attention: bool
    emb_dim: PosInt | None = None  # None only with twin_of (the twin's value is used)
    hid_dim: PosInt | None = None
    dropout: Dropout | None = None
    teacher_forcing_ratio: Fraction | None = None

    @model_validator(mode="after")
    def _sizes_or_twin(self) -> RnnModel:
        sizes = {k: getattr(self, k) for k in ("emb_dim", "hid_dim", "dropout", "teacher_forcing_ratio")}
        missing = [k for k, v in sizes.items() if v is None]
        if self.twin_of is None and missing:
            raise ValueError(f"missing {', '.join(missing)} (an rnn without twin_of sets its own sizes)")
        if self.twin_of is not None and len(missing) != len(sizes):
            set_ = [k for k, v in sizes.items() if v is not None]
            raise ValueError(
                f"{', '.join(set_)}: a twin (twin_of: {self.twin_of}) takes its sizes from its twin; remove them"
            )
        return self


class EncDecModel(_ScratchOnly):
    """Transformer encoder-decoder (T5 architecture: pre-layer-norm, relative positions)."""

    family: Literal["encdec"]
    d_model: PosInt
    layers: PosInt
    heads: PosInt
    ffn_dim: PosInt
    dropout: Dropout

    @model_validator(mode="after")
    def _heads_divide(self) -> EncDecModel:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        return self


class _TransformerModel(_ModelBase):
    """A gpt/bert-family model: pretrained weights, or (source 'scratch', a control) the architecture and tokenizer
    of the pretrained model named in `twin_of`, randomly initialised."""

    twin_of: str | None = None

    @model_validator(mode="after")
    def _scratch_needs_twin(self) -> _TransformerModel:
        if self.source == "scratch" and not self.twin_of:
            raise ValueError(
                f"family {self.family!r} with source 'scratch' needs twin_of: the pretrained model whose "
                "architecture and tokenizer it copies (e.g. twin_of: gpt)"
            )
        if self.source != "scratch" and self.twin_of:
            raise ValueError(f"twin_of is only used with source 'scratch', not {self.source!r}")
        return self


class GptModel(_TransformerModel):
    """Decoder-only GPT-2; its size comes from pretrain.gpt or the loaded checkpoint (a twin: its twin's)."""

    family: Literal["gpt"]


class BertModel(_TransformerModel):
    """Encoder-only BERT; its size comes from pretrain.bert or the loaded checkpoint (a twin: its twin's)."""

    family: Literal["bert"]


# One typed config per family, chosen by `family`.
ModelConfig = Annotated[RnnModel | EncDecModel | GptModel | BertModel, Field(discriminator="family")]
FAMILIES: tuple[str, ...] = get_args(Family)
PRETRAINED_FAMILIES: tuple[str, ...] = ("gpt", "bert")


# ---------------------------------------------------------------- train
class TrainCommon(Strict):
    batch_size: PosInt
    eval_batch_size: PosInt
    weight_decay: Annotated[float, Field(ge=0)]
    warmup_ratio: Fraction
    patience: PosInt
    save_total_limit: PosInt
    length_grouped_batches: bool


class TaskTraining(Strict):
    epochs: PosInt
    learning_rate: PosFloat
    max_length: Annotated[int, Field(ge=8)]
    max_steps: PosInt | None
    # optional per task (source -> target text tasks): the task's own cap on generated tokens and beam width,
    # replacing train.generation's for its runs (RunSettings.generation is the one resolved value), and how
    # many validation examples (the first ones) each epoch's greedy generation scores (unset: all of them)
    max_new_tokens: PosInt | None = None
    num_beams: PosInt | None = None
    val_generation_examples: PosInt | None = None
    # train on at most this many examples of the prepared train split (a seeded sample of it; unset: all of it).
    # prepare.tasks.<task>.max_train is the pool every model of the task draws from; this is each run's share,
    # so that a model that learns fast from more data (train.overrides) can take more of the pool than the others.
    max_train_examples: PosInt | None = None


class TaskOverride(Strict):
    """A model-task run's changes to train.tasks.<task> (and the batch size); unset fields keep the task's value."""

    epochs: PosInt | None = None
    learning_rate: PosFloat | None = None
    max_length: Annotated[int, Field(ge=8)] | None = None
    max_steps: PosInt | None = None
    batch_size: PosInt | None = None
    # at most this many examples per forward/backward pass: a larger batch's gradients are accumulated over
    # batch_size / micro_batch_size passes (same optimizer steps, less activation memory). gpt/bert families.
    micro_batch_size: PosInt | None = None
    max_new_tokens: PosInt | None = None
    num_beams: PosInt | None = None
    max_train_examples: PosInt | None = None
    val_generation_examples: PosInt | None = None


class GenerationConfig(Strict):
    num_beams: PosInt
    length_penalty: float
    max_new_tokens: PosInt


class QAConfig(Strict):
    """Extractive question answering (bert-family models on qa tasks): context windows and answer spans."""

    doc_stride: PosInt  # tokens shared by consecutive windows of a long context
    n_best: PosInt  # start and end candidates per window
    max_answer_length: PosInt  # tokens


class TrainConfig(Strict):
    """Training of every model on every task (fine-tuning the pretrained ones, training the others)."""

    common: TrainCommon
    tasks: dict[TaskName, TaskTraining]
    generation: GenerationConfig
    qa: QAConfig
    overrides: dict[str, TaskOverride]


# ---------------------------------------------------------------- compare / orchestration
class CompareConfig(Strict):
    min_improvement: Annotated[float, Field(ge=0)]
    bootstrap_resamples: Annotated[int, Field(ge=10)]
    significance_level: Annotated[float, Field(gt=0, lt=1)]


class OrchestrationConfig(Strict):
    retries: NonNegInt
    parallel_stages: PosInt
    memory_budget_gib: Annotated[float, Field(gt=0)] | None  # None: stages pair regardless of memory
    stage_worker: bool  # stages started from a warm worker process (flows/stage_worker.py)
    retry_delay_seconds: Annotated[float, Field(ge=0)]
    retrain_cron: str
    lock_timeout_seconds: Annotated[float, Field(ge=0)]


class Params(Strict):
    # the profile applied to params.yaml (profiles/<name>.yaml); not a parameter: params.yaml itself has none
    profile: str | None = None
    common: CommonConfig
    ingest: IngestConfig
    validate_: ValidateConfig = Field(alias="validate")
    prepare: PrepareConfig
    tokenizers: TokenizersConfig
    pretrain: PretrainConfig
    generate: GenerateConfig
    models: dict[str, ModelConfig]
    train: TrainConfig
    compare: CompareConfig
    orchestration: OrchestrationConfig

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _cross_checks(self) -> Params:
        for name in self.models:
            if not name.replace("_", "").isalnum() or "-" in name:
                raise ValueError(f"models.{name}: model names use letters, digits and '_' only")
        for name, cfg in self.models.items():
            _check_twin(name, cfg, self.models)
        for key in self.train.overrides:
            model, _, task = key.partition("-")
            if model not in self.models or task not in TASKS:
                raise ValueError(
                    f"train.overrides.{key}: keys are '<model>-<task>' with model in {sorted(self.models)} "
                    f"and task in {list(TASKS)}"
                )
        missing = sorted(set(TASKS) - set(self.train.tasks))
        if missing:
            raise ValueError(f"train.tasks: missing task(s) {missing}")
        missing = sorted(set(DATASETS) - set(self.validate_.datasets))
        if missing:
            raise ValueError(f"validate.datasets: missing dataset(s) {missing}")
        return self

    @property
    def validate_cfg(self) -> ValidateConfig:
        return self.validate_


def _check_twin(name: str, cfg, models: dict) -> None:
    """A control's twin_of names another model of its family that is not itself a control (so a transformer's twin
    starts from pretrained weights: a gpt/bert-family model with source scratch must name a twin)."""
    twin = getattr(cfg, "twin_of", None)
    if twin is None:
        return
    if twin not in models or twin == name:
        raise ValueError(f"models.{name}.twin_of: {twin!r} is not another model of params.models ({sorted(models)})")
    other = models[twin]
    if other.family != cfg.family:
        raise ValueError(
            f"models.{name}.twin_of: {twin!r} is family {other.family!r}, not {cfg.family!r} (twins share a family)"
        )
    if getattr(other, "twin_of", None):  # also keeps a transformer twin's twin pretrained: scratch ones are twins
        raise ValueError(f"models.{name}.twin_of: {twin!r} is itself a twin (of {other.twin_of!r}); name the original")


def twin_config(name: str, models: dict):
    """The model config a run of `name` builds from: its own, or for an rnn control its twin's sizes with its own
    attention switch (a transformer control builds from its twin's checkpoint config instead)."""
    cfg = models[name]
    if cfg.family == "rnn" and cfg.twin_of:
        return models[cfg.twin_of].model_copy(update={"attention": cfg.attention, "twin_of": cfg.twin_of})
    return cfg


_SHOW_INPUT = {
    "literal_error",
    "dict_type",
    "model_type",
    "int_parsing",
    "float_parsing",
    "string_type",
    "int_type",
    "float_type",
    "bool_type",
    "bool_parsing",
    "int_from_float",
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
}


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"Invalid params in {source}:"]
    for e in err.errors():
        parts = ["validate" if p == "validate_" else str(p) for p in e["loc"] if p != "function-after"]
        if parts[:1] == ["models"] and len(parts) > 2 and parts[2] in FAMILIES:
            del parts[2]  # the union's tag: models.<name>.<family>.<field> reads models.<name>.<field>
        is_key = "[key]" in parts  # the error is about a mapping key itself (e.g. an unknown dataset name)
        loc = ".".join(p for p in parts if p != "[key]")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "union_tag_invalid":  # models.<name>.family names no family
            ctx = e.get("ctx", {})
            loc = f"{loc}.{str(ctx.get('discriminator', 'family')).strip(chr(39))}"
            msg = f"unknown family (got {ctx.get('tag')!r}); choose one of {ctx.get('expected_tags')}"
        elif e["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here; check the spelling against params.yaml)"
        elif e["type"] == "missing":
            msg = "missing key (params.yaml sets every parameter; there are no defaults in the code)"
        elif is_key:
            msg = f"unknown name {e.get('input')!r} here: {msg}"
        elif e["type"] in _SHOW_INPUT:
            msg = f"{msg} (got {e.get('input')!r})"
        # root-level cross checks name their key in the message already
        lines.append(f"  - {loc}: {msg}" if loc else f"  - {msg}")
    lines.append(f"Fix {source} and run again; nothing was run.")
    return "\n".join(lines)


def parse_params(raw: dict, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of stage sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_errors(err, source)) from None


# load_params' default profile: HT_PROFILE, else the one params.effective.yaml records. A string compared by value,
# not an object() sentinel: Prefect re-executes a served flow's module, and a second object() would not match.
SELECTED = "<selected>"


def load_params(path: str | Path | None = None, *, profile: str | None = SELECTED) -> Params:
    """The validated params of the repository whose params.yaml is `path` (default: ./params.yaml), composed in
    memory with `profile` (None: no profile; default: HT_PROFILE, else the profile recorded in
    params.effective.yaml, else none). A stage run by hand, outside DVC, so gets the params DVC would give it."""
    path = Path(path) if path else Path(profiles.PARAMS_FILE)
    if path.name != profiles.PARAMS_FILE:
        raise ParamsError(
            f"{path}: load_params reads a repository's {profiles.PARAMS_FILE} (+ a profile from "
            f"{profiles.PROFILES_DIR}/), not another file"
        )
    root = path.parent
    chosen = profiles.selected_profile(root) if profile == SELECTED else profile
    return parse_params(profiles.effective_mapping(root, chosen), profiles.composed_source(root, chosen))
