"""data-sources.yaml: the mirror files' hashes per dataset (what DVC's ingest stages depend on), kept when the
mirror is absent, the hub source when nothing was recorded, rewritten only when something changed."""

from __future__ import annotations

import shutil

import yaml

from pipeline.core.config import DATASETS
from pipeline.data.ingest import sha256_file
from pipeline.data.sources import SOURCES_FILE, read_sources, refresh_sources


def test_mirror_hashes_are_recorded_then_kept_without_the_mirror_and_a_changed_file_shows(
    small_mirror_copy, make_params, tmp_path
):
    root = tmp_path / "repo"
    root.mkdir()
    params = make_params(mirror=small_mirror_copy)
    assert refresh_sources(params, root) == list(DATASETS)
    recorded = read_sources(root)
    emotion = recorded["emotion"]
    assert emotion["source"] == "mirror" and emotion["folder"] == "emotion"
    train = small_mirror_copy / "emotion" / "train.txt"
    assert emotion["files"]["train.txt"] == {"sha256": sha256_file(train), "size": train.stat().st_size}
    assert str(small_mirror_copy) not in (root / SOURCES_FILE).read_text(), "the mirror's location is not recorded"

    stamp = (root / SOURCES_FILE).stat().st_mtime_ns
    assert refresh_sources(params, root) == [] and (root / SOURCES_FILE).stat().st_mtime_ns == stamp

    moved = shutil.move(small_mirror_copy, tmp_path / "elsewhere")  # same files, another folder: nothing changed
    assert refresh_sources(make_params(mirror=moved), root) == []
    assert refresh_sources(make_params(mirror=tmp_path / "no-such-mirror"), root) == []  # absent: kept
    assert read_sources(root) == recorded

    with open(moved / "emotion" / "train.txt", "a", encoding="utf-8") as fh:
        fh.write("i feel changed;joy\n")
    assert refresh_sources(make_params(mirror=moved), root) == ["emotion"]
    assert read_sources(root)["emotion"]["files"]["train.txt"]["sha256"] != emotion["files"]["train.txt"]["sha256"]
    assert read_sources(root)["sst2"] == recorded["sst2"]


def test_without_a_mirror_or_a_record_the_hub_source_is_recorded(make_params, tmp_path):
    params = make_params(mirror=tmp_path / "no-such-mirror")
    refresh_sources(params, tmp_path)
    entry = yaml.safe_load((tmp_path / SOURCES_FILE).read_text())["emotion"]
    hub = params.ingest.datasets["emotion"]
    assert entry == {"source": "hub", "hub_id": hub.hub_id, "config": hub.config, "revision": hub.revision}
