"""Real-world evaluation of the face detector, side by side with YuNet and the Haar cascade, in one run.

    python -m training.detector.realeval                      # ~10 min on 2 cores; --help for the subsampling flags
    python -m training.detector.realeval --model runs/detector/new/model   # a candidate model folder

Detectors: ours through the runtime class (``edgecam.detect.FaceDetector`` on ``--model``, with the option
defaults of ``edgecam detect``: what a user gets, multi-scale or other runtime passes included), YuNet int8
(``cv2.FaceDetectorYN``, score >= 0.6, OpenCV Zoo's operating point) and OpenCV's Haar frontal cascade (every
detection). Wrappers come from ``training.detector.evaluate``.

Matching rule (every section): a detection finds a reference face when their IoU >= 0.3, or when the
detection's centre lies inside the reference box and its height is 0.5-2x the reference's (box conventions
differ between detectors; a small box on the nose of a large face does not count). One detection per face,
greedy, best IoU first.

Sections (outputs under ``--out``: ``realeval.json``, ``table.md``, one PNG per section, contact sheets in
``sheets/``, replay events in ``events/``; the report is written by ``realeval_report.py``):

1. **Recall against YuNet on the clips** (``--clips``: every shared mp4 and GIF plus the bundled corridor clip)
   at native resolution, every ``--stride``-th frame. Reference = YuNet faces scoring >= ``--ref-score``;
   per clip: reference faces, found by ours and by Haar, and "extra" detections (matching no YuNet face
   scoring >= ``--extra-score``). Contact sheets: YuNet faces we miss, our extra detections.
2. **Large faces**: LFW eval people (the recognizer's held-out split), ``--lfw-per-person`` images each,
   scaled and placed in a 640x480 frame so the face box is 150 px to the full frame high (grey where the
   photo does not reach); ground truth = YuNet's central face on the original 250x250 photo, mapped through
   the same transform (the shared LFW copy is grey). Recall per face-height bin; contact sheet of the frames
   where we miss the face.
3. **Roll**: WebFaces val images with labelled faces (first ``--roll-limit``) rotated by each of ``--angles``
   (alternating sign per image, canvas grown so nothing is cut); ground truth = the rotated landmarks ->
   convention boxes. Recall at each detector's operating threshold per angle.
4. **Recall by face height** on WebFaces val (upright, ``--val-limit`` images; bins of ``evaluate.HEIGHT_BINS``).
   Not comparable with ``evaluate.py``'s figures (that one matches calibrated boxes at IoU 0.3).
5. **Tracks from replays**: each clip through the daemon pipeline (``edgecam.app.App``: what ``edgecam replay
   VIDEO --events F`` runs, default config with ``detector.model`` = ``--model``), and, side by side, the same
   pipeline with YuNet and with Haar in the detector slot (Haar's landmarks: the template points placed in its
   box). A track (an id with a ``new`` event) is a face when its detections match a YuNet face (YuNet at 1x and
   2x on the detection's neighbourhood, the box widened by its size on each side; score >= ``--label-score``)
   on more than half of the frames it was detected on. Contact sheet per clip and detector: each track's best
   snapshot with the verdict (frames on a YuNet face / detections, best score).
6. **Latency**: median ms per 320x240 frame, single thread, detectors interleaved (``evaluate.latency``).
7. **Turned heads**: CelebA photos (``--celeba``, staged by ``training.fetched``; skipped when absent) of the
   recognizer's CelebA eval identities, which no detector training sees (``scenes --celeba-identities``); YuNet's
   central face on the photo padded by its size (a face filling a photo escapes YuNet) is the truth, scaled to
   60-160 px high in a 640x480 frame. Recall per yaw ratio (``edgecam.crops.yaw``: how far the nose sits from
   the eyes' middle, in eye distances; 0 frontal, >= 0.45 near profile); contact sheet of the turned faces
   (ratio >= 0.3) we miss.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from edgecam.crops import TEMPLATE_112, yaw
from edgecam.detect import nms
from edgecam.track import greedy_match
from training.detector.data import boxes_from_landmarks, iou, read_bgr, read_landmarks, read_split
from training.detector.evaluate import BASELINE_OPERATING, HEIGHT_BINS, Detect, haar, latency, ours, yunet
from training.detector.figures import contact_sheet, crop
from training.detector.pseudo_label import YUNET, yunet_detect
from training.detector.realeval_report import write_report
from training.recognizer.data import celeba_split, lfw_people, split_people

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
CORRIDOR = REPO / "edgecam/data/corridor.mp4"
DETECTORS = ("ours", "YuNet", "Haar")
MATCH_RULE = ("IoU >= 0.3, or the detection's centre inside the reference box with height 0.5-2x the reference's; "
              "one detection per face, greedy by IoU")
LARGE_FRAME = (640, 480)  # w, h of the large-face frames
LARGE_BINS = (150, 200, 250, 300, 350, 400, 481)  # face-box height bins (px) of the large-face test
YAW_BINS = (0, 15, 30, 45, 10_000)  # yaw ratio x 100 bins of the turned-heads test
TURNED_HEIGHT = (60, 160)  # face-box heights (px) the turned-heads test places faces at
GREY = (128, 128, 128)

Boxes = np.ndarray  # (N, 5) x1,y1,x2,y2,score


# ---------------------------------------------------------------------------------------------- matching


def match(ref: np.ndarray, det: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found (K,), matched (N,)) bool masks of reference boxes (K, 4+) and detections (N, 4+) under MATCH_RULE."""
    found, used = np.zeros(len(ref), bool), np.zeros(len(det), bool)
    if len(ref) == 0 or len(det) == 0:
        return found, used
    ref, det = np.asarray(ref, np.float32)[:, :4], np.asarray(det, np.float32)[:, :4]
    m = iou(ref, det)  # (K, N)
    ctr = (det[:, :2] + det[:, 2:]) / 2
    inside = np.all((ctr[None] >= ref[:, None, :2]) & (ctr[None] <= ref[:, None, 2:]), axis=2)
    ratio = (det[None, :, 3] - det[None, :, 1]) / np.maximum(ref[:, None, 3] - ref[:, None, 1], 1e-6)
    ok = (m >= 0.3) | (inside & (ratio >= 0.5) & (ratio <= 2.0))
    for k, n in greedy_match(np.where(ok, 1.0 + m, 0.0), 1.0):
        found[k], used[n] = True, True
    return found, used


