"""read_corpus: how the tokenizers and pretraining stages read data/corpus (round trip with build_corpus:
tests/pipeline/data/test_prepare.py)."""

from __future__ import annotations

import pytest

from pipeline.core import paths
from pipeline.data.corpus import CORPUS_HELDOUT, CORPUS_TRAIN, CorpusError, read_corpus


def test_read_corpus_strips_skips_blank_lines_and_names_the_stage_to_run(in_tmp_repo):
    with pytest.raises(CorpusError, match=r"data/corpus/train.txt not found.*python -m flows.data corpus"):
        read_corpus("train")
    paths.CORPUS.mkdir(parents=True)
    (paths.CORPUS / CORPUS_TRAIN).write_text("  first document \n\n   \nsecond\n", encoding="utf-8")
    assert read_corpus("train") == ["first document", "second"]
    (paths.CORPUS / CORPUS_HELDOUT).write_text("\n \n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"heldout.txt has no text lines.*python -m flows.data corpus"):
        read_corpus("heldout")
    with pytest.raises(ValueError, match=r"unknown corpus split 'train.txt'.*\['train', 'heldout'\]"):
        read_corpus("train.txt")
