"""Thresholds that hold on new people: ``known`` / ``unknown`` calibrated on thousands of strangers, reported on
others, the SFace teacher side by side, and identity over pseudo-tracks, in one run.

    python -m training.recognizer.calibrate --config training/recognizer/configs/calibrate.yaml  # 12 min, 2 busy cores
    python -m training.recognizer.calibrate --config training/recognizer/configs/calibrate.yaml \\
        --detector runs/detector/wild/model       # crops of another detector folder (flags override the file)

Every crop is made as the runtime makes it: the detector folder through ``edgecam.detect.FaceDetector``, the
photo's face as ``edgecam enroll`` finds it, aligned on the detector's landmarks, embedded through
``edgecam.recognize.EmbeddingRecognizer`` and matched with its ``Gallery`` (``stills.py``, ``openset.py``).

1. Models: the detector, the recognizer folder (its thresholds before this run give the "before" figures) and
   the SFace teacher (``teacher.py``'s replica of the int8bq file, exported in fp32 into a model folder so it
   runs through the same runtime class; checked against the file on real crops).
2. Photos -> crops: the LFW ``calib`` (40) and ``eval`` (100) people of ``data.split_people``; the strangers of
   ``identity/lfw_few`` (5,326 people in no gallery, disjoint from identity/lfw and every eval set), split by
   person (seeded) into a calibration half and a held-out half; CelebA ``eval`` identities
   (``data.celeba_split``) when staged (``python -m training.fetched --set celeba``).
3. Embeddings: the recognizer on every crop; the teacher on the LFW people, CelebA and ``teacher_strangers``
   seeded photos of each stranger half.
4. Calibration: gallery = every LFW calib person enrolled with 3 photos; impostors = the calibration half of the
   strangers. ``known`` = the smallest threshold that at most ``known_fpir`` of them reach, ``unknown`` = the one
   ``unknown_fpir`` reach. With ``celeba_calib_people``, CelebA eval identities not among the reported ones are a
   second calibration population (in galleries of ``celeba_gallery`` as below): each threshold is the higher of
   the two. The teacher gets its own thresholds the same way.
5. Held-out figures (``openset.OpenSet``) at the thresholds before (``ship.py``'s, from the 40 calib people) and
   after: FPIR of the held-out strangers against the calib gallery and against the LFW eval gallery
   (``evaluate.gallery_split``: 50 eval people x 3 photos), FPIR of the 50 eval people not enrolled, DIR (named
   right) and genuine probes named as someone else; DIR at FPIR 1 % and 5 % (thresholds set on those impostors);
   10-fold verification (``evaluate``); the same on CelebA eval identities (half of those with 2+ photos enrolled
   with up to 3, keeping one to probe, in galleries of ``celeba_gallery`` people); FPIR of the held-out strangers
   against calib galleries of 5 to 40 people.
6. Tracks (``tracks.py``): pseudo-tracks of the enrolled eval people, the eval people not enrolled and held-out
   strangers through the daemon's pipeline (quality-weighted votes); the rule before (one vote per crop) on the
   same recognitions.
7. ``calibrate.json`` and ``fpir.png`` under ``out``; with ``update_model`` the thresholds go into the recognizer's
   ``model.json`` (``output.thresholds``, figures in ``metrics.calibration``) and its card
   (``calibrate_report.py``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecam.detect import FaceDetector
from edgecam.manifest import sha256_file
from edgecam.recognize import EmbeddingRecognizer
from training.recognizer import evaluate as ev
from training.recognizer.data import CropSet, celeba_eval_photos, lfw_people, split_people
from training.recognizer.openset import OpenSet, enroll, rate, threshold_at
from training.recognizer.stills import Faces, cached_faces, embed
from training.recognizer.tracks import TrackConfig, TrackSpec, run_tracks
from training.runconfig import parse_run_config

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
STRANGER_SEED = 5326
CMD = "python -m training.recognizer.calibrate"


@dataclass(frozen=True)
class CalibConfig:
    """One calibration run (a run config file sets these; flags override it)."""

    detector: str = "edgecam/models/face_detector"  # detector folder that makes every crop
    recognizer: str = "edgecam/models/face_recognizer"  # recognizer folder to calibrate
    shared: str = "../shared"  # the shared data and anchor models
    celeba: str = "runs/data/celeba"  # staged CelebA images ("" or missing: no CelebA figures)
    out: str = "runs/recognizer/calibrate"  # JSON, PNG, the teacher folder and the crop cache
    cache: bool = True  # cache crops per detector sha256 under out/cache
    known_fpir: float = 0.01  # share of calibration strangers named at ``known``
    unknown_fpir: float = 0.05  # ... that are not ``unknown`` (named or uncertain)
    strangers: int = 0  # lfw_few people used, both halves (0: all 5,326)
    teacher: bool = True  # SFace side by side
    teacher_strangers: int = 1000  # stranger photos per half the teacher embeds (0: all)
    celeba_people: int = 500  # CelebA eval identities used, of 1,000 (0: none)
    celeba_calib_people: int = 0  # the other CelebA eval identities (after ``celeba_people``) that calibrate too
    celeba_gallery: int = 50  # people per CelebA gallery (the enrolled half is split into galleries this size)
    lfw_people: int = 0  # LFW eval and calib people used, each (0: all; tests use a few, at least 20)
    lfw_photos: int = 0  # photos per LFW person at most (0: all; tests only)
    track_repeats: int = 2  # pseudo-tracks per enrolled / non-enrolled LFW eval person
    stranger_tracks: int = 120  # pseudo-tracks of held-out strangers
    teacher_tracks: int = 60  # of all tracks, how many the teacher runs (seeded; 0: none)
    threads: int = 1  # onnxruntime threads per model
    seed: int = 0  # subsampling seed (the splits have their own fixed seeds)
    update_model: bool = True  # write the thresholds into the recognizer folder's model.json and card
    run_config: str = ""  # the run config file (set by --config)
    track: TrackConfig = dataclasses.field(default_factory=TrackConfig)


# ------------------------------------------------------------------------------------------------- models


def teacher_folder(out: Path, sface: Path) -> Path:
    """A model folder with SFace in fp32 (the replica of ``sface``), made once; thresholds set by the caller."""
    from training.compress.export import export_onnx
    from training.recognizer.ship import manifest
    from training.recognizer.teacher import normalize_input, sface_teacher

    folder = out / "teacher"
    onnx_path = folder / "sface_fp32.onnx"
    if not (folder / "model.json").exists():
        example = normalize_input(np.random.default_rng(0).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8))
        export_onnx(sface_teacher(sface), onnx_path, example, "input", "embedding")
        m = manifest(onnx_path, {"known": 0.5, "unknown": 0.4}, {"source": f"{sface.name}, re-exported in fp32"})
        (folder / "model.json").write_text(json.dumps(m, indent=2) + "\n")
    return folder


def teacher_check(rec: EmbeddingRecognizer, sface: Path, crops: np.ndarray) -> float:
    """Smallest cosine between the fp32 teacher and the int8bq file on BGR ``crops``."""
    from training.recognizer.teacher import OnnxTeacher

    a = rec.embed(list(crops))
    b = OnnxTeacher(sface)(np.ascontiguousarray(crops[..., ::-1]))
    return float(((a * b).sum(1) / np.linalg.norm(b, axis=1)).min())


def provisional(rec: EmbeddingRecognizer) -> dict[str, float]:
    """The thresholds before calibration: those ``ship.py`` set (kept as ``thresholds.provisional`` once this
    command has replaced them, so a second run compares against the same ones), else the folder's own."""
    prov = rec.manifest.output["thresholds"].get("provisional")
    if isinstance(prov, dict) and {"known", "unknown"} <= set(prov):
        return {"known": float(prov["known"]), "unknown": float(prov["unknown"])}
    return {"known": rec.t_known, "unknown": rec.t_unknown}