def detect_defaults() -> argparse.Namespace:
    """The option defaults of ``edgecam detect`` (score threshold, threads), read from its own parser."""
    from edgecam.cli import build_parser

    return build_parser().parse_args(["detect", "IMAGE"])


def yunet_faces(det: cv2.FaceDetectorYN, bgr: np.ndarray, scales: tuple[float, ...] = (1.0,)) -> Boxes:
    """YuNet boxes (N, 5) at each scale, merged by NMS (IoU 0.4) when there is more than one."""
    d = np.concatenate([yunet_detect(det, bgr, s) for s in scales])
    d = d[nms(d[:, :4], d[:, 12], 0.4)] if len(scales) > 1 and len(d) else d
    return np.hstack([d[:, :4], d[:, 12:13]]).reshape(-1, 5)


def recall(hits: list[np.ndarray] | np.ndarray) -> float | None:
    """Fraction of True in one or more bool arrays; None when empty."""
    h = np.concatenate([np.ravel(x) for x in hits]) if isinstance(hits, list) and hits else np.asarray(hits)
    return round(float(h.mean()), 3) if h.size else None


# ------------------------------------------------------------------------------- 1. recall against YuNet


def read_frames(path: Path, stride: int) -> Iterator[tuple[int, np.ndarray]]:
    """(index, BGR frame) of every ``stride``-th frame of a video or GIF, from frame 0."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FileNotFoundError(f"{path}: not a video OpenCV can read")
    i = 0
    try:
        while True:
            ok = cap.read()[0] if i % stride == 0 else cap.grab()
            if not ok:
                return
            if i % stride == 0:
                yield i, cap.retrieve()[1]
            i += 1
    finally:
        cap.release()


def clip_recall(path: Path, dets: dict[str, Detect], ref_det: cv2.FaceDetectorYN, args: argparse.Namespace,
                sheets: Path) -> dict[str, Any]:
    """Section 1 for one clip: counts per detector and the two contact sheets."""
    found: dict[str, list[np.ndarray]] = {"ours": [], "Haar": []}
    extra = {"ours": 0, "Haar": 0}
    missed, extras, frames = [], [], 0
    for idx, bgr in read_frames(path, args.stride):
        frames += 1
        yn = yunet_faces(ref_det, bgr)
        ref = yn[yn[:, 4] >= args.ref_score]
        for name in found:
            boxes = dets[name](bgr)[0]
            hit = match(ref, boxes)[0]
            unmatched = ~match(yn[yn[:, 4] >= args.extra_score], boxes)[1]
            found[name].append(hit)
            extra[name] += int(unmatched.sum())
            if name == "ours":
                missed += [(crop(bgr, b), f"f{idx} h{b[3] - b[1]:.0f} y{b[4]:.2f}") for b in ref[~hit]]
                extras += [(crop(bgr, b), f"f{idx} h{b[3] - b[1]:.0f} s{b[4]:.2f}") for b in boxes[unmatched]]
    n_ref = int(sum(len(h) for h in found["ours"]))
    stem = path.stem
    shown = {"missed": contact_sheet(missed, sheets / f"{stem}_missed.png", f"{stem}: YuNet faces ours misses",
                                     limit=args.sheet_limit),
             "extra": contact_sheet(extras, sheets / f"{stem}_extra.png", f"{stem}: our detections YuNet does not "
                                    "see", limit=args.sheet_limit)}
    return {"clip": path.name, "frames": frames, "reference": n_ref,
            "found": {"ours": int(sum(h.sum() for h in found["ours"])), "YuNet": n_ref,
                      "Haar": int(sum(h.sum() for h in found["Haar"]))},
            "recall": {"ours": recall(found["ours"]), "YuNet": 1.0 if n_ref else None, "Haar": recall(found["Haar"])},
            "extra": extra, "sheets": {k: f"sheets/{stem}_{k}.png" if v else None for k, v in shown.items()}}


def recall_vs_yunet(clips: list[Path], dets: dict[str, Detect], ref_det: cv2.FaceDetectorYN,
                    args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Section 1 over every clip, with totals."""
    rows = [clip_recall(c, dets, ref_det, args, out / "sheets") for c in tqdm(clips, desc="1 clips vs YuNet")]
    n_ref = sum(r["reference"] for r in rows)
    total = {"reference": n_ref, "found": {k: sum(r["found"][k] for r in rows) for k in DETECTORS},
             "extra": {k: sum(r["extra"][k] for r in rows) for k in ("ours", "Haar")}}
    total["recall"] = {k: round(v / n_ref, 3) if n_ref else None for k, v in total["found"].items()}
    return {"stride": args.stride, "ref_score": args.ref_score, "extra_score": args.extra_score, "clips": rows,
            "total": total}


