"""Faces of every kind beyond WebFaces: staged scene and portrait folders, labelled by YuNet.

A folder staged by ``training.fetched`` (or any folder of images, e.g. ``identity/lfw_few``) gets a
``labels.json`` beside the run: every image is resized so its long side is at most ``--max-side`` (the size
training reads it at), then YuNet runs on it at 1x, 2x (faces under 16 px) and on copies rolled by
+-``--roll`` degrees (tilted heads YuNet misses upright), and with ``--pad`` (portrait sets) on a copy padded by
half its size on every side (a face that fills the photo). The passes are merged with NMS in the stored image's
pixels. A detection with score >= ``--face-score`` is a face (YuNet's box and its 4 landmarks, mouth = mean of
the corners), one with ``--ignore-score`` <= score < ``--face-score`` is an ignore region; an image with no
detection at all is a negative (backs of heads, torsos, lamps: what our detector must not fire on).

    python -m training.detector.scenes --folder runs/data/worksite --out runs/detector/labels/worksite.json

``load_folder`` turns a folder and its labels into training ``Sample``s (cached as one ``.npz``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edgecam.crops import yaw
from edgecam.detect import nms
from training.detector.data import Sample, cache_name, stored
from training.detector.pseudo_label import YUNET, yunet_detect

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".webp"}


def list_images(folder: Path, limit: int = 0, seed: int = 0, exclude: frozenset[str] = frozenset()) -> list[str]:
    """Image paths under ``folder`` (relative, sorted), but those in ``exclude``; ``limit`` > 0 keeps a seeded
    random subset."""
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    names = [n for n in names if n not in exclude]
    if limit and limit < len(names):
        keep = np.random.default_rng(seed).choice(len(names), limit, replace=False)
        names = [names[i] for i in sorted(keep)]
    return names


def read_stored(path: Path, max_side: int) -> np.ndarray:
    """The image as training stores it: BGR, long side at most ``max_side`` (area-resized)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"{path}: cannot read image")
    s = max_side / max(bgr.shape[:2])
    return cv2.resize(bgr, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else bgr


def rolled_pass(det: cv2.FaceDetectorYN, bgr: np.ndarray, angle: float) -> np.ndarray:
    """YuNet on ``bgr`` rolled by ``angle`` degrees (canvas grown to fit), mapped back: (N, 13) as yunet_detect.
    Box centres and landmarks go through the inverse roll; the box size is kept (the box convention ignores
    rotation)."""
    h, w = bgr.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * s + w * c), int(h * c + w * s)
    m[:, 2] += (nw / 2 - w / 2, nh / 2 - h / 2)
    d = yunet_detect(det, cv2.warpAffine(bgr, m, (nw, nh), borderMode=cv2.BORDER_REPLICATE), 1.0)
    if not len(d):
        return d
    inv = cv2.invertAffineTransform(m)
    back = lambda p: p @ inv[:, :2].T + inv[:, 2]  # noqa: E731
    ctr, half = back((d[:, :2] + d[:, 2:4]) / 2), (d[:, 2:4] - d[:, :2]) / 2
    lms = back(d[:, 4:12].reshape(-1, 4, 2)).reshape(-1, 8)
    return np.hstack([ctr - half, ctr + half, lms, d[:, 12:13]]).astype(np.float32)


def padded_pass(det: cv2.FaceDetectorYN, bgr: np.ndarray) -> np.ndarray:
    """YuNet on ``bgr`` with half its size of grey border on each side (a face filling the photo)."""
    h, w = bgr.shape[:2]
    py, px = h // 2, w // 2
    d = yunet_detect(det, cv2.copyMakeBorder(bgr, py, py, px, px, cv2.BORDER_CONSTANT, value=(128, 128, 128)), 1.0)
    d[:, :12] -= np.array([px, py] * 6, np.float32)
    return d


def label_image(det: cv2.FaceDetectorYN, bgr: np.ndarray, roll: float, face_score: float, pad: bool
                ) -> dict[str, list]:
    """All passes merged: {"boxes", "landmarks", "scores", "ignore"} in ``bgr``'s pixels."""
    passes = [yunet_detect(det, bgr, 1.0), yunet_detect(det, bgr, 2.0)] + ([padded_pass(det, bgr)] if pad else [])
    passes += [rolled_pass(det, bgr, a) for a in (-roll, roll) if roll]
    d = np.concatenate(passes)
    d = d[nms(d[:, :4], d[:, 12], 0.4)] if len(d) else d
    faces, weak = d[d[:, 12] >= face_score], d[d[:, 12] < face_score]
    return {"boxes": faces[:, :4].round(1).tolist(), "landmarks": faces[:, 4:12].round(1).tolist(),
            "scores": faces[:, 12].round(3).tolist(), "ignore": weak[:, :4].round(1).tolist()}


_WORKER: dict = {}


def _init(yunet: str, ignore_score: float) -> None:
    cv2.setNumThreads(1)
    _WORKER["det"] = cv2.FaceDetectorYN.create(yunet, "", (320, 320), ignore_score, 0.3, 5000)


def _label(job: tuple[Path, int, float, float, bool]) -> dict[str, list]:
    path, max_side, roll, face_score, pad = job
    return label_image(_WORKER["det"], read_stored(path, max_side), roll, face_score, pad)