# ------------------------------------------------------------------------------------------------- photos


@dataclass
class Data:
    """Crops of every set and how they are used."""

    lfw: Faces
    lfw_set: CropSet  # the LFW crops with the meta ``evaluate`` wants
    strangers: Faces
    stranger_half: np.ndarray  # (N,) 0 calibration half, 1 held-out half, per crop
    celeba: Faces | None
    celeba_calib: Faces | None  # CelebA strangers that calibrate (low-resolution, in-the-wild): not reported on


def load_data(cfg: CalibConfig, det: FaceDetector, size: tuple[int, int]) -> tuple[Data, dict[str, Any]]:
    """Crops of the LFW eval and calib people, the strangers and the CelebA eval identities; and their counts."""
    shared, cache = REPO / cfg.shared, (REPO / cfg.out / "cache") if cfg.cache else None
    people = lfw_people(shared / "data/identity/lfw")
    split = split_people(list(people))
    keep = {s: sorted(p for p in people if split[p] == s) for s in ("eval", "calib")}
    if cfg.lfw_people:
        keep = {s: v[:cfg.lfw_people] for s, v in keep.items()}
    items = [(p, f) for s in ("eval", "calib") for p in keep[s] for f in people[p][:cfg.lfw_photos or None]]
    lfw = cached_faces(det, items, size, "lfw", cache)
    meta = {"source": ["lfw"] * len(lfw), "person": lfw.person.tolist(),
            "split": [split[p] for p in lfw.person.tolist()], "path": lfw.path.tolist()}
    strangers_all = lfw_people(shared / "data/identity/lfw_few")
    names = [str(n) for n in np.random.default_rng(STRANGER_SEED).permutation(sorted(strangers_all))]
    names = names[:cfg.strangers] if cfg.strangers else names
    half = {n: int(i >= len(names) // 2) for i, n in enumerate(names)}
    strangers = cached_faces(det, [(n, f) for n in sorted(names) for f in strangers_all[n]], size, "lfw_few", cache)
    celeba = celeba_faces(cfg, det, size, cache)
    celeba_calib = celeba_faces(cfg, det, size, cache, calib=True)
    counts = {"lfw": {"people": {s: len(v) for s, v in keep.items()}, "photos": len(items), "no_face": lfw.missed},
              "strangers": {"people": {"calibration": sum(h == 0 for h in half.values()),
                                       "held_out": sum(h == 1 for h in half.values())},
                            "photos": len(strangers) + strangers.missed, "no_face": strangers.missed},
              "celeba": None if celeba is None else {"people": len(set(celeba.person.tolist())),
                                                     "photos": len(celeba) + celeba.missed, "no_face": celeba.missed},
              "celeba_calib": None if celeba_calib is None else {
                  "people": len(set(celeba_calib.person.tolist())),
                  "photos": len(celeba_calib) + celeba_calib.missed, "no_face": celeba_calib.missed}}
    data = Data(lfw, CropSet(lfw.crops, meta), strangers, np.array([half[p] for p in strangers.person.tolist()]),
                celeba, celeba_calib)
    return data, counts


def celeba_faces(cfg: CalibConfig, det: FaceDetector, size: tuple[int, int], cache: Path | None,
                 calib: bool = False) -> Faces | None:
    """Crops of ``celeba_people`` seeded CelebA eval identities (``calib``: of the next ``celeba_calib_people``),
    or None when CelebA is not staged or not wanted."""
    folder, ids = REPO / cfg.celeba, REPO / cfg.shared / "data/identity/celeba_first10k_identity.txt"
    n, part = (cfg.celeba_calib_people, slice(cfg.celeba_people, cfg.celeba_people + cfg.celeba_calib_people)) \
        if calib else (cfg.celeba_people, slice(0, cfg.celeba_people))
    if not cfg.celeba or not n or not folder.is_dir() or not ids.exists():
        return None
    return cached_faces(det, celeba_eval_photos(ids, folder, part, cfg.seed), size,
                        "celeba_calib" if calib else "celeba", cache)


# --------------------------------------------------------------------------------------------- protocols


def enrolled_split(people: dict[str, list[int]], enroll_all: bool, seed: int) -> tuple[dict[str, list[int]], ...]:
    """(gallery, genuine probes, impostor probes) crop indices per person.

    ``enroll_all``: every person with more than ``evaluate.N_ENROLL`` photos is enrolled with that many (the calib
    gallery); else half the people with 2+ photos (seeded) with up to ``N_ENROLL``, keeping one to probe. Probes
    are capped at ``evaluate.MAX_PROBES`` per person.
    """
    rng = np.random.default_rng(seed)
    multi = sorted(p for p, v in people.items() if len(v) > (ev.N_ENROLL if enroll_all else 1))
    enrolled = set(multi) if enroll_all else set(rng.permutation(multi)[:len(multi) // 2].tolist())
    gal, gen, imp = {}, {}, {}
    for p in sorted(people):
        imgs = [int(i) for i in rng.permutation(people[p])]
        if p in enrolled:
            k = min(ev.N_ENROLL, len(imgs) - 1)
            gal[p], gen[p] = imgs[:k], imgs[k:k + ev.MAX_PROBES]
        else:
            imp[p] = imgs[:ev.MAX_PROBES]
    return gal, gen, imp


def flat(d: dict[str, list[int]]) -> tuple[list[int], list[str]]:
    """Indices and their person names of a {person: indices} dict."""
    idx = [i for v in d.values() for i in v]
    return idx, [p for p, v in d.items() for _ in v]


def eval_protocol(cs: CropSet) -> tuple[dict[str, list[int]], dict[str, list[int]], dict[str, list[int]], np.ndarray]:
    """The LFW eval people as ``evaluate`` defines them: gallery, genuine probes, impostor probes, pairs."""
    people = ev.people_of("eval", cs)
    gal, gal_lab, probes, probe_lab = ev.gallery_split(people, ev.GALLERY_SEED)
    names = sorted(people)
    g: dict[str, list[int]] = {}
    gen: dict[str, list[int]] = {}
    imp: dict[str, list[int]] = {}
    for i, k in zip(gal, gal_lab, strict=True):
        g.setdefault(names[k], []).append(int(i))
    for i, k in zip(probes, probe_lab, strict=True):
        (gen.setdefault(names[k], []) if k >= 0 else imp.setdefault(cs.meta["person"][i], [])).append(int(i))
    return g, gen, imp, ev.make_pairs(people, np.random.default_rng(ev.PAIR_SEED))


# ---------------------------------------------------------------------------------------------- scoring


def score_model(rec: EmbeddingRecognizer, data: Data, stranger_idx: dict[int, np.ndarray], cfg: CalibConfig,
                desc: str) -> dict[str, Any]:
    """Embeddings of what the protocols use and every OpenSet of the model (see the module docstring)."""
    lfw = data.lfw_set
    calib_people = ev.people_of("calib", lfw)
    cal_gal, cal_gen, _ = enrolled_split(calib_people, True, ev.GALLERY_SEED)
    e_gal, e_gen, e_imp, pairs = eval_protocol(lfw)
    used = sorted({*flat(cal_gal)[0], *flat(cal_gen)[0], *flat(e_gal)[0], *flat(e_gen)[0], *flat(e_imp)[0],
                   *pairs[:, 1].tolist(), *pairs[:, 2].tolist()})
    lfw_emb = embed(rec, data.lfw.crops, np.array(used, np.int64), desc=f"{desc} lfw")
    s_idx = np.concatenate([stranger_idx[0], stranger_idx[1]])
    s_emb = embed(rec, data.strangers.crops, s_idx, desc=f"{desc} strangers")
    sha, dim = str(rec.manifest.data["sha256"]), rec.dim

    def gallery(d: dict[str, list[int]], emb: np.ndarray) -> Any:
        idx, names = flat(d)
        return enroll(sha, dim, emb[idx], names)

    strangers = {"strangers_calib": s_emb[stranger_idx[0]], "strangers_heldout": s_emb[stranger_idx[1]]}
    gi, gn = flat(cal_gen)
    out: dict[str, Any] = {"calib": OpenSet.score(gallery(cal_gal, lfw_emb), lfw_emb[gi], gn, strangers)}
    gi, gn = flat(e_gen)
    out["eval"] = OpenSet.score(gallery(e_gal, lfw_emb), lfw_emb[gi], gn,
                                {"eval_people": lfw_emb[flat(e_imp)[0]],
                                 "strangers_heldout": strangers["strangers_heldout"]})
    out["verification"] = ev.verification(lfw_emb, pairs)
    out["sizes"] = gallery_sizes(cal_gal, lfw_emb, strangers["strangers_heldout"], sha, dim, cfg.seed)
    if data.celeba is not None:
        out.update(celeba_sets(rec, data.celeba, sha, dim, cfg.celeba_gallery, desc))
    if data.celeba_calib is not None:
        out["celeba_calib"] = celeba_sets(rec, data.celeba_calib, sha, dim, cfg.celeba_gallery, f"{desc} calib",
                                          verification=False)["celeba"]
    return out


def gallery_sizes(cal_gal: dict[str, list[int]], emb: np.ndarray, impostors: np.ndarray, sha: str, dim: int,
                  seed: int) -> dict[int, np.ndarray]:
    """Best scores of the impostors against seeded calib galleries of 5, 10, 20 and all people."""
    order = [str(p) for p in np.random.default_rng(seed).permutation(sorted(cal_gal))]
    out = {}
    for n in sorted({min(n, len(order)) for n in (5, 10, 20, len(order))}):
        idx, names = flat({p: cal_gal[p] for p in order[:n]})
        out[n] = enroll(sha, dim, emb[idx], names).match(impostors)[1]
    return out


def celeba_sets(rec: EmbeddingRecognizer, faces: Faces, sha: str, dim: int, per_gallery: int,
                desc: str, verification: bool = True) -> dict[str, Any]:
    """CelebA eval identities: the open set (the enrolled people split into disjoint galleries of about
    ``per_gallery``, as large as the LFW eval gallery; every gallery against every non-enrolled person) and,
    with ``verification``, 10-fold verification."""
    people = faces.people()
    gal, gen, imp = enrolled_split(people, False, ev.GALLERY_SEED)
    used = {*flat(gal)[0], *flat(gen)[0], *flat(imp)[0]}
    if verification:
        multi = sorted(p for p, v in people.items() if len(v) > 1)  # every fold needs same-person pairs
        ordered = {str(p): people[str(p)] for p in np.random.default_rng(ev.PAIR_SEED).permutation(multi)}
        pairs = ev.make_pairs(ordered, np.random.default_rng(ev.PAIR_SEED))
        used |= {*pairs[:, 1].tolist(), *pairs[:, 2].tolist()}
    emb = embed(rec, faces.crops, np.array(sorted(used), np.int64), desc=f"{desc} celeba")
    impostors = {"celeba_people": emb[flat(imp)[0]]}
    sets = []
    for chunk in np.array_split(np.array(sorted(gal)), max(1, round(len(gal) / per_gallery))):
        gidx, gnames = flat({str(p): gal[str(p)] for p in chunk})
        gi, gn = flat({str(p): gen[str(p)] for p in chunk})
        sets.append(OpenSet.score(enroll(sha, dim, emb[gidx], gnames), emb[gi], gn, impostors))
    out: dict[str, Any] = {"celeba": OpenSet.pooled(sets)}
    if verification:
        out["celeba_verification"] = ev.verification(emb, pairs)
    return out


def population_thresholds(sets: dict[str, Any], cfg: CalibConfig) -> dict[str, dict[str, float]]:
    """``known`` / ``unknown`` per calibration population: the lfw_few strangers' best scores against the calib
    gallery and, with CelebA calibration people, theirs against their own galleries (the shipped threshold is
    the higher: web portraits and low-resolution in-the-wild photos both held to the target)."""
    pops = {"lfw_few": sets["calib"].impostors["strangers_calib"]}
    if "celeba_calib" in sets:
        pops["celeba"] = sets["celeba_calib"].impostors["celeba_people"]
    return {k: {"known": threshold_at(s, cfg.known_fpir), "unknown": threshold_at(s, cfg.unknown_fpir),
                "impostor_probes": len(s)} for k, s in pops.items()}


def figures(sets: dict[str, Any], thr: dict[str, float]) -> dict[str, Any]:
    """Every figure of one model at one pair of thresholds."""
    k, u = thr["known"], thr["unknown"]
    out: dict[str, Any] = {"calib_gallery": sets["calib"].at_thresholds(k, u),
                           "eval_gallery": sets["eval"].at_thresholds(k, u),
                           "gallery_size_fpir_heldout": {str(n): rate(s, k) for n, s in sets["sizes"].items()}}
    if "celeba" in sets:
        out["celeba"] = sets["celeba"].at_thresholds(k, u)
    return out


def fixed_figures(sets: dict[str, Any]) -> dict[str, Any]:
    """Figures that do not depend on the thresholds: DIR at FPIR 1 % / 5 %, verification, probe counts."""
    out = {"eval_dir_vs_eval_people": sets["eval"].dir_at_fpir("eval_people"),
           "eval_dir_vs_strangers": sets["eval"].dir_at_fpir("strangers_heldout"),
           "verification": sets["verification"], "counts": {"calib": sets["calib"].counts(),
                                                            "eval": sets["eval"].counts()}}
    if "celeba" in sets:
        out.update(celeba_dir=sets["celeba"].dir_at_fpir("celeba_people"),
                   celeba_verification=sets["celeba_verification"],
                   celeba_threshold_for_fpir_1pct=threshold_at(sets["celeba"].impostors["celeba_people"], 0.01))
        out["counts"]["celeba"] = sets["celeba"].counts()
    return out


# ----------------------------------------------------------------------------------------------- tracks


def track_specs(data: Data, cfg: CalibConfig) -> list[TrackSpec]:
    """Pseudo-tracks: enrolled eval people (photos not in the gallery), eval people not enrolled, strangers."""
    import cv2

    e_gal, e_gen, e_imp, _ = eval_protocol(data.lfw_set)
    rng = np.random.default_rng(cfg.seed + 1)

    def spec(faces: Faces, person: str, idx: list[int], enrolled: bool, kind: str) -> TrackSpec:
        pick = [int(i) for i in rng.permutation(idx)[:-(-cfg.track.frames // cfg.track.frames_per_photo)]]
        photos = [np.asarray(cv2.imread(str(faces.path[i]))) for i in pick]
        return TrackSpec(person, enrolled, kind, photos, [float(faces.side[i]) for i in pick])

    specs = [spec(data.lfw, p, v, True, "genuine") for p, v in e_gen.items() for _ in range(cfg.track_repeats)]
    specs += [spec(data.lfw, p, v, False, "eval_people") for p, v in e_imp.items() for _ in range(cfg.track_repeats)]
    held = data.strangers.people()
    names = [p for p in sorted(held) if data.stranger_half[held[p][0]] == 1]
    for p in rng.permutation(names)[:cfg.stranger_tracks]:
        specs.append(spec(data.strangers, str(p), held[str(p)], False, "strangers"))
    return specs


def tracks(data: Data, det: FaceDetector, recs: dict[str, EmbeddingRecognizer], before: dict[str, float],
           cfg: CalibConfig) -> dict[str, Any]:
    """Track figures of each recognizer at its thresholds (already set), and of the student at ``before``."""
    specs = track_specs(data, cfg)
    e_gal, _, _, _ = eval_protocol(data.lfw_set)
    idx, names = flat(e_gal)
    for rec in recs.values():
        rec.gallery = enroll(str(rec.manifest.data["sha256"]), rec.dim,
                             embed(rec, data.lfw.crops, np.array(idx))[idx], names)
    old = copy.copy(recs["student"])
    old.t_known, old.t_unknown = before["known"], before["unknown"]
    passes = {"student_before": old, **recs}
    subsets = {"teacher": sorted(np.random.default_rng(cfg.seed + 2).permutation(len(specs))[:cfg.teacher_tracks]
                                 .tolist())}
    return run_tracks(specs, det, passes, cfg.track, subsets)


# ------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from training.recognizer.calibrate_report import write_report

    cfg, command = parse_run_config(CalibConfig, CMD, __doc__, argv)
    t0 = time.time()
    out = REPO / cfg.out
    out.mkdir(parents=True, exist_ok=True)
    sface = REPO / cfg.shared / "models/anchors/face_recognition_sface_2021dec_int8bq_ort.onnx"
    # 1. models: detector, recognizer (thresholds before), teacher folder
    det = FaceDetector(REPO / cfg.detector, threads=cfg.threads)
    recs = {"student": EmbeddingRecognizer(REPO / cfg.recognizer, threads=cfg.threads)}
    before = provisional(recs["student"])
    if cfg.teacher:
        recs["teacher"] = EmbeddingRecognizer(teacher_folder(out, sface), threads=cfg.threads)
    # 2. photos -> crops
    data, counts = load_data(cfg, det, recs["student"].input_size)
    rng = np.random.default_rng(cfg.seed)
    halves = {h: np.flatnonzero(data.stranger_half == h) for h in (0, 1)}
    # 3-4. embeddings, open sets, calibration per model
    r: dict[str, Any] = {"command": command, "config": dataclasses.asdict(cfg), "data": counts,
                         "detector": {"folder": cfg.detector, "sha256": sha256_file(det.manifest.onnx_path)},
                         "recognizer": {"folder": cfg.recognizer, "sha256": recs["student"].manifest.data["sha256"]},
                         "targets": {"known_fpir": cfg.known_fpir, "unknown_fpir": cfg.unknown_fpir}, "models": {}}
    curves: dict[str, Any] = {}
    for name, rec in recs.items():
        idx = halves if name == "student" or not cfg.teacher_strangers else \
            {h: np.sort(rng.permutation(v)[:cfg.teacher_strangers]) for h, v in halves.items()}
        sets = score_model(rec, data, idx, cfg, name)
        pops = population_thresholds(sets, cfg)
        thr = {k: max(p[k] for p in pops.values()) for k in ("known", "unknown")}
        m: dict[str, Any] = {"thresholds": thr, "thresholds_by_population": pops, "after": figures(sets, thr),
                             **fixed_figures(sets),
                             "strangers_embedded": {"calibration": len(idx[0]), "held_out": len(idx[1])}}
        if name == "student":
            m["before"] = figures(sets, before)
            m["thresholds_before"] = before
        else:
            m["check_vs_int8bq_file_min_cosine"] = teacher_check(rec, sface, data.lfw.crops[:8])
        rec.t_known, rec.t_unknown = thr["known"], thr["unknown"]
        r["models"][name] = m
        curves[name] = sets
    # 6. tracks at the new thresholds (and the student at the old ones)
    r["tracks"] = tracks(data, det, recs, before, cfg)
    # 7. JSON, PNG, the model folder
    r["seconds"] = round(time.time() - t0)
    print(write_report(r, curves, out, REPO / cfg.recognizer if cfg.update_model else None), flush=True)
    return r


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