# ------------------------------------------------------------------------------------------ 2. large faces


def lfw_eval_images(root: Path, people: int, per_person: int, seed: int) -> list[Path]:
    """``per_person`` seeded images of each of the first ``people`` LFW eval people (the recognizer's split)."""
    persons = lfw_people(root)
    evals = sorted(p for p, s in split_people(list(persons)).items() if s == "eval")[: people or None]
    rng = np.random.default_rng(seed)
    paths = []
    for p in evals:
        pick = rng.choice(len(persons[p]), min(per_person, len(persons[p])), replace=False)
        paths += [persons[p][i] for i in sorted(pick)]
    return paths


def central_face(ref_det: cv2.FaceDetectorYN, bgr: np.ndarray, min_score: float,
                 within: float | None = None) -> np.ndarray | None:
    """YuNet's face nearest the image centre (13,: box, 4 landmarks, score), scoring >= ``min_score`` and centred
    within ``within`` px (default: a quarter of the image height)."""
    d = yunet_detect(ref_det, bgr, 1.0)
    d = d[d[:, 12] >= min_score]
    if len(d) == 0:
        return None
    centre = np.array(bgr.shape[1::-1], np.float32) / 2
    dist = np.linalg.norm((d[:, :2] + d[:, 2:4]) / 2 - centre, axis=1)
    return d[dist.argmin()] if dist.min() < (bgr.shape[0] / 4 if within is None else within) else None


