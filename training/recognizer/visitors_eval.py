"""Visitors on real faces: how many visitor ids each person gets (fragmentation), how many people share one
(merges), and what naming a visitor does to later recognition; the visitor threshold calibrated on other people.

    python -m training.fetched --set celeba                     # CelebA aligned into runs/data/celeba (once)
    python -m training.recognizer.visitors_eval                 # ~15 min on 2 shared cores (visits cached after)
    python -m training.recognizer.visitors_eval --clips         # + the shared clips through the daemon's pipeline

1. Models: the shipped detector and recognizer, through the runtime classes (``edgecam.detect.FaceDetector``,
   ``edgecam.recognize.EmbeddingRecognizer``).
2. People, split so that the threshold is never set on the people reported:
   - calibration: the LFW ``calib`` people (``data.split_people``), and the CelebA ``eval`` identities and the
     half of the ``identity/lfw_few`` strangers that ``calibrate.py`` set the recognizer's thresholds on (CelebA:
     ``data.celeba_eval_photos``; the recognizer trained on the CelebA ``train`` identities);
   - report: the LFW ``eval`` people, and the other CelebA eval identities and half of the strangers, which
     ``calibrate.py`` reports on.
   Every photo of a person is one visit (LFW people: at most ``max_visits`` seeded photos); a stranger visits
   once. Visits are replayed in one seeded order (people come and go interleaved).
3. A visit is a person walking up to the camera in one photo: ``frames`` frames, the face growing from
   ``start_px`` to the photo's own size (at most ``end_px``) on a grey 320x240 frame, the first two blurred and
   JPEG-compressed; each frame through the detector, the face nearest the centre aligned
   (``edgecam.crops.align``), the quality gate at the daemon's defaults, and the good crops embedded. A visit
   with fewer than ``min_crops`` good crops gets no visitor (the daemon's rule).
4. Calibration: the calibration visits through ``edgecam.visitors.VisitorStore`` (the runtime store, a file per
   threshold) at every threshold of the sweep; the chosen threshold is the lowest whose merges stay at most
   ``merge_target`` of the visitors.
5. Report: the report visits at the chosen threshold (and the sweep, for the plot): visitor ids per person
   with 2+ visits (fragmentation), repeat visits given the id the person already had (re-identified),
   visitors holding two or more people (merges), first visits given someone else's id (false repeats).
6. Naming: the first half of the report visits, then ``named`` people with visits in both halves are named
   (``edgecam.visitors.name_visitor``: the visitor holding most of their visits goes into the gallery), then the
   second half: each visit recognized as the daemon does (per-crop gallery match, the recognizer's thresholds,
   the tracker's vote), unknown ones going to the visitor store. Compared with the same second half unnamed.
7. Clips (``--clips``): every clip of ``../shared/data/video`` replayed in turn through ``edgecam.pipeline``
   with visitors on (one store, as one camera over time): tracks, unknown tracks, visitors, visits, and a sheet
   of each visitor's best crop.
8. ``visitors.json`` and ``visitors.png`` (fragmentation and merges against the threshold) under ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from edgecam.config import CropsConfig
from edgecam.crops import QualityGate, align
from edgecam.detect import FaceDetector
from edgecam.recognize import EmbeddingRecognizer, Gallery
from edgecam.track import Vote, vote
from edgecam.visitors import VisitorStore, name_visitor
from training.recognizer.data import celeba_eval_photos, lfw_people, split_people
from training.recognizer.stills import central_index, photo_face

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
STRANGER_SEED = 5326  # the stranger halves of training.recognizer.calibrate (half 0 set the recognizer's thresholds)
CMD = "python -m training.recognizer.visitors_eval"


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run (flags override these)."""

    shared: str = "../shared"  # the shared data
    celeba: str = "runs/data/celeba"  # staged CelebA images ("" or missing: no CelebA people)
    out: str = "runs/recognizer/visitors"  # JSON, PNG, the visit cache
    detector: str = "face_detector"
    recognizer: str = "face_recognizer"
    max_visits: int = 10  # visits (photos) per LFW person at most
    celeba_people: int = 500  # CelebA eval identities per side (calibrate.yaml's celeba_people, celeba_calib_people)
    strangers: int = 1000  # one-time strangers per side
    frames: int = 5  # frames per visit
    start_px: float = 40.0  # face side in the first frame
    end_px: float = 100.0  # ... in the last (at most the photo's own)
    min_crops: int = 2  # good crops a visit needs for a visitor (visitors.min_crops)
    thresholds: str = "0.40:0.80:0.025"  # the sweep, start:stop:step (stop included)
    merge_target: float = 0.005  # calibration: merges at most this share of the visitors
    named: int = 20  # people named in the naming protocol
    seed: int = 0
    clips: bool = False