def label_folder(folder: Path, max_side: int = 800, roll: float = 30.0, face_score: float = 0.6,
                 ignore_score: float = 0.3, limit: int = 0, workers: int = 2, pad: bool = False,
                 yunet: str = YUNET, exclude: frozenset[str] = frozenset()) -> dict:
    """{"max_side", "images": {name: labels}} for the images of ``folder`` (see module docstring), but those
    named in ``exclude``."""
    names = list_images(folder, limit, exclude=exclude)
    jobs = [(folder / n, max_side, roll, face_score, pad) for n in names]
    # spawned, not forked: a fork after torch (or OpenCV) started its thread pools can hang the worker
    with multiprocessing.get_context("spawn").Pool(workers, _init, (yunet, ignore_score)) as pool:
        labels = list(tqdm(pool.imap(_label, jobs, chunksize=8), total=len(jobs), desc=folder.name, mininterval=10))
    return {"folder": str(folder), "max_side": max_side, "roll": roll, "face_score": face_score, "pad": pad,
            "images": dict(zip(names, labels, strict=True))}


def load_folder(labels_path: Path, cache_dir: Path | None, face_score: float = 0.0, colour: bool = False
                ) -> list[Sample]:
    """Training samples of a labelled folder: every face a pseudo face (half landmark weight); faces scored under
    ``face_score`` become ignore regions (a stricter cut than the labelling's: dog faces, gloves)."""
    spec = json.loads(labels_path.read_text())
    names = list(spec["images"])
    cache = cache_dir / cache_name(labels_path.stem, len(names), colour) if cache_dir else None
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            images = [z[f"i{i}"] for i in range(len(names))]
    else:
        images = [stored(read_stored(Path(spec["folder"]) / n, spec["max_side"]), colour) for n in
                  tqdm(names, desc=f"read {labels_path.stem}", mininterval=10)]
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, names=np.array(names), **{f"i{i}": im for i, im in enumerate(images)})
    out = []
    for name, im in zip(names, images, strict=True):
        lab = spec["images"][name]
        boxes = np.array(lab["boxes"], np.float32).reshape(-1, 4)
        sure = np.array(lab["scores"], np.float32) >= face_score
        k = int(sure.sum())
        ignore = np.concatenate([np.array(lab["ignore"], np.float32).reshape(-1, 4), boxes[~sure]])
        out.append(Sample(im, boxes[sure], np.array(lab["landmarks"], np.float32).reshape(-1, 4, 2)[sure],
                          np.full(k, 0.5, np.float32), np.ones(k, np.float32), ignore))
    return out


def turned_subset(labels: dict, min_yaw: float) -> dict:
    """The images of a labels dict holding at least one face turned by ``min_yaw`` or more (``edgecam.crops.yaw``,
    the quality gate's measure: 0 frontal, 0.3 and more a 3/4 view): an extra source to sample 3/4 views more often
    than their share of the scenes."""
    keep = {n: lab for n, lab in labels["images"].items()
            if any(yaw(np.reshape(lm, (4, 2))) >= min_yaw for lm in lab["landmarks"])}
    return labels | {"images": keep, "subset": f"a face with yaw ratio >= {min_yaw}"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", help="folder of images (searched recursively)")
    ap.add_argument("--turned-from", help="instead of labelling: keep the images of this labels JSON that hold a "
                    "turned face (--min-yaw)")
    ap.add_argument("--min-yaw", type=float, default=0.3, help="--turned-from: least yaw ratio (default: %(default)s)")
    ap.add_argument("--out", required=True, help="labels JSON to write")
    ap.add_argument("--max-side", type=int, default=800, help="stored long side in pixels (default: %(default)s)")
    ap.add_argument("--roll", type=float, default=30.0, help="extra YuNet passes at +-this roll (default: %(default)s)")
    ap.add_argument("--face-score", type=float, default=0.6, help="min score of a face (default: %(default)s)")
    ap.add_argument("--ignore-score", type=float, default=0.3, help="min score of an ignore box (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=0, help="seeded random subset of N images (default: all)")
    ap.add_argument("--workers", type=int, default=2, help="processes (default: %(default)s)")
    ap.add_argument("--pad", action="store_true", help="add the padded pass (portrait sets: faces filling the photo)")
    ap.add_argument("--celeba-identities", help="CelebA folder: skip the photos of the recognizer's CelebA eval "
                    "identities in this identity file (training.recognizer.data.celeba_split)")
    args = ap.parse_args(argv)
    if args.turned_from:
        if not Path(args.turned_from).is_file():
            ap.error(f"--turned-from {args.turned_from}: no such labels file")
        out = turned_subset(json.loads(Path(args.turned_from).read_text()), args.min_yaw)
    elif args.folder:
        exclude: frozenset[str] = frozenset()
        if args.celeba_identities:
            if not Path(args.celeba_identities).is_file():
                ap.error(f"--celeba-identities {args.celeba_identities}: no such file")
            from training.recognizer.data import celeba_split
            exclude = frozenset(n for n, s in celeba_split(Path(args.celeba_identities)).items() if s == "eval")
        out = label_folder(Path(args.folder), args.max_side, args.roll, args.face_score, args.ignore_score,
                           args.limit, args.workers, args.pad, exclude=exclude)
    else:
        ap.error("give --folder (label it) or --turned-from (a subset of labels)")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    imgs = out["images"].values()
    print(f"{path}: {len(out['images'])} images, {sum(len(v['boxes']) for v in imgs)} faces, "
          f"{sum(len(v['ignore']) for v in imgs)} ignore boxes, {sum(not v['boxes'] and not v['ignore'] for v in imgs)}"
          " negatives")


if __name__ == "__main__":
    main()