def place_face(bgr: np.ndarray, box: np.ndarray, height: float, rng: np.random.Generator,
               size: tuple[int, int] = LARGE_FRAME) -> tuple[np.ndarray, np.ndarray]:
    """``bgr`` scaled so ``box`` is ``height`` px high, placed at a random spot of a ``size`` frame where the
    whole box fits; the frame and the box (1, 4) in it."""
    w, h = size
    s = height / (box[3] - box[1])
    bw = s * (box[2] - box[0])
    cx = rng.uniform(bw / 2, w - bw / 2) if bw < w else w / 2
    cy = rng.uniform(height / 2, h - height / 2) if height < h else h / 2
    tx, ty = cx - s * (box[0] + box[2]) / 2, cy - s * (box[1] + box[3]) / 2
    m = np.array([[s, 0, tx], [0, s, ty]], np.float32)
    frame = cv2.warpAffine(bgr, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=GREY)
    return frame, (box * s + np.array([tx, ty, tx, ty], np.float32))[None]


def large_faces(dets: dict[str, Detect], ref_det: cv2.FaceDetectorYN, args: argparse.Namespace,
                out: Path) -> dict[str, Any]:
    """Section 2: recall per face-height bin, and a contact sheet of the frames where we miss the face."""
    rng = np.random.default_rng(args.seed)
    heights: list[float] = []
    found: dict[str, list[bool]] = {k: [] for k in DETECTORS}
    missed, skipped = [], 0
    for path in tqdm(lfw_eval_images(Path(args.lfw), args.lfw_people, args.lfw_per_person, args.seed),
                     desc="2 large faces", mininterval=5):
        bgr = read_bgr(path)
        face = central_face(ref_det, bgr, args.ref_score)
        if face is None:
            skipped += 1
            continue
        box = face[:4]
        frame, gt = place_face(bgr, box, rng.uniform(LARGE_BINS[0], LARGE_FRAME[1]), rng)
        heights.append(float(gt[0, 3] - gt[0, 1]))
        for name, det in dets.items():
            boxes = det(frame)[0]
            found[name].append(bool(match(gt, boxes)[0][0]))
            if name == "ours" and not found[name][-1]:
                missed.append((_draw(frame, gt[0], boxes), f"{path.stem} h{heights[-1]:.0f}"))
    contact_sheet(missed, out / "sheets" / "large_missed.png", "large faces ours misses (green: truth, red: ours)",
                  cell=160, cols=6, limit=args.sheet_limit)
    res = by_bins(np.array(heights), {k: np.array(v, bool) for k, v in found.items()}, LARGE_BINS)
    return res | {"faces": len(heights), "skipped_no_reference": skipped,
                  "sheet": "sheets/large_missed.png" if missed else None}


def turned_heads(dets: dict[str, Detect], ref_det: cv2.FaceDetectorYN, args: argparse.Namespace,
                 out: Path) -> dict[str, Any]:
    """Section 7: recall per yaw-ratio bin on held-out CelebA identities, and a sheet of the turned faces we miss."""
    split = celeba_split(Path(args.celeba_identities))
    names = sorted(n for n, s in split.items() if s == "eval" and (Path(args.celeba) / n).is_file())
    names = names[: args.celeba_limit or None]
    rng = np.random.default_rng(args.seed)
    yaws: list[float] = []
    found: dict[str, list[bool]] = {k: [] for k in DETECTORS}
    missed, skipped = [], 0
    for n in tqdm(names, desc="7 turned heads", mininterval=5):
        bgr = read_bgr(Path(args.celeba) / n)
        h, w = bgr.shape[:2]
        padded = cv2.copyMakeBorder(bgr, h, h, w, w, cv2.BORDER_CONSTANT, value=GREY)
        face = central_face(ref_det, padded, args.ref_score, within=min(h, w) / 2)
        if face is None:
            skipped += 1
            continue
        yaws.append(yaw(face[4:12].reshape(4, 2)))
        frame, gt = place_face(padded, face[:4], rng.uniform(*TURNED_HEIGHT), rng)
        for name, det in dets.items():
            boxes = det(frame)[0]
            found[name].append(bool(match(gt, boxes)[0][0]))
            if name == "ours" and not found[name][-1] and yaws[-1] >= 0.3:
                missed.append((crop(frame, gt[0], 0.5), f"{Path(n).stem} yaw {yaws[-1]:.2f}"))
    contact_sheet(missed, out / "sheets" / "turned_missed.png", "turned faces (yaw ratio >= 0.3) ours misses",
                  limit=args.sheet_limit)
    res = by_bins(100 * np.array(yaws), {k: np.array(v, bool) for k, v in found.items()}, YAW_BINS)
    return res | {"faces": len(yaws), "skipped_no_reference": skipped,
                  "sheet": "sheets/turned_missed.png" if missed else None}


