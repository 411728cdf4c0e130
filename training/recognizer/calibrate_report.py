"""Outputs of ``training.recognizer.calibrate``: ``calibrate.json``, ``calibrate.md``, ``fpir.png``, and the
thresholds, figures and card section of the recognizer's model folder.

The model folder gets ``output.thresholds`` = {known, unknown, calibration (how), command, provisional (the
thresholds ``ship.py`` set, which a later run reports as "before")}, the figures
under ``metrics.calibration`` (``report.py`` keeps that key) and, in ``README.md``, the table between the
``<!-- calibration:start -->`` and ``<!-- calibration:end -->`` markers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from training.recognizer.openset import fpir_curve

START, END = "<!-- calibration:start -->", "<!-- calibration:end -->"


def pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or x != x else f"{100 * x:.{digits}f} %"


def _get(d: dict[str, Any] | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def columns(r: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(header, model figures, figures at its thresholds) per column: student before / after, teacher."""
    s = r["models"]["student"]
    tb, ta = s["thresholds_before"], s["thresholds"]
    cols = [(f"student, before calibration (ship.py's; known {tb['known']:.4f}, unknown {tb['unknown']:.4f})", s,
             s["before"]),
            (f"student, calibrated (known {ta['known']:.4f}, unknown {ta['unknown']:.4f})", s, s["after"])]
    if "teacher" in r["models"]:
        t = r["models"]["teacher"]
        th = t["thresholds"]
        cols.append((f"SFace teacher, own calibration (known {th['known']:.4f})", t, t["after"]))
    return cols


