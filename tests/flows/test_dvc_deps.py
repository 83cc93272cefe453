"""dvc.yaml's code deps cover every project module each stage's flow imports, so a code change re-runs its stages.

For each stage, the module its command runs (`python -m flows.<name>`) is read with `ast` and followed through
every `import` / `from ... import` it holds, inside functions too, to the project's own modules (pipeline.*,
flows.*; the packages above a module count, their __init__.py runs). Each of those files must be one of the
stage's deps or lie in a folder that is. A file holding nothing but a docstring cannot change a result and is
exempt.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("pipeline", "flows")
CMD = re.compile(r"^python -m ((?:pipeline|flows)(?:\.\w+)+)(?:\s|$)")


def module_file(name: str, root: Path = REPO_ROOT) -> Path | None:
    base = root.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None


def imported_names(name: str, path: Path) -> set[str]:
    """Every module name `path` (module `name`) imports anywhere, and `from m import x` as m and m.x."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names |= {module, *(f"{module}.{alias.name}" for alias in node.names)}
    return names


def project_imports(module: str, root: Path = REPO_ROOT) -> dict[str, Path]:
    """module name -> file, for `module` and every project module it imports, transitively."""
    found: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in found or name.split(".")[0] not in PROJECT_PACKAGES:
            continue
        path = module_file(name, root)
        if path is None:  # `from pkg import function`: pkg.function is no module
            continue
        found[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run their __init__
        todo += sorted(imported_names(name, path))
    return found


def docstring_only(path: Path) -> bool:
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def stages(root: Path = REPO_ROOT) -> dict[str, dict]:
    """dvc.yaml's stages (a foreach stage's `do` body), unresolved: `${...}` deps are data, not code."""
    raw = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: stage.get("do", stage) for name, stage in raw.items()}


def code_deps(stage: dict) -> list[str]:
    return [dep.rstrip("/") for dep in stage.get("deps", []) if "${" not in dep]


def uncovered(module: str, deps: list[str], root: Path = REPO_ROOT) -> list[str]:
    """Files of the project modules `module` imports that no dep covers (the dep itself or a folder above it)."""
    missing = []
    for path in project_imports(module, root).values():
        rel = path.relative_to(root).as_posix()
        if not any(rel == dep or rel.startswith(f"{dep}/") for dep in deps) and not docstring_only(path):
            missing.append(rel)
    return sorted(missing)


def flow_module(stage: dict) -> str:
    match = CMD.match(stage["cmd"])
    assert match, f"cmd {stage['cmd']!r}: expected `python -m <pipeline|flows module> ...` (teach this test more)"
    return match.group(1)


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_cover_every_project_module_its_flow_imports(name):
    stage = stages()[name]
    module = flow_module(stage)
    deps = code_deps(stage)
    assert module_file(module), f"{name}: {module} not found"
    missing = uncovered(module, deps)
    assert not missing, (
        f"dvc.yaml stage {name!r} runs {module}, which imports {missing}; add them (or their "
        f"sub-package folder) to its deps, or a change there would not re-run the stage"
    )
    code = [d for d in deps if d.startswith(PROJECT_PACKAGES)]
    absent = [d for d in code if not (REPO_ROOT / d).exists()]
    assert not absent, f"{name}: deps {absent} do not exist"


def test_the_params_stage_reruns_when_params_or_a_profile_change():
    stage = stages()["params"]
    assert {"params.yaml", "profiles"} <= set(code_deps(stage))
    assert stage["outs"] == [
        {"params.effective.yaml": {"cache": False, "persist": True}},
        {"run-params": {"cache": False, "persist": True}},
    ]


def test_every_other_stage_reads_its_params_from_the_effective_file():
    for name, stage in stages().items():
        for entry in stage.get("params", []):
            if name == "ingest" and entry == {"data-sources.yaml": ["${key}"]}:
                continue  # not params: the recorded sources of the dataset (next test)
            if name in TRAINING_STAGES:
                continue  # their own run-params file (test_each_training_stage_reads_only_its_own_resolved_settings)
            assert isinstance(entry, dict) and list(entry) == ["params.effective.yaml"], (
                f"{name}: params {entry!r} must name keys of params.effective.yaml (params.yaml + the profile)"
            )


