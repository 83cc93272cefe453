"""Bad input: corrupted copies of real mirror files must stop the pipeline at ingest or validate, with a message
naming the problem, no half-written data/raw output and no later-stage output.

The mirror is a subsample of the real files (tests.fixtures.data.small_mirror); the clean subsample passes,
so each failure below is caused by its corruption alone.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from pipeline.core.config import DATASETS, MIRROR_ENV
from pipeline.data.ingest import ingest_dataset
from pipeline.data.readers import SourceDataError, read_mirror
from pipeline.data.validate import DataValidationError, validate_dataset
from tests.data.corruptions import CORRUPTIONS, REPAIRS, Corruption, Repair

pytestmark = pytest.mark.integration

LATER_STAGE_OUTPUTS = ("data/prepared", "data/corpus", "data/tokenizers", "data/pretrain", "data/models", "reports")


def run_data_stages(name: str, params) -> tuple[str, Exception | None]:
    """ingest then validate, as DVC chains them; returns (stage that failed or 'done', its error)."""
    try:
        ingest_dataset(name, params)
    except Exception as err:
        return "ingest", err
    try:
        validate_dataset(name, params)
    except Exception as err:
        return "validate", err
    return "done", None


def assert_nothing_half_written(name: str, stage: str) -> None:
    raw = Path("data/raw")
    leftovers = [p.name for p in raw.iterdir() if p.name.startswith(".")] if raw.exists() else []
    assert leftovers == [], f"temp folders left behind in data/raw: {leftovers}"
    if stage == "ingest":
        assert not (raw / name).exists(), "a failed ingest must not leave data/raw/<name>"
    else:  # ingest succeeded: its output is complete and loadable; validation is what stops the pipeline
        assert (raw / name / "SOURCE.json").is_file()
        datasets.load_from_disk(str(raw / name))
    for later in LATER_STAGE_OUTPUTS:
        assert not Path(later).exists(), f"{later} exists although the data stages failed"


@pytest.mark.parametrize("name", DATASETS)
def test_clean_subsample_passes(name, in_tmp_repo, small_mirror, make_params):
    stage, err = run_data_stages(name, make_params(small_mirror))
    assert (stage, err) == ("done", None)


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=[c.kind for c in CORRUPTIONS])
def test_bad_input_stops_with_a_specific_message(corruption: Corruption, in_tmp_repo, small_mirror_copy, make_params):
    corruption.apply(small_mirror_copy)
    stage, err = run_data_stages(corruption.dataset, make_params(small_mirror_copy))
    assert stage == corruption.stage, f"expected to stop at {corruption.stage}, got {stage}: {err}"
    expected_type = SourceDataError if stage == "ingest" else DataValidationError
    assert isinstance(err, expected_type), f"{type(err).__name__}: {err}"
    message = str(err)
    for fragment in corruption.fragments:
        assert fragment in message, f"{fragment!r} missing from the error message:\n{message}"
    if stage == "validate":
        assert (
            f"dataset {corruption.dataset!r}" in message
            and Path(f"data/validation/{corruption.dataset}.json").is_file()
        )
    assert_nothing_half_written(corruption.dataset, stage)


@pytest.mark.parametrize("repair", REPAIRS, ids=[r.kind for r in REPAIRS])
def test_tolerated_input_comes_out_clean(
    repair: Repair, in_tmp_repo, small_mirror, small_mirror_copy, make_params, caplog
):
    """The readers repair this input: ingest and validate pass and data/raw equals what the clean files give."""
    repair.apply(small_mirror_copy)
    with caplog.at_level(logging.INFO, logger="pipeline.data.readers"):
        stage, err = run_data_stages(repair.dataset, make_params(small_mirror_copy))
    assert (stage, err) == ("done", None)
    assert f"{small_mirror_copy / repair.file}: stripped a UTF-8 byte-order mark" in caplog.text
    clean = read_mirror(repair.dataset, small_mirror)
    ingested = datasets.load_from_disk(str(Path("data/raw") / repair.dataset))
    for split, ds in clean.items():
        assert ingested[split].to_dict() == ds.to_dict(), f"split {split!r} differs from the clean files"
    assert not ingested["train"][0]["text"].startswith("\ufeff")


def test_at_least_eleven_kinds_of_bad_input():
    kinds = {c.kind for c in CORRUPTIONS}
    required = {
        "missing_field",
        "empty_text",
        "unknown_label",
        "broken_bio",
        "tokens_tags_mismatch",
        "misaligned_translation",
        "non_utf8",
        "empty_file",
        "truncated_conll",
        "train_test_leak",
        "duplicated_rows",
    }
    assert required <= kinds and len(kinds) == len(CORRUPTIONS) >= 11


# ---------------------------------------------------------------- through the real flow CLI
@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory) -> Path:
    """One Prefect home for these CLI runs: its database is migrated once, not on every run."""
    return tmp_path_factory.mktemp("prefect_home")


def run_chain(steps: list[str], name: str, cwd: Path, mirror: Path, repo_root: Path, prefect_home: Path):
    """`python -m flows.data <step> <name>` for each step, chained with && as DVC chains its stages."""
    env = dict(os.environ)
    env.update(
        {
            MIRROR_ENV: str(mirror),
            "PYTHONPATH": str(repo_root),
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
            "HT_LOG_LEVEL": "INFO",
        }
    )
    env.pop("PREFECT_API_URL", None)
    command = " && ".join(f"{sys.executable} -m flows.data {step} {name}" for step in steps)
    return subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "kind,stopped_by,markers",
    [
        ("non_utf8", "ingest", ("SourceDataError", "train.txt:10", "non-UTF-8")),
        ("train_test_leak", "validate", ("DataValidationError", "split 'train'", "column 'in_test'", "observed 30")),
    ],
)
def test_flow_cli_exits_nonzero_and_stops_the_chain(
    kind, stopped_by, markers, in_tmp_repo, small_mirror_copy, make_params, repo_root, prefect_home
):
    corruption = next(c for c in CORRUPTIONS if c.kind == kind)
    corruption.apply(small_mirror_copy)
    shutil.copy(repo_root / "params.yaml", in_tmp_repo / "params.yaml")
    steps = ["ingest", "validate", "prepare"]
    if stopped_by == "validate":  # ingest passes on this input: run it in-process to spare one flow start-up
        ingest_dataset(corruption.dataset, make_params(small_mirror_copy))
        steps = steps[1:]
    result = run_chain(steps, corruption.dataset, in_tmp_repo, small_mirror_copy, repo_root, prefect_home)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "FAILED: " + markers[0] in result.stderr, output[-3000:]
    for marker in markers[1:]:
        assert marker in result.stderr, f"{marker!r} missing:\n{result.stderr[-3000:]}"
    assert f"for flow '{stopped_by}'" in output and "for flow 'prepare'" not in output  # the chain stopped there
    assert_nothing_half_written(corruption.dataset, stopped_by)
