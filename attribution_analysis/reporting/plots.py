"""Matplotlib plots for reports: mask-training curves and deletion/insertion curves.

Figures are drawn with the object-oriented API on an explicit Agg canvas, so no display is
needed and the global pyplot backend of the calling process is never touched. Output is
deterministic: fixed size and dpi, and no software/date metadata in the PNG.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from attribution_analysis.utils.io import atomic_write
from attribution_analysis.utils.numbers import finite_float

#: Metrics of the mask-training history that get one PNG each, with their y-axis labels.
TRAINING_METRICS: dict[str, str] = {
    "l0": "expected L0 (share of tokens kept)",
    "divergence": "divergence (original vs masked)",
    "lambda": "Lagrange multiplier λ",
    "within_margin": "share within divergence margin",
}

FIGSIZE: tuple[float, float] = (6.0, 3.4)
DPI: int = 110
PNG_METADATA: dict[str, Any] = {"Software": None}


def _new_figure() -> tuple[Figure, Any]:
    """Return a fresh figure bound to an Agg canvas, and its single axes."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Save ``fig`` as PNG to ``path`` atomically."""
    fig.tight_layout()
    return atomic_write(
        path, lambda p: fig.savefig(p, format="png", dpi=DPI, metadata=PNG_METADATA)
    )


def _x_key(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """Return the x-axis key of the history rows: ``epoch``, else ``step``, else ``None``."""
    for key in ("epoch", "step"):
        if any(finite_float(row.get(key)) is not None for row in rows):
            return key
    return None


def _series(
    rows: Sequence[Mapping[str, Any]], key: str, x_key: str | None
) -> tuple[list[float], list[float]]:
    """Return the (x, y) points of metric ``key``, skipping rows where it is missing."""
    xs: list[float] = []
    ys: list[float] = []
    for index, row in enumerate(rows):
        y = finite_float(row.get(key))
        x = float(index) if x_key is None else finite_float(row.get(x_key))
        if y is not None and x is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def _use_log_scale(values: Sequence[float]) -> bool:
    """Whether a series is positive and spans more than two decades (so a log axis reads better)."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 100


def _plot_metric(
    rows: Sequence[Mapping[str, Any]], metric: str, x_key: str | None, path: Path
) -> Path | None:
    """Draw train (and validation, if present) curves of one metric; ``None`` if it has no data."""
    train = _series(rows, metric, x_key)
    val = _series(rows, f"val_{metric}", x_key)
    if not train[1] and not val[1]:
        return None
    fig, ax = _new_figure()
    marker = "o" if max(len(train[0]), len(val[0])) <= 30 else None
    if train[1]:
        ax.plot(*train, marker=marker, markersize=3, linewidth=1.5, label="train")
    if val[1]:
        ax.plot(*val, marker=marker, markersize=3, linewidth=1.5, linestyle="--", label="val")
    if _use_log_scale(train[1] + val[1]):
        ax.set_yscale("log")
    ax.set_xlabel(x_key or "row")
    ax.set_ylabel(TRAINING_METRICS[metric])
    ax.set_title(metric)
    ax.legend(frameon=False)
    return _save(fig, path)


def plot_training_history(history_rows: list[dict], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Plot the mask-training history, one PNG per metric that is present.

    ``history_rows`` holds one dict per epoch (or step) with any of ``epoch``/``step``, ``l0``,
    ``divergence``, ``lambda``, ``within_margin`` and their ``val_`` variants; missing or
    non-finite values are skipped. Writes ``<metric>.png`` into ``out_dir`` and returns
    ``{metric: path}`` for the metrics that had data.
    """
    out = Path(out_dir)
    x_key = _x_key(history_rows)
    written: dict[str, Path] = {}
    for metric in TRAINING_METRICS:
        path = _plot_metric(history_rows, metric, x_key, out / f"{metric}.png")
        if path is not None:
            written[metric] = path
    return written


def _normalised_auc(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Trapezoidal area under the curve divided by the x range (``None`` if undefined)."""
    if len(xs) < 2:
        return None
    pairs = sorted(zip(xs, ys))
    span = pairs[-1][0] - pairs[0][0]
    if span <= 0:
        return None
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pairs, pairs[1:]))
    return area / span


def plot_curves(
    curves: dict[str, tuple[list[float], list[float]]],
    title: str,
    ylabel: str,
    path: str | os.PathLike,
    *,
    xlabel: str = "fraction of tokens removed",
    show_auc: bool = True,
) -> Path:
    """Plot one curve per method (e.g. deletion or insertion curves) into one PNG at ``path``.

    ``curves`` maps a method name to ``(xs, ys)``. With ``show_auc`` the legend also gives each
    curve's area under the curve, normalised by its x range.
    """
    fig, ax = _new_figure()
    for method, (xs, ys) in curves.items():
        points = [
            (x, y)
            for x, y in zip(map(finite_float, xs), map(finite_float, ys))
            if None not in (x, y)
        ]
        px = [x for x, _ in points]
        py = [y for _, y in points]
        auc = _normalised_auc(px, py) if show_auc else None
        label = method if auc is None else f"{method} (AUC {auc:.3f})"
        ax.plot(px, py, marker="o" if len(px) <= 30 else None, markersize=3, label=label)
    if not curves:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(frameon=False, fontsize="small")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _save(fig, path)
