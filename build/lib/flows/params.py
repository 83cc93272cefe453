"""The DVC stage `params`: write params.effective.yaml (params.yaml + the selected profile) for every other stage.

    python -m flows.params                  # profile: HT_PROFILE, else the one params.effective.yaml records, else none
    python -m flows.params --profile gpu    # select a profile ('' = none); `make run PROFILE=gpu` does this first

Not a Prefect flow on purpose: it only composes two YAML files (milliseconds), while starting Prefect and a flow
run would cost seconds at the head of every `dvc repro`, and there is nothing to retry or to show in a UI.
Bad params (a typo in a profile, an invalid value) exit 2 with the message, before any other stage runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core.config import ParamsError
from pipeline.core.effective import write_effective_params
from pipeline.core.profiles import EFFECTIVE_FILE, PROFILE_ENV, selected_profile


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.params", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--profile",
        default=None,
        help=f"profiles/<name>.yaml to apply; '' for none (default: {PROFILE_ENV}, else the profile "
        f"{EFFECTIVE_FILE} records, else none)",
    )
    args = parser.parse_args(argv)
    root = Path.cwd()
    try:
        profile = selected_profile(root) if args.profile is None else (args.profile or None)
        path = write_effective_params(root, profile)
    except ParamsError as err:
        print(str(err), file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{path.name}: params.yaml + {f'profiles/{profile}.yaml' if profile else 'no profile'}")


if __name__ == "__main__":
    main(sys.argv[1:])
