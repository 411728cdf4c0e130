"""Figures for the detector evaluations: labelled contact sheets of crops, grouped bar charts, markdown tables.

A contact sheet is a PNG grid of image crops, each with a one-line label under it, so a person can look at
what a detector missed or found instead of trusting a count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from edgecam.crops import snapshot_crop

BACKGROUND = (40, 40, 40)  # BGR of the sheet
LINE_H = 12  # pixels per label line under each cell
TITLE_H = 22  # pixels of the title strip


def crop(bgr: np.ndarray, box: np.ndarray, margin: float = 0.3, max_size: int = 224) -> np.ndarray:
    """The box (x1,y1,x2,y2[,score]) widened by ``margin`` of its size, clipped to the image, at most ``max_size``."""
    return snapshot_crop(bgr, np.asarray(box, np.float32), margin, max_size)


def _cell(img: np.ndarray, size: int) -> np.ndarray:
    """``img`` scaled so its longer side is ``size`` and centred on a ``size`` x ``size`` background."""
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    s = size / max(img.shape[:2])
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    img = cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))), interpolation=interp)
    out = np.full((size, size, 3), BACKGROUND, np.uint8)
    oy, ox = (size - img.shape[0]) // 2, (size - img.shape[1]) // 2
    out[oy:oy + img.shape[0], ox:ox + img.shape[1]] = img
    return out


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (235, 235, 235), 1, cv2.LINE_AA)


def contact_sheet(items: Sequence[tuple[np.ndarray, str]], path: Path, title: str, cell: int = 112, cols: int = 10,
                  limit: int = 100) -> int:
    """Write a PNG grid of labelled crops; at most ``limit`` of them, evenly spread. Returns how many it shows.

    Args:
        items: (BGR crop, label) pairs, in the order to show; a label may have several lines ("\\n").
        path: PNG to write (its folder is created); nothing is written when ``items`` is empty.
        title: line on top of the sheet (the count shown and the total are appended).
        cell: side of one cell in pixels.
        cols: cells per row.
        limit: most cells on one sheet.
    """
    if not items:
        return 0
    keep = np.unique(np.linspace(0, len(items) - 1, min(limit, len(items))).round().astype(int))
    shown = [items[i] for i in keep]
    cols = min(cols, len(shown))
    rows = -(-len(shown) // cols)
    label_h = LINE_H * max(label.count("\n") + 1 for _, label in shown) + 2
    title = f"{title} ({len(shown)} of {len(items)})"
    width = max(cols * cell, cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0] + 8)
    sheet = np.full((TITLE_H + rows * (cell + label_h), width, 3), BACKGROUND, np.uint8)
    _text(sheet, title, (4, 15), 0.45)
    for i, (img, label) in enumerate(shown):
        y, x = TITLE_H + (i // cols) * (cell + label_h), (i % cols) * cell
        sheet[y + 1:y + cell - 1, x + 1:x + cell - 1] = _cell(img, cell - 2)
        for j, line in enumerate(label.split("\n")):
            _text(sheet, line, (x + 2, y + cell + LINE_H * (j + 1) - 2), 0.33)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), sheet)
    return len(shown)


def grouped_bars(categories: Sequence[str], series: Mapping[str, Sequence[float | None]], path: Path, title: str,
                 ylabel: str, ylim: tuple[float, float] | None = (0.0, 1.05)) -> None:
    """A bar chart with one group per category and one bar per series (None: no bar), values over the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(categories))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5.5, 0.9 * len(categories) * max(1, len(series)) / 2), 4.2))
    for i, (name, values) in enumerate(series.items()):
        vals = [np.nan if v is None else float(v) for v in values]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=name)
        ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.2f}" if ylim else f"{v:g}" for v in vals],
                     fontsize=6, padding=1)
    ax.set_xticks(x, categories, rotation=20 if max(map(len, categories), default=0) > 8 else 0, ha="right"
                  if max(map(len, categories), default=0) > 8 else "center", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; floats with 2 decimals (3 under 0.1), None as '-'."""

    def fmt(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 0.1 else f"{v:.2f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
