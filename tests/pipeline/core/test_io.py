"""Atomic writes: success replaces the target; a crash inside leaves the old target intact and no temporaries."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.core.io import atomic_dir, atomic_file, write_bytes, write_json, write_text


class Crash(RuntimeError):
    """Stands for a kill or a full disk in the middle of writing."""


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_dir_creates_then_replaces_the_target(tmp_path):
    target = tmp_path / "out" / "model"
    with atomic_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp.is_dir() and not any(tmp.iterdir())
        (tmp / "a.txt").write_text("v1")
    assert (target / "a.txt").read_text() == "v1"

    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("v2")
        assert (target / "a.txt").read_text() == "v1", "the old output stays readable until the swap"
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"], "the old folder is replaced, not merged"
    assert leftovers(target.parent) == []


def test_crash_inside_atomic_dir_keeps_the_old_target_and_leaves_no_temp(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("good")
    with pytest.raises(Crash), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half")
        (tmp / "sub").mkdir()
        raise Crash("killed while writing")
    assert (target / "a.txt").read_text() == "good"
    assert leftovers(tmp_path) == []


def test_crash_inside_atomic_dir_without_an_old_target_leaves_nothing(tmp_path):
    with pytest.raises(Crash), atomic_dir(tmp_path / "new") as tmp:
        (tmp / "a.txt").write_text("half")
        raise Crash
    assert list(tmp_path.iterdir()) == []


def test_failed_swap_puts_the_old_target_back(tmp_path, monkeypatch):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("good")
    real_rename = Path.rename

    def rename(self, dest):
        if Path(dest) == target and ".tmp-" in self.name:  # the new folder cannot be moved into place
            raise OSError("rename failed")
        return real_rename(self, dest)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="rename failed"), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "good"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("write", "content", "read"),
    [
        (write_text, "Grüße\n", lambda p: p.read_text(encoding="utf-8")),
        (write_bytes, b"\x00\x01binary", Path.read_bytes),
        (write_json, {"b": 1, "a": ["Straße", 0.5]}, lambda p: json.loads(p.read_text(encoding="utf-8"))),
    ],
)
def test_write_functions_create_and_replace(tmp_path, write, content, read):
    target = tmp_path / "deep" / "file"
    assert write(target, content) == target
    assert read(target) == content
    target.write_bytes(b"old")
    write(target, content)
    assert read(target) == content
    assert leftovers(target.parent) == []


def test_write_json_format(tmp_path):
    write_json(tmp_path / "a.json", {"b": 1, "a": "Straße"})
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == '{\n  "b": 1,\n  "a": "Straße"\n}\n'
    write_json(tmp_path / "s.json", {"b": 1, "a": 2}, sort_keys=True)
    assert list(json.loads((tmp_path / "s.json").read_text())) == ["a", "b"]


def test_unserialisable_json_leaves_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"accuracy": 0.5})
    with pytest.raises(TypeError):
        write_json(target, {"accuracy": object()})
    assert json.loads(target.read_text()) == {"accuracy": 0.5}
    assert leftovers(tmp_path) == []


def test_written_files_get_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    write_text(tmp_path / "report.md", "x")
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_file_with_a_saving_callable(tmp_path):
    target = tmp_path / "ckpt" / "best.safetensors"
    with atomic_file(target) as tmp:
        assert tmp.parent == target.parent and not tmp.exists()
        save_file({"w": torch.ones(2, 3)}, str(tmp))
    assert torch.equal(load_file(str(target))["w"], torch.ones(2, 3))

    with pytest.raises(Crash), atomic_file(target) as tmp:
        tmp.write_bytes(b"half a safetensors file")
        raise Crash("killed while saving")
    assert torch.equal(load_file(str(target))["w"], torch.ones(2, 3)), "the previous weights are intact"
    assert leftovers(target.parent) == []


def test_atomic_file_refuses_when_nothing_was_saved(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was saved"), atomic_file(tmp_path / "x.bin"):
        pass
    assert list(tmp_path.iterdir()) == []
