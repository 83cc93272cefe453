"""Refresh data-sources.yaml (pipeline.data.sources): what each ingest stage reads, so DVC sees mirror changes.

    python -m flows.sources      # before a bare `dvc repro`; make run and the retrain flow do it themselves

Not a Prefect flow: it hashes a few mirror files (well under a second), nothing to retry or to show in a UI.
"""

from __future__ import annotations

import sys

from flows.common import params_or_exit


def main(argv: list[str]) -> None:
    from pipeline.data.sources import SOURCES_FILE, refresh_sources

    if argv:
        raise SystemExit("usage: python -m flows.sources")
    changed = refresh_sources(params_or_exit())
    print(f"{SOURCES_FILE}: " + (f"changed {', '.join(changed)}" if changed else "up to date"))


if __name__ == "__main__":
    main(sys.argv[1:])
