"""What `make install` must provide beyond importable packages."""

from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_dvc_parses_yaml_with_the_c_parser():
    """DVC reads dvc.yaml, dvc.lock and every stage's params file on each `dvc repro`/`dvc status` through
    ruamel.yaml's safe loader: pure Python, it took half of a no-op repro (bench/README.md)."""
    assert YAML(typ="safe").Parser.__name__ == "CParser", "ruamel.yaml.clib is not installed: run `make install`"


@pytest.mark.parametrize("name", ["dvc.yaml", "params.yaml", "params.effective.yaml", "run-params/gpt-emotion.yaml"])
def test_the_c_parser_reads_the_repo_files_as_the_pure_one_does(name):
    from dvc.utils.serialize._yaml import parse_yaml

    text = (REPO_ROOT / name).read_text(encoding="utf-8")
    assert parse_yaml(text, name) == YAML(typ="safe", pure=True).load(text)
