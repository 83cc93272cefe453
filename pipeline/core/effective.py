"""params.effective.yaml: params.yaml + the selected profile, plus the effective settings of every training run.

The `runs` section holds, for each `<model>-<task>`, what RunSettings.resolve gives (the task's settings with the
model-task override applied; a control's twin override and twin config). dvc.yaml's training stages list only
their own `runs.<model>-<task>` key, so an override, a model entry or a task setting re-runs exactly the stages
whose settings it changes (a control follows its twin's override), and dvc.lock records them.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.core import profiles
from pipeline.core.config import Params, parse_params
from pipeline.core.run_settings import RunSettings

RUNS_HEADER = (
    "\n# GENERATED: the settings each training stage runs with (<model>-<task>; pipeline/core/run_settings.py).\n"
    "# dvc.yaml's finetune/train/scratch stages each list their own key here.\n"
)


def effective_runs(params: Params) -> dict[str, dict]:
    """`<model>-<task>` -> the run's resolved settings (RunSettings.as_dict), for every model and task."""
    return {
        f"{model}-{task}": RunSettings.resolve(model, task, params).as_dict()
        for model in params.models
        for task in params.train.tasks
    }


def render_runs(runs: dict[str, dict]) -> str:
    # leaf mappings on one line each: ~6 lines a run instead of ~50
    return RUNS_HEADER + yaml.safe_dump({"runs": runs}, sort_keys=False, default_flow_style=None, width=200)


def effective_text(root: Path, profile: str | None) -> str:
    """params.effective.yaml's text for params.yaml + `profile` (None: none), validated; same input, same bytes."""
    mapping = profiles.effective_mapping(root, profile)
    params = parse_params(mapping, profiles.composed_source(root, profile))
    return profiles.render_effective(mapping) + render_runs(effective_runs(params))


def write_effective_params(root: Path, profile: str | None) -> Path:
    """Validate params.yaml + `profile` (None: none), then write <root>/params.effective.yaml, the file every DVC
    stage reads, atomically and deterministically (left untouched when its text is unchanged)."""
    return profiles.write_if_changed(root / profiles.EFFECTIVE_FILE, effective_text(root, profile))
