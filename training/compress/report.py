"""Stage-by-stage compression report: a markdown table, a JSON file and a size-vs-accuracy plot.

Generic over the task: a row is a dict with ``stage`` and any measured columns; ``COLUMNS`` lists the ones
the table shows (missing values print as ``-``) and how they are formatted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLUMNS: list[tuple[str, str, str]] = [  # (key, header, format)
    ("stage", "stage", "{}"),
    ("params", "params", "{:,}"),
    ("macs", "MMACs", "{:.1f}"),
    ("file", "file", "{}"),
    ("zip", "zipped", "{}"),
    ("huffman", "Huffman", "{}"),
    ("acc", "LFW verif. acc (10-fold)", "{}"),
    ("dir", "DIR @ 1% FAR", "{:.1%}"),
    ("top1", "top-1 acc", "{:.1%}"),
    ("known_rate", "named at threshold", "{:.1%}"),
    ("ms", "ms/crop (1 thread)", "{:.2f}"),
    ("speedup", "x faster than teacher", "{:.1f}"),
    ("speedup_fp32", "x faster than fp32 teacher", "{:.1f}"),
    ("smaller", "x smaller than fp32 teacher", "{:.1f}"),
]


def human_bytes(n: float) -> str:
    """1234567 -> '1.18 MB' (binary multiples, as the size goals are stated)."""
    for unit, div in (("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= div:
            return f"{n / div:.2f} {unit}" if unit == "MB" else f"{n / div:.0f} KB"
    return f"{n:.0f} B"


def cell(row: dict[str, Any], key: str, fmt: str) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    if key in ("file", "zip", "huffman"):
        return human_bytes(float(v))
    if key == "macs":
        return fmt.format(v / 1e6)
    if key == "acc":
        std = row.get("acc_std")
        return f"{v:.2%} ± {std:.2%}" if std is not None else f"{v:.2%}"
    return fmt.format(v)


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]] | None = None) -> str:
    """The rows as a markdown table over the columns that at least one row has."""
    cols = [c for c in (columns or COLUMNS) if any(r.get(c[0]) is not None for r in rows)]
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r, k, f) for k, _, f in cols) + " |" for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, acc_key: str = "acc", title: str = "") -> None:
    """Size (file, log scale) vs accuracy, one labelled point per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = [r for r in rows if r.get("file") and r.get(acc_key) is not None]
    ax.plot([r["file"] / 1024 for r in pts], [100 * r[acc_key] for r in pts], "o-", color="tab:blue", alpha=0.5)
    for r in pts:
        ax.annotate(r["stage"], (r["file"] / 1024, 100 * r[acc_key]), textcoords="offset points", xytext=(5, 5),
                    fontsize=8)
        if r.get("zip"):
            ax.plot(r["zip"] / 1024, 100 * r[acc_key], "x", color="tab:gray")
    ax.set_xscale("log")
    ax.set_xlabel("model file size, KB (log scale; x = zipped)")
    ax.set_ylabel(f"{acc_key} (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(rows: list[dict[str, Any]], out: Path, name: str, title: str, acc_key: str = "acc") -> str:
    """``out/<name>.json``, ``out/<name>.md`` and ``out/<name>.png``; returns the markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(rows, indent=1))
    table = markdown_table(rows)
    (out / f"{name}.md").write_text(table + "\n")
    plot(rows, out / f"{name}.png", acc_key, title)
    return table