@dataclass
class Visits:
    """One side's visits in replay order: who, which kind of person, and the good crops' embeddings."""

    person: np.ndarray  # (V,) str
    kind: np.ndarray  # (V,) str: lfw | celeba | stranger
    path: np.ndarray  # (V,) str
    emb: np.ndarray  # (E, D) unit embeddings of the good crops of all visits
    start: np.ndarray  # (V + 1,) visit v's embeddings are emb[start[v]:start[v + 1]]
    no_face: int  # photos in which the detector found no face (not visits)

    def __len__(self) -> int:
        return len(self.person)

    def of(self, v: int) -> np.ndarray:
        return self.emb[self.start[v]:self.start[v + 1]]

    def crops(self) -> np.ndarray:
        return np.diff(self.start)


# ------------------------------------------------------------------------------------------ 2. people


def people(cfg: EvalConfig) -> dict[str, list[tuple[str, str, Path]]]:
    """{side: [(person, kind, photo), ...]} for ``calibration`` and ``report`` (see the module docstring)."""
    rng = np.random.default_rng(cfg.seed)
    shared = REPO / cfg.shared
    lfw = lfw_people(shared / "data/identity/lfw")
    split = split_people(list(lfw))
    out: dict[str, list[tuple[str, str, Path]]] = {"calibration": [], "report": []}
    for side, s in (("calibration", "calib"), ("report", "eval")):
        for p in sorted(n for n in lfw if split[n] == s):
            photos = lfw[p] if len(lfw[p]) <= cfg.max_visits else [lfw[p][i] for i in sorted(
                rng.choice(len(lfw[p]), cfg.max_visits, replace=False))]
            out[side] += [(f"lfw:{p}", "lfw", f) for f in photos]
    n = cfg.celeba_people
    out["calibration"] += celeba_items(cfg, slice(n, 2 * n))
    out["report"] += celeba_items(cfg, slice(0, n))
    few = lfw_people(shared / "data/identity/lfw_few")
    names = [str(n) for n in np.random.default_rng(STRANGER_SEED).permutation(sorted(few))]
    halves = {"calibration": names[:len(names) // 2], "report": names[len(names) // 2:]}
    for side, half in halves.items():
        for n in sorted(rng.permutation(half)[:cfg.strangers].tolist()):
            out[side].append((f"few:{n}", "stranger", few[n][0]))
    return out


def celeba_items(cfg: EvalConfig, part: slice) -> list[tuple[str, str, Path]]:
    """Every staged photo of a ``part`` of the CelebA eval identities, in ``calibrate.py``'s order (seed 0)."""
    folder, ids = REPO / cfg.celeba, REPO / cfg.shared / "data/identity/celeba_first10k_identity.txt"
    if not cfg.celeba or not cfg.celeba_people or not folder.is_dir() or not ids.exists():
        return []
    return [(f"celeba:{who}", "celeba", path) for who, path in celeba_eval_photos(ids, folder, part)]


# ------------------------------------------------------------------------------------------ 3. visits


def visit_frames(photo: np.ndarray, side: float, cfg: EvalConfig) -> list[np.ndarray]:
    """A person walking up in one photo: the face growing from ``start_px`` to ``min(side, end_px)``."""
    end = min(side, cfg.end_px)
    start = min(cfg.start_px, end)
    px = start * (end / start) ** (np.arange(cfg.frames) / max(cfg.frames - 1, 1))
    frames = []
    for k, p in enumerate(px):
        f = min(1.0, p / max(side, 1.0))
        img = cv2.resize(photo, (max(1, round(photo.shape[1] * f)), max(1, round(photo.shape[0] * f))),
                         interpolation=cv2.INTER_AREA) if f < 1 else photo
        if k < 2:  # far and moving: blurred and compressed
            img = cv2.GaussianBlur(img, (0, 0), 1.0 - 0.5 * k)
            img = np.asarray(cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 60])[1],
                                          cv2.IMREAD_COLOR))
        h, w = max(240, img.shape[0]), max(320, img.shape[1])
        frame = np.full((h, w, 3), 128, np.uint8)
        y, x = (h - img.shape[0]) // 2, (w - img.shape[1]) // 2
        frame[y:y + img.shape[0], x:x + img.shape[1]] = img
        frames.append(frame)
    return frames