def _draw(frame: np.ndarray, gt: np.ndarray, boxes: Boxes) -> np.ndarray:
    """A copy of ``frame`` with the true box in green and the detections in red."""
    img = frame.copy()
    cv2.rectangle(img, tuple(int(v) for v in gt[:2]), tuple(int(v) for v in gt[2:4]), (0, 220, 0), 3)
    for b in boxes:
        cv2.rectangle(img, tuple(int(v) for v in b[:2]), tuple(int(v) for v in b[2:4]), (0, 0, 255), 3)
    return img


def by_bins(heights: np.ndarray, found: dict[str, np.ndarray], bins: tuple[int, ...]) -> dict[str, Any]:
    """Face counts and recall per detector in each height bin, and overall."""
    idx = np.clip(np.digitize(heights, bins) - 1, 0, len(bins) - 2)
    labels = [f"{lo}-{hi}" if hi < 10_000 else f">={lo}" for lo, hi in zip(bins[:-1], bins[1:], strict=True)]
    return {"bins": labels, "faces_per_bin": [int((idx == i).sum()) for i in range(len(labels))],
            "recall": {k: [recall(f[idx == i]) for i in range(len(labels))] for k, f in found.items()},
            "recall_all": {k: recall(f) for k, f in found.items()}}


# ------------------------------------------------------------------------------- 3, 4. roll and face height


