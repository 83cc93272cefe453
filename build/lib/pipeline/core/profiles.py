"""Profiles: small overlays on params.yaml, and the effective params file every DVC stage reads.

params.yaml holds every default. A profile, profiles/<name>.yaml, holds only what differs (e.g. `gpu`: bigger
pretraining; `smoke`: tiny everything). The effective params are params.yaml deep-merged with the profile
(mappings merge key by key; scalars, lists and null replace) plus a top-level `profile: <name or null>`.
Every overlay key must already exist in params.yaml, so a typo fails with the file and the dotted key.

Which profile: HT_PROFILE when set (and not empty), else the one recorded in params.effective.yaml, else none.
The `params` DVC stage (`python -m flows.params`) writes params.effective.yaml; `make run PROFILE=<name>` writes it
for that profile before `dvc repro`, and a bare `dvc repro` keeps the profile recorded there.

This module works on the raw mappings; pipeline/core/config.py validates them into `Params` (load_params) and
builds on this one, which therefore also owns ParamsError; pipeline/core/effective.py writes the file.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.io import write_text


class ParamsError(ValueError):
    """params.yaml, a profile or the params composed from them are invalid; the message names the file and key."""


PARAMS_FILE = "params.yaml"
PROFILES_DIR = "profiles"
EFFECTIVE_FILE = "params.effective.yaml"
PROFILE_ENV = "HT_PROFILE"


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it lies below it (how a user typed it), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _read_mapping(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{_shown(path)}: not found (run from the repository root)") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{_shown(path)}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{_shown(path)}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def available_profiles(root: Path) -> list[str]:
    folder = root / PROFILES_DIR
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def profile_path(root: Path, name: str) -> Path:
    """profiles/<name>.yaml; an unknown name fails listing the profiles there are."""
    path = root / PROFILES_DIR / f"{name}.yaml"
    if "/" in name or "\\" in name or not path.is_file():
        available = available_profiles(root)
        raise ParamsError(
            f"unknown profile {name!r}: available profiles are {available or 'none'} "
            f"({_shown(root / PROFILES_DIR)}/<name>.yaml); without one, params.yaml applies as it is"
        )
    return path


def unknown_keys(base: dict, overlay: dict, prefix: str = "") -> list[str]:
    """Dotted keys of `overlay` that `base` does not have (a mapping in both is checked key by key)."""
    missing = []
    for key, value in overlay.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            missing.append(dotted)
        elif isinstance(value, dict) and isinstance(base[key], dict):
            missing += unknown_keys(base[key], value, f"{dotted}.")
    return missing


def deep_merge(base: dict, overlay: dict) -> dict:
    """A new mapping: `overlay` onto `base`; mappings merge recursively, anything else (null too) replaces."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_profile(root: Path, name: str, base: dict) -> dict:
    """The overlay profiles/<name>.yaml, checked against params.yaml's keys (`base`)."""
    path = profile_path(root, name)
    overlay = _read_mapping(path)
    if "profile" in overlay:
        raise ParamsError(f"{_shown(path)}: `profile` is set by the composition (the profile's name), not by a profile")
    missing = unknown_keys(base, overlay)
    if missing:
        lines = "\n".join(f"  - {key}" for key in missing)
        raise ParamsError(
            f"{_shown(path)}: key(s) not in params.yaml (a profile may only change existing keys; "
            f"check the spelling against params.yaml):\n{lines}\nFix {_shown(path)} and run again; "
            "nothing was run."
        )
    return overlay


def recorded_profile(root: Path) -> str | None:
    """The profile params.effective.yaml was written for (None when there is no such file or no profile)."""
    path = root / EFFECTIVE_FILE
    if not path.exists():
        return None
    recorded = _read_mapping(path).get("profile")
    if recorded is not None and not isinstance(recorded, str):
        raise ParamsError(
            f"{_shown(path)}: `profile` must be a profile name or null, got {recorded!r}; "
            f"delete the file or set {PROFILE_ENV}"
        )
    return recorded


def selected_profile(root: Path) -> str | None:
    """HT_PROFILE when set and not empty, else the profile recorded in params.effective.yaml, else None."""
    return os.environ.get(PROFILE_ENV) or recorded_profile(root)


def composed_source(root: Path, profile: str | None) -> str:
    """How error messages name the composition, e.g. `params.yaml + profiles/smoke.yaml`."""
    base = _shown(root / PARAMS_FILE)
    return f"{base} + {_shown(root / PROFILES_DIR / f'{profile}.yaml')}" if profile else base


def effective_mapping(root: Path, profile: str | None) -> dict:
    """params.yaml with `profile` applied (None: as it is), plus `profile: <name or null>` first; not validated."""
    base = _read_mapping(root / PARAMS_FILE)
    if "profile" in base:
        raise ParamsError(
            f"{_shown(root / PARAMS_FILE)}: `profile` is not a parameter (it records the profile "
            f"applied; choose one with {PROFILE_ENV} or `make run PROFILE=<name>`)"
        )
    merged = deep_merge(base, read_profile(root, profile, base)) if profile else base
    return {"profile": profile, **merged}


def render_effective(mapping: dict[str, Any]) -> str:
    """params.effective.yaml's text: a header, then the mapping (key order of params.yaml); same input, same bytes."""
    profile = mapping.get("profile")
    source = f"params.yaml + {PROFILES_DIR}/{profile}.yaml" if profile else "params.yaml (no profile)"
    header = (
        f"# GENERATED from {source} by `python -m flows.params` (the DVC stage `params`). Do not edit:\n"
        "# change params.yaml or the profile and run `make run [PROFILE=<name>]` (or `dvc repro`).\n"
        "# Every DVC stage reads its params here; dvc.lock records the values each stage ran with.\n"
    )
    body = yaml.safe_dump(mapping, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)
    return header + body


def write_if_changed(target: Path, text: str) -> Path:
    """Write `text` to `target` atomically; untouched (same mtime) when unchanged."""
    if target.exists() and target.read_text(encoding="utf-8") == text:
        return target
    return write_text(target, text)