def visit_crops(det: FaceDetector, gate: QualityGate, size: tuple[int, int], photo: np.ndarray,
                cfg: EvalConfig) -> list[np.ndarray] | None:
    """The good crops of one visit (None: no face in the photo)."""
    found = photo_face(det, photo)
    if found is None:
        return None
    box = found[0]
    side = float(np.sqrt(max(box[2] - box[0], 1.0) * max(box[3] - box[1], 1.0)))
    crops = []
    for frame in visit_frames(photo, side, cfg):
        boxes, landmarks = det(frame)
        if len(boxes) == 0:
            continue
        k = central_index(boxes, frame.shape)
        crop = align(frame, landmarks[k], size)
        if gate(crop, boxes[k], landmarks[k]).ok:
            crops.append(crop)
    return crops


def make_visits(items: list[tuple[str, str, Path]], det: FaceDetector, rec: EmbeddingRecognizer, cfg: EvalConfig,
                name: str) -> Visits:
    """Every item's visit embeddings, in a seeded replay order, through a cache keyed by models, items, params."""
    params = (cfg.frames, cfg.start_px, cfg.end_px, cfg.seed)
    key = hashlib.sha1("\n".join([str(det.manifest.data["sha256"]), rec.model_sha, str(params),
                                  *(f"{p}\t{k}\t{f}" for p, k, f in items)]).encode()).hexdigest()[:12]
    cache = REPO / cfg.out / "cache" / f"{name}-{key}.npz"
    if cache.exists():
        z = np.load(cache)
        return Visits(z["person"], z["kind"], z["path"], z["emb"], z["start"], int(z["no_face"]))
    gate = QualityGate.from_config(CropsConfig())
    order = np.random.default_rng(cfg.seed + 1).permutation(len(items))
    person, kind, path, embs, start, no_face = [], [], [], [], [0], 0
    for i in tqdm(order, desc=f"{name} visits", mininterval=10):
        p, k, f = items[i]
        photo = cv2.imread(str(f))
        crops = visit_crops(det, gate, rec.input_size, photo, cfg) if photo is not None else None
        if crops is None:
            no_face += 1
            continue
        e = rec.embed(crops) if crops else np.zeros((0, rec.dim), np.float32)
        person.append(p)
        kind.append(k)
        path.append(str(f))
        embs.append(e)
        start.append(start[-1] + len(e))
    v = Visits(np.array(person, dtype=str), np.array(kind, dtype=str), np.array(path, dtype=str),
               np.concatenate(embs).astype(np.float32), np.array(start, np.int64), no_face)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, person=v.person, kind=v.kind, path=v.path, emb=v.emb, start=v.start, no_face=np.array(no_face))
    tmp.replace(cache)
    return v


# ------------------------------------------------------------------------------------------ 4-5. replay, figures


def open_store(folder: Path, rec: EmbeddingRecognizer, threshold: float) -> VisitorStore:
    """A fresh runtime store, unbounded (every visitor stays: the hardest case for merges), no fsync."""
    return VisitorStore(folder / f"visitors-{threshold:.4f}-{time.monotonic_ns()}.db", rec.model_sha, rec.dim,
                        threshold, max_visitors=10**7, max_bytes=1 << 40, retention_days=None, fsync=False)


