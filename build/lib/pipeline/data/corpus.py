"""The pretraining corpus on disk: data/corpus/{train,heldout}.txt (one document per line) + stats.json.

pipeline.data.prepare.build_corpus writes it; read_corpus is how the tokenizers and pretraining stages read it.
"""

from __future__ import annotations

from pipeline.core import paths

CORPUS_TRAIN = "train.txt"
CORPUS_HELDOUT = "heldout.txt"
CORPUS_STATS = "stats.json"
CORPUS_SPLITS = {"train": CORPUS_TRAIN, "heldout": CORPUS_HELDOUT}


class CorpusError(RuntimeError):
    """data/corpus/<split>.txt is missing or holds no text; the message says what to run."""


def read_corpus(split: str) -> list[str]:
    """The documents of data/corpus/<split>.txt (split: train | heldout): one per line, surrounding whitespace
    stripped, blank lines skipped. Raises CorpusError when the file is missing or holds no text (both say to run
    the corpus stage), ValueError for another split."""
    if split not in CORPUS_SPLITS:
        raise ValueError(f"unknown corpus split {split!r}; expected one of {list(CORPUS_SPLITS)}")
    path = paths.CORPUS / CORPUS_SPLITS[split]
    if not path.exists():
        raise CorpusError(f"{path} not found: build the corpus first (python -m flows.data corpus)")
    docs = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not docs:
        raise CorpusError(f"{path} has no text lines: rebuild the corpus (python -m flows.data corpus)")
    return docs
