"""The report of ``training.detector.realeval``: ``realeval.json``, ``table.md`` and one PNG per section.

Everything here reads the report dict that ``realeval.main`` builds; detector names come from its keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.detector.figures import grouped_bars, markdown_table


def pct(v: float | None) -> str:
    """A fraction as a percentage, '-' for None."""
    return "-" if v is None else f"{100 * v:.0f} %"


def clips_table(s: dict[str, Any]) -> list[str]:
    """Section 1: found / reference per clip for ours and Haar, extras, totals."""

    def found(c: dict[str, Any], k: str) -> str:
        return f"{c['found'][k]} ({pct(c['recall'][k])})"

    rows = [[c["clip"], c["frames"], c["reference"], found(c, "ours"), found(c, "Haar"), c["extra"]["ours"],
             c["extra"]["Haar"]] for c in s["clips"]]
    t = s["total"]
    rows.append(["**all**", sum(c["frames"] for c in s["clips"]), t["reference"], found(t, "ours"), found(t, "Haar"),
                 t["extra"]["ours"], t["extra"]["Haar"]])
    return [f"## 1. Recall against YuNet (every {s['stride']}th frame, native size; reference: YuNet >= "
            f"{s['ref_score']}, so YuNet = 100 %; extra: matches no YuNet face >= {s['extra_score']})", "",
            markdown_table(["clip", "frames", "YuNet faces", "ours found", "Haar found", "ours extra", "Haar extra"],
                           rows), "", "![recall vs YuNet](recall_vs_yunet.png)", ""]


def bins_table(s: dict[str, Any], title: str, png: str, column: str = "face height px") -> list[str]:
    """Sections 2, 4 and 7: recall per bin (face height, yaw) and overall, one column per detector."""
    names = list(s["recall"])
    rows = [[b, n, *(pct(s["recall"][k][i]) for k in names)]
            for i, (b, n) in enumerate(zip(s["bins"], s["faces_per_bin"], strict=True))]
    rows.append(["**all**", s["faces"], *(pct(s["recall_all"][k]) for k in names)])
    return [f"## {title}", "", markdown_table([column, "faces", *names], rows), "",
            f"![{png}]({png}.png)", ""]


def roll_table(s: dict[str, Any]) -> list[str]:
    """Section 3: recall per roll angle."""
    names = list(s["recall"])
    rows = [[f"{a} deg", *(pct(s["recall"][k][i]) for k in names)] for i, a in enumerate(s["angles"])]
    return [f"## 3. Roll ({s['faces']} faces in {s['images']} WebFaces val images, operating thresholds)", "",
            markdown_table(["roll", *names], rows), "", "![roll](roll.png)", ""]


def tracks_table(s: dict[str, Any]) -> list[str]:
    """Section 5: tracks / false tracks per clip, one column per detector in the pipeline."""
    names = list(s["total"])
    rows = [[c["clip"], *(f"{c[n]['tracks']} / {c[n]['false_tracks']}" for n in names)] for c in s["clips"]]
    rows.append(["**all**", *(f"{s['total'][n]['tracks']} / {s['total'][n]['false_tracks']}" for n in names)])
    return [f"## 5. Replays: tracks / false tracks (a face: its detections match a YuNet face, 1x+2x >= "
            f"{s['label_score']}, on most of its frames)", "",
            markdown_table(["clip", *(f"{n} in the pipeline" for n in names)], rows), "",
            "![tracks](replay_tracks.png)", ""]


def latency_table(ms: dict[str, float]) -> list[str]:
    """Section 6: ms per 320x240 frame and the ratio to YuNet."""
    rows = [[k, f"{v:.2f}", f"{v / ms['YuNet']:.2f}x" if ms.get("YuNet") else "-"] for k, v in ms.items()]
    return ["## 6. Latency per 320x240 frame (median, single thread)", "",
            markdown_table(["detector", "ms", "vs YuNet"], rows), ""]


def tables(r: dict[str, Any]) -> list[str]:
    """The markdown of every section present in ``r``, in section order."""
    md = clips_table(r["recall_vs_yunet"]) if "recall_vs_yunet" in r else []
    if "large_faces" in r:
        md += bins_table(r["large_faces"], "2. Large faces (LFW eval people in a 640x480 frame)", "large_faces")
    md += roll_table(r["roll"]) if "roll" in r else []
    if "webfaces_height" in r:
        md += bins_table(r["webfaces_height"], "4. Recall by face height, WebFaces val (upright)", "webfaces_height")
    md += tracks_table(r["replay_tracks"]) if "replay_tracks" in r else []
    md += latency_table(r["latency_ms"]) if "latency_ms" in r else []
    if "turned_heads" in r:
        md += bins_table(r["turned_heads"], "7. Turned heads (held-out CelebA identities, faces 60-160 px in a 640x480 "
                         "frame), by yaw ratio x 100 (0 frontal, >= 45 near profile)", "turned_heads",
                         column="yaw ratio x 100")
    return md


def plots(r: dict[str, Any], out: Path) -> None:
    """One PNG per section (the latency is a table only)."""
    if "recall_vs_yunet" in r:
        c = r["recall_vs_yunet"]["clips"]
        grouped_bars([Path(x["clip"]).stem[:24] for x in c], {k: [x["recall"][k] for x in c] for k in c[0]["recall"]},
                     out / "recall_vs_yunet.png", "recall against YuNet (reference: YuNet >= "
                     f"{r['recall_vs_yunet']['ref_score']})", "recall")
    for key, title in (("large_faces", "large faces: recall by face height (px)"),
                       ("webfaces_height", "WebFaces val: recall by face height (px)"),
                       ("turned_heads", "held-out CelebA identities: recall by yaw ratio x 100")):
        if key in r:
            grouped_bars(r[key]["bins"], r[key]["recall"], out / f"{key}.png", title, "recall")
    if "roll" in r:
        grouped_bars([f"{a} deg" for a in r["roll"]["angles"]], r["roll"]["recall"], out / "roll.png",
                     "WebFaces val rotated: recall by roll", "recall")
    if "replay_tracks" in r:
        s = r["replay_tracks"]
        series = {f"{n} {k.replace('_', ' ')}": [c[n][k] for c in s["clips"]] for n in s["total"]
                  for k in ("tracks", "false_tracks")}
        grouped_bars([Path(c["clip"]).stem[:24] for c in s["clips"]], series, out / "replay_tracks.png",
                     "replays: tracks and false tracks per clip", "tracks", ylim=None)


def write_report(r: dict[str, Any], out: Path) -> str:
    """``realeval.json``, ``table.md`` and the PNGs under ``out``; the markdown."""
    (out / "realeval.json").write_text(json.dumps(r, indent=2) + "\n")
    plots(r, out)
    head = ["# Face detector on real footage: ours vs YuNet vs Haar, one run", "",
            f"`{r['command']}` ({r['seconds']} s), model `{r['model']}`, operating thresholds "
            f"{r['operating_thresholds']}. A detection finds a face when: {r['matching_rule']}. Contact sheets: "
            "`sheets/`.", ""]
    md = "\n".join(head + tables(r))
    (out / "table.md").write_text(md)
    return md