def replay(visits: Visits, store: VisitorStore, min_crops: int, which: range | None = None,
           assigned: np.ndarray | None = None) -> np.ndarray:
    """Record the visits (``which``: a range of them, default all) in order; (V,) visitor number per visit, 0 for
    none (too few good crops)."""
    assigned = np.zeros(len(visits), np.int64) if assigned is None else assigned
    for v in which if which is not None else range(len(visits)):
        if len(visits.of(v)) >= min_crops:
            assigned[v] = store.record(visits.of(v), "eval", now=float(v)).visitor.number
    return assigned


def figures(visits: Visits, assigned: np.ndarray) -> dict[str, Any]:
    """Fragmentation, re-identification and merges of one replay (see the module docstring)."""
    rec = np.flatnonzero(assigned > 0).tolist()
    by_person: dict[str, list[int]] = {}
    for v in rec:
        by_person.setdefault(str(visits.person[v]), []).append(int(assigned[v]))
    by_visitor: dict[int, set[str]] = {}
    for v in rec:
        by_visitor.setdefault(int(assigned[v]), set()).add(str(visits.person[v]))
    repeat = {p: ids for p, ids in by_person.items() if len(ids) >= 2}
    ids_per, one_id, later = fragmentation(repeat)
    kind_of = dict(zip(visits.person.tolist(), visits.kind.tolist(), strict=True))
    firsts = [(int(v), str(visits.person[v])) for v in rec]
    seen_people: set[str] = set()
    seen_ids: set[int] = set()
    false_repeat = 0
    for v, p in firsts:
        if p not in seen_people and int(assigned[v]) in seen_ids:
            false_repeat += 1
        seen_people.add(p)
        seen_ids.add(int(assigned[v]))
    merged = [k for k, ps in by_visitor.items() if len(ps) >= 2]
    merged_people = {p for k in merged for p in by_visitor[k]}
    return {
        "visits": len(visits), "visits_recorded": len(rec), "visits_too_few_crops": int(len(visits) - len(rec)),
        "people": len(by_person), "people_repeat": len(repeat), "visitors": len(by_visitor),
        "ids_per_repeat_person": ids_per, "repeat_people_one_id": one_id, "repeat_visits_reidentified": later,
        "by_kind": {k: dict(zip(("people_repeat", "ids_per_repeat_person", "repeat_people_one_id",
                                 "repeat_visits_reidentified"), (len(sub), *fragmentation(sub)), strict=True))
                    for k in ("lfw", "celeba") if (sub := {p: i for p, i in repeat.items() if kind_of[p] == k})},
        "merged_visitors": len(merged), "merge_rate": round(len(merged) / max(len(by_visitor), 1), 5),
        "people_in_merges": len(merged_people),
        "first_visits_given_another_id": false_repeat,
        "false_repeat_rate": round(false_repeat / max(len(by_person), 1), 5),
    }


def fragmentation(repeat: dict[str, list[int]]) -> tuple[float | None, float | None, float | None]:
    """Of people with 2+ recorded visits ({person: visitor of each visit, in order}): visitor ids per person,
    the share with one id, the share of their 2nd+ visits given an id they already had."""
    if not repeat:
        return None, None, None
    ids = np.array([len(set(i)) for i in repeat.values()])
    later = [i[j] in i[:j] for i in repeat.values() for j in range(1, len(i))]
    return round(float(ids.mean()), 4), round(float((ids == 1).mean()), 4), round(float(np.mean(later)), 4)


def sweep(visits: Visits, rec: EmbeddingRecognizer, thresholds: list[float], cfg: EvalConfig, tmp: Path,
          desc: str) -> dict[float, dict[str, Any]]:
    """``figures`` at every threshold (a fresh store each)."""
    out = {}
    for t in tqdm(thresholds, desc=desc, mininterval=10):
        store = open_store(tmp, rec, t)
        out[t] = figures(visits, replay(visits, store, cfg.min_crops))
        store.close()
    return out