def rotate(bgr: np.ndarray, lms: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """``bgr`` rotated by ``angle`` degrees (counter-clockwise) on a canvas grown to hold it all, and its
    landmarks (K, 4, 2) moved with it."""
    h, w = bgr.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(np.ceil(h * s + w * c)), int(np.ceil(h * c + w * s))
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    img = cv2.warpAffine(bgr, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=GREY)
    return img, (lms @ m[:, :2].T + m[:, 2]).astype(np.float32)


def webfaces(dets: dict[str, Detect], args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sections 3 and 4: recall per roll angle on the first ``--roll-limit`` labelled val images, and recall by
    face height on the upright val images."""
    root = Path(args.webfaces)
    lms = read_landmarks(root)
    names = [n for n in read_split(root, "val")[: args.val_limit or None] if n in lms]
    roll_set = set() if 3 in args.skip else set(names[: args.roll_limit])
    names = [n for n in names if n in roll_set] if 4 in args.skip else names
    heights: list[float] = []
    upright: dict[str, list[np.ndarray]] = {k: [] for k in DETECTORS}
    rolled: dict[int, dict[str, list]] = {a: {k: [] for k in DETECTORS} for a in args.angles}
    for i, name in enumerate(tqdm(names, desc="3-4 webfaces val", mininterval=5)):
        bgr = read_bgr(root / "images" / name)
        for a in ([0, *(a for a in args.angles if a)] if name in roll_set else [0]):
            img, lm = rotate(bgr, lms[name], a if i % 2 == 0 else -a) if a else (bgr, lms[name])
            gt = boxes_from_landmarks(lm)
            hits = {k: match(gt, det(img)[0])[0] for k, det in dets.items()}
            if a == 0:
                heights += (gt[:, 3] - gt[:, 1]).tolist()
                for k in DETECTORS:
                    upright[k].append(hits[k])
            if name in roll_set and a in rolled:
                for k in DETECTORS:
                    rolled[a][k].append(hits[k])
    roll = {"images": len(roll_set), "faces": int(sum(len(h) for h in rolled[args.angles[0]]["ours"])),
            "angles": list(args.angles), "recall": {k: [recall(rolled[a][k]) for a in args.angles] for k in DETECTORS}}
    found = {k: np.concatenate(v) if v else np.zeros(0, bool) for k, v in upright.items()}
    return roll, by_bins(np.array(heights), found, HEIGHT_BINS) | {"images": len(names), "faces": len(heights)}


# --------------------------------------------------------------------------------------- 5. replay tracks


class HaarPipelineDetector:
    """Haar in the pipeline's detector slot: its boxes, and the ArcFace template points placed in each box as
    landmarks (crops and the quality gate need 4 points; the cascade gives none)."""

    def __init__(self) -> None:
        self.det = haar()

    def __call__(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N, 5) and landmarks (N, 4, 2) in frame pixels."""
        boxes = self.det(bgr)[0]
        wh = (boxes[:, 2:4] - boxes[:, :2])[:, None]
        return boxes, (boxes[:, None, :2] + TEMPLATE_112[None] / 112 * wh).astype(np.float32)

    def close(self) -> None:
        """Nothing to release."""


class TrackRecorder:
    """The replay's frame hook (``App``'s ``show`` slot): per track, which of its detections match a YuNet face;
    per confirmed track, its last event and best snapshot.

    Args:
        label: (BGR frame, detection box) -> the YuNet faces (N, 5) near the box, one of which it must match.
    """

    def __init__(self, label: Callable[[np.ndarray, np.ndarray], Boxes]) -> None:
        self.label = label
        self.runs = 0
        self.hits: dict[str, list[bool]] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.snapshots: dict[str, np.ndarray] = {}
        self.best: dict[str, tuple[float, np.ndarray]] = {}  # fallback picture: the best-scoring detection

    def write(self, event: Any) -> None:
        """An event from the app (an output, like the JSON lines file)."""
        self.events[event.payload["id"]] = event.payload
        if event.image is not None:
            self.snapshots[event.payload["id"]] = event.image

    def frame(self, frame: Any, pipeline: Any, events: list[Any]) -> None:
        """A processed frame: score the detections of this frame's detector run against YuNet."""
        ran, self.runs = pipeline.counts.detector_runs != self.runs, pipeline.counts.detector_runs
        obs = pipeline.last_observations if ran else []
        if not obs:
            return
        for ob in obs:
            hit = match(self.label(frame.bgr, ob.box), ob.box[None, :4])[1][0]
            self.hits.setdefault(ob.track.id, []).append(bool(hit))
            if ob.box[4] > self.best.get(ob.track.id, (-np.inf,))[0]:
                self.best[ob.track.id] = (float(ob.box[4]), crop(frame.bgr, ob.box))

    def close(self) -> None:
        """Nothing to release (``App`` calls this when it stops)."""

    def tracks(self) -> list[dict[str, Any]]:
        """Confirmed tracks with their verdict: a face when most of their detections match a YuNet face."""
        out = []
        for tid, ev in self.events.items():
            hits = self.hits.get(tid, [])
            out.append({"id": tid, "detections": len(hits), "on_yunet_face": int(sum(hits)),
                        "face": 2 * sum(hits) > len(hits), "detection_max": ev["scores"]["detection_max"],
                        "frames": [ev["frames"]["first"], ev["frames"]["last"]]})
        return out

    def picture(self, tid: str) -> np.ndarray:
        """The track's best snapshot (its best-scoring detection when no snapshot was taken)."""
        return self.snapshots.get(tid, self.best.get(tid, (0.0, np.zeros((8, 8, 3), np.uint8)))[1])


def yunet_near(det: cv2.FaceDetectorYN, min_score: float) -> Callable[[np.ndarray, np.ndarray], Boxes]:
    """(bgr, box) -> YuNet faces (N, 5) at 1x and 2x scoring >= ``min_score`` in the box's neighbourhood (widened
    by its size on each side), frame pixels: the full-frame 2x pass, only where a detection needs a verdict."""

    def label(bgr: np.ndarray, box: np.ndarray) -> Boxes:
        (x1, y1, x2, y2), (h, w) = box[:4], bgr.shape[:2]
        bw, bh = x2 - x1, y2 - y1
        left, top = max(0, int(x1 - bw)), max(0, int(y1 - bh))
        region = bgr[top:min(h, int(y2 + bh) + 1), left:min(w, int(x2 + bw) + 1)]
        if min(region.shape[:2]) < 8:
            return np.zeros((0, 5), np.float32)
        d = yunet_faces(det, region, (1.0, 2.0))
        d[:, :4] += np.array([left, top, left, top], np.float32)
        return d[d[:, 4] >= min_score]

    return label


def replay_clip(video: Path, model: str, detector: Any, recorder: TrackRecorder, events: Path,
                confirm_score: float | None = None) -> dict[str, Any]:
    """The daemon pipeline on ``video`` (default config, ``detector.model`` = ``model``, ``tracker.confirm_score``
    when given; ``detector`` None: loaded from the config as the daemon does), events to ``events``; the app's
    stats."""
    from edgecam.app import App, run_app
    from edgecam.config import parse_config

    tracker = {} if confirm_score is None else {"confirm_score": confirm_score}
    cfg = parse_config({"camera": {"source": {"type": "replay", "path": str(video), "speed": "max"}},
                        "detector": {"model": model}, "tracker": tracker})
    events.parent.mkdir(parents=True, exist_ok=True)
    try:
        return run_app(App(cfg, events_path=events, stdout=io.StringIO(), detector=detector, show=recorder))
    finally:
        if detector is not None:
            detector.close()


def replay_tracks(clips: list[Path], ref_det: cv2.FaceDetectorYN, args: argparse.Namespace,
                  out: Path) -> dict[str, Any]:
    """Section 5: tracks and false tracks per clip and detector, with a contact sheet of the tracks."""
    from edgecam.tools.baseline import YuNetDetector

    make = {"ours": lambda: None, "YuNet": lambda: YuNetDetector(Path(args.yunet)), "Haar": HaarPipelineDetector}
    rows = []
    for clip in tqdm(clips, desc="5 replays"):
        label, row = yunet_near(ref_det, args.label_score), {"clip": clip.name}
        for name in args.replay_detectors:
            rec, t0 = TrackRecorder(label), time.time()
            stats = replay_clip(clip, args.model, make[name](), rec, out / "events" / f"{clip.stem}.{name}.jsonl",
                                args.confirm_score)
            tracks = rec.tracks()
            items = [(rec.picture(t["id"]), f"{t['id'][-5:]} {'face' if t['face'] else 'NOT A FACE'}\n"
                      f"{t['on_yunet_face']}/{t['detections']} max {t['detection_max']:.2f}") for t in tracks]
            sheet = f"sheets/{clip.stem}_tracks_{name}.png"
            shown = contact_sheet(items, out / sheet, f"{clip.stem}: {name} tracks (verdict, frames on a YuNet "
                                  "face / detections, max score)", limit=args.sheet_limit)
            row[name] = {"frames": stats["frames"], "detector_runs": stats["detector_runs"], "tracks": len(tracks),
                         "false_tracks": sum(not t["face"] for t in tracks), "sheet": sheet if shown else None,
                         "seconds": round(time.time() - t0, 1),
                         "track_list": tracks}
        rows.append(row)
    total = {n: {k: sum(r[n][k] for r in rows) for k in ("tracks", "false_tracks")} for n in args.replay_detectors}
    return {"label_score": args.label_score, "clips": rows, "total": total}


# ---------------------------------------------------------------------------------------------- 6. latency


def timing(dets: dict[str, Detect], clip: Path, runs: int) -> dict[str, float]:
    """Median ms per call on the clip's first frame at 320x240, single thread, detectors interleaved."""
    frame = cv2.resize(next(read_frames(clip, 1))[1], (320, 240), interpolation=cv2.INTER_AREA)
    ms = latency(dets, frame, runs)
    return {k: round(v, 3) for k, v in ms.items()}


# --------------------------------------------------------------------------------------------------- main


def default_clips(video: Path) -> list[Path]:
    """Every mp4 and GIF of the shared video folder, then the bundled corridor clip."""
    return sorted(video.glob("*.mp4")) + sorted(video.glob("*.gif")) + [CORRIDOR]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = ap.add_argument
    add("--model", default="edgecam/models/face_detector", help="our model folder (default: %(default)s)")
    add("--yunet", default=YUNET, help="YuNet ONNX (default: %(default)s)")
    add("--clips", nargs="*", type=Path, help="videos / GIFs for sections 1 and 5 (default: every *.mp4 and *.gif "
        "in ../shared/data/video, then edgecam/data/corridor.mp4)")
    add("--video", type=Path, default=SHARED / "data/video", help="shared video folder (default: %(default)s)")
    add("--stride", type=int, default=5, help="section 1: every Nth frame (default: %(default)s)")
    add("--ref-score", type=float, default=0.6, help="YuNet score of a reference face (default: %(default)s)")
    add("--extra-score", type=float, default=0.3, help="a detection matching no YuNet face scoring this much is "
        "extra (default: %(default)s)")
    add("--lfw", default=str(SHARED / "data/identity/lfw"), help="LFW folder (default: %(default)s)")
    add("--lfw-people", type=int, default=100, help="section 2: eval people, 0 = all (default: %(default)s)")
    add("--lfw-per-person", type=int, default=2, help="section 2: images per person (default: %(default)s)")
    add("--celeba", default=str(REPO / "runs/data/celeba"), help="section 7: staged CelebA photos (default: "
        "%(default)s)")
    add("--celeba-identities", default=str(SHARED / "data/identity/celeba_first10k_identity.txt"),
        help="section 7: CelebA identity file (default: %(default)s)")
    add("--celeba-limit", type=int, default=0, help="section 7: first N eval photos, 0 = all (default: all)")
    add("--webfaces", default=str(SHARED / "data/detection/webfaces"), help="WebFaces (default: %(default)s)")
    add("--val-limit", type=int, default=0, help="section 4: first N val images, 0 = all (default: all)")
    add("--roll-limit", type=int, default=250, help="section 3: labelled val images rotated (default: %(default)s)")
    add("--angles", type=lambda s: [int(a) for a in s.split(",")], default=[0, 15, 30, 45],
        help="section 3: roll angles in degrees (default: 0,15,30,45)")
    add("--replay-detectors", type=lambda s: s.split(","), default=list(DETECTORS),
        help="section 5: detectors run in the pipeline (default: ours,YuNet,Haar)")
    add("--label-score", type=float, default=0.5, help="section 5: YuNet score of a face (default: %(default)s)")
    add("--confirm-score", type=float, help="section 5: the tracker's confirm_score (default: the daemon's)")
    add("--runs", type=int, default=300, help="section 6: latency runs per detector (default: %(default)s)")
    add("--skip", type=lambda s: {int(x) for x in s.split(",") if x}, default=set(),
        help="section numbers to leave out, e.g. 5,6 (default: none)")
    add("--sheet-limit", type=int, default=100, help="most crops on one contact sheet (default: %(default)s)")
    add("--seed", type=int, default=0, help="section 2 sampling and placement (default: %(default)s)")
    add("--out", default="runs/detector/realeval", help="output folder (default: %(default)s)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every section not skipped and write the report; the report dict (also ``OUT/realeval.json``)."""
    args = parse_args(argv)
    t0 = time.time()
    cv2.setNumThreads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clips = args.clips or default_clips(args.video)

    # 0. detectors at their operating points (ours: `edgecam detect`'s defaults through the runtime class), and
    #    one low-threshold YuNet for the references (sections 1, 2, 5)
    cli = detect_defaults()
    dets = {"ours": ours(Path(args.model), cli.threshold), "YuNet": yunet(args.yunet, BASELINE_OPERATING["YuNet"]),
            "Haar": haar()}
    ref_det = cv2.FaceDetectorYN.create(args.yunet, "", (320, 320), min(args.extra_score, args.label_score), 0.3,
                                        5000)
    r: dict[str, Any] = {"command": " ".join(["python -m training.detector.realeval", *(argv or sys.argv[1:])]),
                         "model": args.model, "matching_rule": MATCH_RULE,
                         "operating_thresholds": {"ours": cli.threshold, "YuNet": BASELINE_OPERATING["YuNet"],
                                                  "Haar": "every detection"}}
    # 1. recall against YuNet on every clip, with contact sheets of misses and extras
    if 1 not in args.skip:
        r["recall_vs_yunet"] = recall_vs_yunet(clips, dets, ref_det, args, out)
    # 2. large faces: LFW eval people scaled to 150 px .. the frame height
    if 2 not in args.skip:
        r["large_faces"] = large_faces(dets, ref_det, args, out)
    # 3-4. WebFaces val: roll, and recall by face height (one pass over the images)
    if not {3, 4} <= args.skip:
        r["roll"], r["webfaces_height"] = webfaces(dets, args)
    # 5. the daemon pipeline on each clip: tracks, and tracks that are not faces
    if 5 not in args.skip:
        r["replay_tracks"] = replay_tracks(clips, ref_det, args, out)
    # 6. latency per 320x240 frame, same run, single thread
    if 6 not in args.skip:
        r["latency_ms"] = timing(dets, clips[-1], args.runs)
    # 7. turned heads: held-out CelebA identities, by yaw
    if 7 not in args.skip:
        if Path(args.celeba).is_dir() and Path(args.celeba_identities).is_file():
            r["turned_heads"] = turned_heads(dets, ref_det, args, out)
        else:
            print(f"section 7 skipped: {args.celeba} or {args.celeba_identities} absent "
                  "(python -m training.fetched --set celeba)", flush=True)
    # 8. JSON, PNGs, markdown
    r["seconds"] = round(time.time() - t0)
    print(write_report(r, out), flush=True)
    return r


if __name__ == "__main__":
    main()