def open_set_table(r: dict[str, Any]) -> str:
    """Markdown: FPIR / DIR / verification per column."""
    cols = columns(r)
    n = r["models"]["student"]["counts"]
    rows: list[tuple[str, Any]] = [
        (f"FPIR, held-out strangers vs calib gallery ({n['calib']['gallery_people']} people)",
         lambda m, a: pct(_get(a, "calib_gallery", "fpir_strangers_heldout"), 2)),
        (f"FPIR, held-out strangers vs LFW eval gallery ({n['eval']['gallery_people']} people)",
         lambda m, a: pct(_get(a, "eval_gallery", "fpir_strangers_heldout"), 2)),
        ("FPIR, LFW eval people not enrolled", lambda m, a: pct(_get(a, "eval_gallery", "fpir_eval_people"), 2)),
        ("FPIR, CelebA eval people not enrolled", lambda m, a: pct(_get(a, "celeba", "fpir_celeba_people"), 2)),
        ("not unknown (named or uncertain), held-out strangers vs eval gallery",
         lambda m, a: pct(_get(a, "eval_gallery", "not_unknown_strangers_heldout"), 2)),
        ("FPIR (calibration strangers vs calib gallery)",
         lambda m, a: pct(_get(a, "calib_gallery", "fpir_strangers_calib"), 2)),
        ("DIR at these thresholds, LFW eval", lambda m, a: pct(_get(a, "eval_gallery", "dir"))),
        ("genuine probes named as someone else, LFW eval",
         lambda m, a: pct(_get(a, "eval_gallery", "wrong_person"), 2)),
        ("DIR at these thresholds, CelebA eval", lambda m, a: pct(_get(a, "celeba", "dir"))),
        ("DIR at FPIR 1 % / 5 %, LFW eval (impostors: eval people not enrolled)",
         lambda m, a: " / ".join(pct(v) for v in m["eval_dir_vs_eval_people"].values())),
        ("DIR at FPIR 1 % / 5 %, LFW eval (impostors: held-out strangers)",
         lambda m, a: " / ".join(pct(v) for v in m["eval_dir_vs_strangers"].values())),
        ("DIR at FPIR 1 % / 5 %, CelebA eval",
         lambda m, a: " / ".join(pct(v) for v in (m.get("celeba_dir") or {}).values()) or "-"),
        ("verification, LFW eval (10-fold)", lambda m, a: pct(m["verification"]["lfw_acc"], 2)),
        ("verification, CelebA eval (10-fold)", lambda m, a: pct(_get(m, "celeba_verification", "lfw_acc"), 2)),
    ]
    lines = ["| | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += ["| " + label + " | " + " | ".join(f(m, a) for _, m, a in cols) + " |" for label, f in rows]
    return "\n".join(lines)


def track_table(r: dict[str, Any]) -> str:
    """Markdown: per-track outcomes per recognizer pass and voting rule."""
    t = r["tracks"]
    head = ("| recognizer, thresholds | vote | enrolled people: named right (first name right, no 'unknown' "
            "before) / named wrong / not named | eval people not enrolled: named / unknown | held-out strangers: "
            "named / unknown | tracks |\n|---|---|---|---|---|---|")
    lines = [head]
    names = {"student_before": "student, before calibration", "student": "student, calibrated",
             "teacher": "SFace teacher, own calibration"}
    for key, label in names.items():
        for rule, rule_label in (("runtime", "runtime (edgecam.track.vote: quality-weighted)"),
                                 ("count", "one vote per crop (the rule before)")):
            g = _get(t, key, rule)
            if not g:
                continue
            gen, evp, st = g.get("genuine", {}), g.get("eval_people", {}), g.get("strangers", {})
            n = sum(int(v.get("tracks", 0)) for v in (gen, evp, st))
            lines.append(f"| {label} | {rule_label} | {pct(gen.get('named_right'))} "
                         f"({pct(gen.get('named_right_once'))}) / {pct(gen.get('named_wrong'))} / "
                         f"{pct(gen.get('not_named'))} | "
                         f"{pct(evp.get('named_wrong'))} / {pct(evp.get('unknown'))} | "
                         f"{pct(st.get('named_wrong'))} / {pct(st.get('unknown'))} | {n} |")
    return "\n".join(lines)


def population_sentence(d: dict[str, Any], s: dict[str, Any]) -> str:
    """How a second calibration population (CelebA people not reported on) set the thresholds, or nothing."""
    pops = s.get("thresholds_by_population") or {}
    if "celeba" not in pops:
        return ""
    lfw, cel = pops["lfw_few"], pops["celeba"]
    return (f"A second calibration population, {(d.get('celeba_calib') or {}).get('people', 0):,} CelebA eval "
            f"identities not among the reported ones (89x109 photos, in galleries as below; "
            f"{cel['impostor_probes']:,} impostor trials), gives known {cel['known']:.4f} / unknown "
            f"{cel['unknown']:.4f} (lfw_few: {lfw['known']:.4f} / {lfw['unknown']:.4f}); each threshold is the "
            "higher of the two, so both kinds of stranger are held to the target. ")


def markdown(r: dict[str, Any]) -> str:
    """The card section: how the thresholds were set, the tables, the command."""
    d, tg = r["data"], r["targets"]
    s = r["models"]["student"]
    celeba = d.get("celeba") or {}
    return "\n".join([
        f"Command: `{r['command']}` ({r['seconds'] // 60} min on this machine's 2 shared cores); detector "
        f"`{r['detector']['folder']}` (sha256 {r['detector']['sha256'][:12]}).",
        "",
        f"`known` is the smallest similarity that at most {pct(tg['known_fpir'], 0)} of the calibration strangers "
        f"reach, `unknown` the one {pct(tg['unknown_fpir'], 0)} reach, against a gallery of the "
        f"{s['counts']['calib']['gallery_people']} LFW calib people (3 photos each). Strangers: `identity/lfw_few` "
        f"({d['strangers']['people']['calibration']:,} calibration / {d['strangers']['people']['held_out']:,} "
        f"held-out people, split by person; {s['strangers_embedded']['calibration']:,} / "
        f"{s['strangers_embedded']['held_out']:,} photos with a face), in no gallery and in no training set. "
        + population_sentence(d, s) +
        f"Every other row is on people not used to calibrate: the held-out strangers, the LFW eval people "
        f"(gallery {s['counts']['eval']['gallery_people']} people x 3 photos, "
        f"{s['counts']['eval']['genuine_probes']} genuine probes, "
        f"{s['counts']['eval']['impostor_probes_eval_people']} probes of the eval people not enrolled) and "
        + (f"CelebA eval identities (`data.celeba_split`, {celeba.get('people', 0):,} people, 89x109 photos; "
           f"{s['counts']['celeba']['galleries']} disjoint galleries of about "
           f"{s['counts']['celeba']['gallery_people']} people, {s['counts']['celeba']['genuine_probes']} genuine "
           f"probes; the people not enrolled against every gallery, "
           f"{s['counts']['celeba']['impostor_probes_celeba_people']:,} impostor trials)." if "celeba" in s['counts']
           else "no CelebA (not staged).")
        + " The teacher embeds a seeded subsample of the strangers "
        f"({_get(r, 'models', 'teacher', 'strangers_embedded', 'calibration') or 0:,} / "
        f"{_get(r, 'models', 'teacher', 'strangers_embedded', 'held_out') or 0:,}).",
        "",
        open_set_table(r),
        "",
        "FPIR of the held-out strangers grows with the gallery (calibrated thresholds, calib galleries of n people): "
        + ", ".join(f"{n}: {pct(v, 2)}" for n, v in s["after"]["gallery_size_fpir_heldout"].items()) + ".",
        "",
        "**Identity over a track** (pseudo-tracks of real photos walking up to the camera, early frames small, "
        "blurred and JPEG'd, through `edgecam.pipeline.Pipeline` with the default config; per track):",
        "",
        track_table(r),
        "",
        "![FPIR vs threshold](calibration.png)",
    ])


def plot(curves: dict[str, Any], r: dict[str, Any], path: Path) -> None:
    """FPIR vs threshold per impostor set, one panel per model, with the thresholds before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0.0, 1.0, 401)
    fig, axes = plt.subplots(1, len(curves), figsize=(6.5 * len(curves), 4.6), squeeze=False)
    for ax, (name, sets) in zip(axes[0], curves.items(), strict=True):
        series = [("calibration strangers, calib gallery", sets["calib"].impostors["strangers_calib"]),
                  ("held-out strangers, calib gallery", sets["calib"].impostors["strangers_heldout"]),
                  ("held-out strangers, LFW eval gallery", sets["eval"].impostors["strangers_heldout"]),
                  ("LFW eval people not enrolled", sets["eval"].impostors["eval_people"])]
        if "celeba_calib" in sets:
            series.append(("CelebA calibration people", sets["celeba_calib"].impostors["celeba_people"]))
        if "celeba" in sets:
            series.append(("CelebA people not enrolled", sets["celeba"].impostors["celeba_people"]))
        for label, s in series:
            ax.semilogy(grid, np.maximum(fpir_curve(s, grid), 1e-4), label=f"{label} ({len(s):,})")
        m = r["models"][name]
        ax.axvline(m["thresholds"]["known"], color="k", ls="-", lw=1, label="known, calibrated")
        ax.axvline(m["thresholds"]["unknown"], color="k", ls=":", lw=1, label="unknown, calibrated")
        if "thresholds_before" in m:
            ax.axvline(m["thresholds_before"]["known"], color="r", ls="--", lw=1, label="known, before calibration")
        for f in (r["targets"]["known_fpir"], r["targets"]["unknown_fpir"]):
            ax.axhline(f, color="grey", lw=0.5)
        ax.set(title=f"{name}: FPIR vs threshold", xlabel="similarity threshold (named at or above)",
               ylabel="FPIR (share of impostor probes named)", ylim=(1e-4, 1.0), xlim=(0.1, 0.8))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _at(a: dict[str, Any]) -> dict[str, float | None]:
    """The headline figures at one pair of thresholds, rounded."""
    keys = {"known": ("eval_gallery", "known"), "unknown": ("eval_gallery", "unknown"),
            "fpir_heldout_strangers_eval_gallery": ("eval_gallery", "fpir_strangers_heldout"),
            "fpir_heldout_strangers_calib_gallery": ("calib_gallery", "fpir_strangers_heldout"),
            "fpir_lfw_eval_people": ("eval_gallery", "fpir_eval_people"),
            "fpir_celeba_people": ("celeba", "fpir_celeba_people"),
            "dir_lfw_eval": ("eval_gallery", "dir"), "wrong_person_lfw_eval": ("eval_gallery", "wrong_person"),
            "dir_celeba": ("celeba", "dir")}
    return {k: None if _get(a, *p) is None else round(float(_get(a, *p)), 4) for k, p in keys.items()}


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """The figures that go into ``model.json`` ``metrics.calibration`` (the full set: ``calibrate.json``)."""
    ms = r["models"]
    held = {"student_before": _at(ms["student"]["before"]), "student": _at(ms["student"]["after"])}
    free = {}
    for name, m in ms.items():
        if name != "student":
            held[name] = _at(m["after"])
        free[name] = {"lfw_eval_dir_at_fpir_1_5pct_vs_eval_people": list(m["eval_dir_vs_eval_people"].values()),
                      "lfw_eval_dir_at_fpir_1_5pct_vs_strangers": list(m["eval_dir_vs_strangers"].values()),
                      "celeba_dir_at_fpir_1_5pct": list((m.get("celeba_dir") or {}).values()),
                      "lfw_eval_verification": m["verification"]["lfw_acc"],
                      "celeba_verification": _get(m, "celeba_verification", "lfw_acc")}
    tracks = {name: {rule: {kind: {k: v for k, v in f.items() if k != "tracks"} for kind, f in per.items()}
                     for rule, per in t.items() if rule in ("runtime", "count")}
              for name, t in r["tracks"].items() if isinstance(t, dict)}
    return {"command": r["command"], "detector_sha256": r["detector"]["sha256"], "targets": r["targets"],
            "held_out_at_thresholds": held, "threshold_free": free, "tracks": tracks, "data": r["data"],
            "protocol": "see the card's Thresholds section; every figure: runs/recognizer/calibrate/calibrate.json"}


def update_model(model_dir: Path, r: dict[str, Any], md: str, out: Path) -> None:
    """Thresholds and figures into ``model.json``; the card section between the markers."""
    mj = model_dir / "model.json"
    m = json.loads(mj.read_text())
    s, tg = r["models"]["student"], r["targets"]
    m["output"]["thresholds"] = {
        "known": s["thresholds"]["known"], "unknown": s["thresholds"]["unknown"],
        "calibration": f"lfw_few strangers ({r['data']['strangers']['people']['calibration']:,} people, in no gallery "
                       f"or training set) vs the {s['counts']['calib']['gallery_people']} LFW calib people: known = "
                       f"smallest score at most {pct(tg['known_fpir'], 0)} of them reach, unknown = "
                       f"{pct(tg['unknown_fpir'], 0)}"
                       + (f"; the same on {r['data']['celeba_calib']['people']:,} CelebA eval identities against "
                          "galleries of their own, each threshold the higher of the two"
                          if "celeba" in s.get("thresholds_by_population", {}) else "")
                       + f"; crops of detector sha256 {r['detector']['sha256'][:12]}",
        "command": r["command"], "provisional": s["thresholds_before"]}  # ship.py's, compared against on a rerun
    m.setdefault("metrics", {})["calibration"] = summary(r)
    mj.write_text(json.dumps(m, indent=2) + "\n")
    shutil.copy(out / "fpir.png", model_dir / "calibration.png")
    card = model_dir / "README.md"
    if card.exists():
        text = card.read_text()
        if START in text and END in text:
            text = text[:text.index(START) + len(START)] + "\n" + md + "\n" + text[text.index(END):]
            card.write_text(text)


def write_report(r: dict[str, Any], curves: dict[str, Any], out: Path, model_dir: Path | None) -> str:
    """Write everything; returns the markdown."""
    (out / "calibrate.json").write_text(json.dumps(r, indent=1, default=float) + "\n")
    md = markdown(r)
    (out / "calibrate.md").write_text(md + "\n")
    plot(curves, r, out / "fpir.png")
    if model_dir is not None:
        update_model(model_dir, r, md, out)
    return md