def choose(calib: dict[float, dict[str, Any]], target: float) -> float:
    """The lowest threshold whose calibration merges stay at most ``target`` of the visitors (and at every
    threshold above it)."""
    ok = [t for t in sorted(calib) if all(calib[u]["merge_rate"] <= target for u in calib if u >= t)]
    return ok[0] if ok else max(calib)


# ------------------------------------------------------------------------------------------ 6. naming


def recognize(rec: EmbeddingRecognizer, gallery: Gallery, emb: np.ndarray) -> tuple[str, str]:
    """A visit as the daemon names it: each crop matched to the gallery with the recognizer's thresholds, the
    tracker's vote over them -> (identity, status)."""
    if not gallery.row_names:
        return "unknown", "unknown"
    names, scores = gallery.match(emb)
    votes = []
    for n, s in zip(names, scores, strict=True):
        st = rec.status(float(s))
        votes.append(Vote(n if st != "unknown" else "unknown", st, float(s)))
    identity, status, _ = vote(votes)
    return identity, status


def naming(visits: Visits, rec: EmbeddingRecognizer, threshold: float, cfg: EvalConfig, tmp: Path) -> dict[str, Any]:
    """Name people after the first half of the visits; what happens to the second half, against no naming."""
    half = len(visits) // 2
    ok = np.array([len(visits.of(v)) >= cfg.min_crops for v in range(len(visits))])
    runs = {}
    for named_run in (False, True):
        store = open_store(tmp, rec, threshold)
        assigned = replay(visits, store, cfg.min_crops, range(half))
        first: dict[str, list[int]] = {}
        for v in np.flatnonzero(assigned[:half] > 0).tolist():
            first.setdefault(str(visits.person[v]), []).append(int(assigned[v]))
        later = {str(visits.person[v]) for v in range(half, len(visits)) if ok[v]}
        eligible = sorted(p for p in first if p in later and not p.startswith("few:"))
        chosen = sorted(np.random.default_rng(cfg.seed + 2).permutation(eligible)[:cfg.named].tolist())
        gallery, named = Gallery(rec.model_sha, rec.dim), dict[str, int]()
        for p in chosen:
            top = max(set(first[p]), key=first[p].count)
            if named_run and top not in named.values():
                name_visitor(store, top, p.replace(":", "_"), gallery, None)
                named[p] = top
        outcome = {"named_right": 0, "named_wrong": 0, "uncertain": 0, "unknown_same_visitor": 0,
                   "unknown_other_visitor": 0, "unknown_new_visitor": 0}
        others = {"visits": 0, "named": 0}
        for v in range(half, len(visits)):
            if not ok[v]:
                continue
            p = str(visits.person[v])
            identity, status = recognize(rec, gallery, visits.of(v))
            if p in chosen:
                key = ("named_right" if identity == p.replace(":", "_") else "named_wrong") if status == "known" \
                    else "uncertain" if status == "uncertain" else None
                if key is None:
                    sight = store.record(visits.of(v), "eval", now=float(v))
                    mine = first[p]
                    key = "unknown_new_visitor" if sight.new else (
                        "unknown_same_visitor" if sight.visitor.number in mine else "unknown_other_visitor")
                outcome[key] += 1
            else:
                others["visits"] += 1
                others["named"] += status == "known"
                if status == "unknown":
                    store.record(visits.of(v), "eval", now=float(v))
        n = sum(outcome.values())
        runs["named" if named_run else "not_named"] = {
            "people": len(chosen), "named": len(named) if named_run else 0, "later_visits": n,
            **{k: round(c / max(n, 1), 4) for k, c in outcome.items()},
            "others_later_visits": others["visits"],
            "others_named_as_someone": round(others["named"] / max(others["visits"], 1), 5),
            "gallery_rows": len(gallery.row_names)}
        store.close()
    return runs


# ------------------------------------------------------------------------------------------ 7. clips