def test_ingest_depends_on_the_recorded_mirror_sources_not_on_the_mirror_folder():
    """A clone without the mirror (hub only, data pulled from a DVC remote) must not see ingest out of date."""
    from pipeline.data.sources import SOURCES_FILE

    stage = stages()["ingest"]
    assert {SOURCES_FILE: ["${key}"]} in stage["params"]
    assert not [d for d in stage["deps"] if "mirror" in d]
    effective = [e for e in stage["params"] if "params.effective.yaml" in e][0]["params.effective.yaml"]
    assert "ingest.mirror_dir" not in effective, "where the mirror lies must not matter, only what it holds"
    from pipeline.core.config import DATASETS
    from pipeline.data.sources import read_sources

    assert set(read_sources(REPO_ROOT)) == set(DATASETS), (
        f"{SOURCES_FILE} (committed) must have an entry per dataset: run `python -m flows.sources` and commit it"
    )


def test_the_import_walk_follows_imports_inside_functions_and_reports_gaps():
    # flows.train imports its trainers inside functions; they import plots, the registry and the NER tagger
    found = {p.relative_to(REPO_ROOT).as_posix() for p in project_imports("flows.train").values()}
    assert {
        "pipeline/train/plots.py",
        "pipeline/tracking/registry.py",
        "pipeline/models/ner_tagger.py",
        "pipeline/core/profiles.py",
        "flows/common.py",
    } <= found
    gaps = uncovered("flows.train", ["flows/train.py", "pipeline/train", "pipeline/models/loading.py"])
    assert "pipeline/models/ner_tagger.py" in gaps and "pipeline/tracking/registry.py" in gaps
    assert not any(g.startswith("pipeline/train/") for g in gaps)
    assert "pipeline/core/metrics.py" in uncovered("flows.compare", ["flows", "pipeline/compare"])


def test_relative_imports_and_docstring_only_packages(tmp_path):
    (tmp_path / "pipeline" / "sub").mkdir(parents=True)
    (tmp_path / "pipeline" / "__init__.py").write_text('"""Docs only."""\n')
    (tmp_path / "pipeline" / "sub" / "__init__.py").write_text("X = 1\n")
    (tmp_path / "pipeline" / "sub" / "a.py").write_text("def f():\n    from . import b\n    from .. import c\n")
    (tmp_path / "pipeline" / "sub" / "b.py").write_text("import os\n")
    (tmp_path / "pipeline" / "c.py").write_text("from pipeline.sub.b import nothing\n")
    found = project_imports("pipeline.sub.a", tmp_path)
    assert set(found) == {"pipeline", "pipeline.sub", "pipeline.sub.a", "pipeline.sub.b", "pipeline.c"}
    assert uncovered("pipeline.sub.a", ["pipeline/sub"], tmp_path) == ["pipeline/c.py"]


TRAINING_STAGES = ("finetune", "train", "scratch")


def test_each_training_stage_reads_only_its_own_resolved_settings():
    """run-params/<model>-<task>.yaml holds everything the run's settings come from, so the stage lists that file
    (all its keys) and nothing of params.effective.yaml: a change re-runs exactly the stages whose settings it
    changes, and DVC parses a 10-line file per stage instead of a 300-line one."""
    from pipeline.core.effective import RUN_PARAMS_DIR

    for name in TRAINING_STAGES:
        stage = stages()[name]
        assert stage["params"] == [{f"{RUN_PARAMS_DIR}/${{item.model}}-${{item.task}}.yaml": None}], name
        for model in stage["matrix"]["model"]:
            for task in stage["matrix"]["task"]:
                assert (REPO_ROOT / RUN_PARAMS_DIR / f"{model}-{task}.yaml").is_file(), f"{name}@{model}-{task}"
