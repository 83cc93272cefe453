"""Attention heatmaps: which source tokens each output token looked at (PNG, matplotlib Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

MAX_LABEL_CHARS = 14


def _short(labels: Sequence[str]) -> list[str]:
    return [s if len(s) <= MAX_LABEL_CHARS else s[: MAX_LABEL_CHARS - 1] + "…" for s in labels]


def save_heatmap(weights, source: Sequence[str], output: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Save `weights` ([output_len, source_len], one row per output token) as a labelled heatmap PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.asarray(weights, dtype=float)  # [output_len, source_len]
    if grid.ndim != 2 or grid.shape != (len(output), len(source)):
        raise ValueError(
            f"attention weights of shape {grid.shape} do not match {len(output)} outputs x {len(source)} sources"
        )
    width = min(2 + 0.45 * len(source), 24)
    height = min(1.5 + 0.4 * len(output), 24)
    fig, ax = plt.subplots(figsize=(width, height))
    try:
        image = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=max(float(grid.max()), 1e-6), aspect="auto")
        ax.set_xticks(range(len(source)), _short(source), rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(output)), _short(output), fontsize=8)
        ax.set_xlabel("source")
        ax.set_ylabel("output")
        if title:
            ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.04)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
    finally:
        plt.close(fig)
    return path