def clips(cfg: EvalConfig, threshold: float, out: Path) -> dict[str, Any]:
    """Every shared clip replayed in turn through the daemon (``edgecam.app.replay``, nobody enrolled, visitors on,
    one state folder: one camera over time); per clip its tracks and the visitors they became, and a sheet of
    every visitor's best crop."""
    import io

    from edgecam.app import replay as replay_clip
    from edgecam.config import parse_config

    videos = sorted(p for p in (REPO / cfg.shared / "data/video").iterdir() if p.suffix in (".mp4", ".gif"))
    state = out / "clips_state"
    for f in state.glob("visitors.db*"):
        f.unlink()
    rows = []
    for video in videos:
        dcfg = parse_config({"camera": {"name": "clips"}, "recognizer": {}, "state_dir": str(state),
                             "visitors": {"enabled": True, "threshold": threshold, "fsync": False}})
        events_file = out / "clips_events.jsonl"
        replay_clip(dcfg, video, events_path=events_file, stdout=io.StringIO())
        ends = [e for e in map(json.loads, events_file.read_text().splitlines()) if e["type"] == "end"]
        seen = [(e["visitor"], e["visits"]) for e in ends if e.get("visitor")]
        rows.append({"clip": video.name, "tracks": len(ends), "unknown_tracks": sum(e["status"] == "unknown"
                                                                                  for e in ends),
                     "visits": len(seen), "new_visitors": sum(n == 1 for _, n in seen),
                     "visitors_seen_before": sorted({v for v, n in seen if n > 1}),
                     "visitor_ids": sorted({v for v, _ in seen}, key=lambda v: int(v.split("-")[1]))})
    store = VisitorStore(state / "visitors.db")
    visitors = store.visitors()
    sheet({v.id: store.crop(v.number) for v in sorted(visitors, key=lambda v: v.number)}, out / "clips_visitors.jpg")
    store.close()
    return {"clips": rows, "visitors": [v.as_dict() for v in visitors], "sheet": str(out / "clips_visitors.jpg")}


def sheet(crops: dict[str, bytes | None], path: Path, cell: int = 128) -> None:
    """The best crop of every visitor, labelled, in rows of 8."""
    tiles = []
    for vid, jpeg in crops.items():
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) if jpeg else None
        tile = np.full((cell + 18, cell, 3), 255, np.uint8)
        if img is not None:
            f = cell / max(img.shape[:2])
            img = cv2.resize(img, (max(1, int(img.shape[1] * f)), max(1, int(img.shape[0] * f))))
            tile[18:18 + img.shape[0], :img.shape[1]] = img
        cv2.putText(tile, vid, (2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(tile)
    if not tiles:
        return
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % 8)
    rows = [np.concatenate(tiles[i:i + 8], 1) for i in range(0, len(tiles), 8)]
    cv2.imwrite(str(path), np.concatenate(rows, 0))


# ------------------------------------------------------------------------------------------ 8. output


def plot(sweeps: dict[str, dict[float, dict[str, Any]]], chosen: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for side, style in (("calibration", "--"), ("report", "-")):
        ts = sorted(sweeps[side])
        a.plot(ts, [sweeps[side][t]["ids_per_repeat_person"] for t in ts], style, label=side)
        b.plot(ts, [100 * sweeps[side][t]["merge_rate"] for t in ts], style, label=side)
    a.set(xlabel="visitor threshold (cosine)", ylabel="visitor ids per repeat person", title="fragmentation")
    b.set(xlabel="visitor threshold (cosine)", ylabel="% of visitors holding 2+ people", title="merges")
    b.axhline(1.0, color="grey", lw=0.8)
    for ax in (a, b):
        ax.axvline(chosen, color="k", lw=0.8, ls=":")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv: list[str] | None) -> EvalConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    for f, default in asdict(EvalConfig()).items():
        if isinstance(default, bool):
            p.add_argument(f"--{f.replace('_', '-')}", action="store_true", help=f"(default {default})")
        else:
            p.add_argument(f"--{f.replace('_', '-')}", type=type(default), default=default,
                           help=f"(default {default})")
    return EvalConfig(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse(argv)
    out = REPO / cfg.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # 1. models
    det = FaceDetector(cfg.detector)
    rec = EmbeddingRecognizer(cfg.recognizer)
    # 2-3. people and their visits
    items = people(cfg)
    sides = {side: make_visits(items[side], det, rec, cfg, side) for side in ("calibration", "report")}
    a, b, step = (float(x) for x in cfg.thresholds.split(":"))
    thresholds = [round(float(t), 4) for t in np.arange(a, b + step / 2, step)]
    with tempfile.TemporaryDirectory(prefix="visitors-eval-") as tmp:
        # 4. calibration sweep -> threshold
        sweeps = {side: sweep(v, rec, thresholds, cfg, Path(tmp), side) for side, v in sides.items()}
        chosen = choose(sweeps["calibration"], cfg.merge_target)
        # 5-6. report at the chosen threshold; naming
        named = naming(sides["report"], rec, chosen, cfg, Path(tmp))
    result: dict[str, Any] = {
        "command": f"{CMD} {shlex.join(sys.argv[1:] if argv is None else argv)}".strip(),
        "config": asdict(cfg), "models": {"detector": det.manifest.data["sha256"], "recognizer": rec.model_sha,
                                          "recognizer_thresholds": {"known": rec.t_known, "unknown": rec.t_unknown}},
        "sets": {side: {"visits": len(v), "no_face": v.no_face, "people": len(set(v.person.tolist())),
                        "by_kind": {k: int((v.kind == k).sum()) for k in ("lfw", "celeba", "stranger")},
                        "good_crops_per_visit": round(float(v.crops().mean()), 2)} for side, v in sides.items()},
        "threshold": chosen, "calibration": sweeps["calibration"][chosen], "report": sweeps["report"][chosen],
        "naming": named, "sweep": {side: {str(t): f for t, f in s.items()} for side, s in sweeps.items()},
    }
    det.close()
    rec.close()
    # 7. clips
    if cfg.clips:
        result["clips"] = clips(cfg, chosen, out)
    # 8. output
    result["minutes"] = round((time.time() - t0) / 60, 1)
    (out / "visitors.json").write_text(json.dumps(result, indent=1))
    plot(sweeps, chosen, out / "visitors.png")
    summary(result)
    return result


def summary(r: dict[str, Any]) -> None:
    rep, cal = r["report"], r["calibration"]
    print(f"threshold {r['threshold']} (calibration: {cal['merge_rate']:.2%} merges, "
          f"{cal['ids_per_repeat_person']} ids per repeat person)")
    print(f"report: {rep['visits_recorded']} visits of {rep['people']} people -> {rep['visitors']} visitors; "
          f"{rep['people_repeat']} repeat people: {rep['ids_per_repeat_person']} ids each "
          f"({rep['repeat_people_one_id']:.1%} one id), {rep['repeat_visits_reidentified']:.1%} of repeat visits "
          f"re-identified; merges {rep['merged_visitors']} ({rep['merge_rate']:.2%} of visitors)")
    for k, f in rep["by_kind"].items():
        print(f"  {k}: {f['people_repeat']} repeat people, {f['ids_per_repeat_person']} ids each, "
              f"{f['repeat_visits_reidentified']:.1%} of repeat visits re-identified")
    n, n0 = r["naming"]["named"], r["naming"]["not_named"]
    print(f"naming {n['named']} people after half the visits: their {n['later_visits']} later visits "
          f"{n['named_right']:.1%} named right, {n['named_wrong']:.1%} wrong, {n['uncertain']:.1%} uncertain, "
          f"{n['unknown_same_visitor'] + n['unknown_other_visitor'] + n['unknown_new_visitor']:.1%} unknown "
          f"(not named: {n0['unknown_same_visitor']:.1%} came back as their visitor); other people's visits named "
          f"as someone {n['others_named_as_someone']:.2%}")
    for c in r.get("clips", {}).get("clips", []):
        print(f"clip {c['clip']}: {c['tracks']} tracks ({c['unknown_tracks']} unknown), {c['visits']} visits: "
              f"{c['new_visitors']} new visitors, seen before {c['visitors_seen_before']}")


if __name__ == "__main__":
    main()
