"""Face detection data: WebFaces labels, the box convention, augmentation and CenterNet-style targets.

Box convention (WebFaces has landmarks only): fit the similarity transform that maps a face's 4 landmarks
(image-left eye, image-right eye, nose, mouth centre) onto the ArcFace 112x112 template
(``edgecam.crops.TEMPLATE_112``); the face box is the axis-aligned box of centre (56, 61) and size 76 x 102
template units mapped back to the image (centre through the inverse transform, size divided by the scale,
rotation ignored). That box is the median YuNet box over 564 matched train faces measured in the template
frame (x 17.5..93.7, y 10.2..111.7), so our boxes and YuNet's share a convention.

A sample is a dict: ``image`` (H, W, 2) uint8 (channel 0 the standard grey, channel 1 an IR-like grey
that weights the red channel; for a colour model (H, W, 3) BGR), ``boxes`` (K, 4) x1,y1,x2,y2, ``landmarks``
(K, 4, 2), ``lm_weight`` (K,) (0 where the landmarks are unknown), ``peak`` (K,) the heatmap target at the face
centre (1 for a labelled face; a pseudo-labelled face may carry the teacher's score), ``ignore`` (M, 4)
x1,y1,x2,y2 boxes where no loss pushes the score down.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgecam.crops import TEMPLATE_112, similarity_matrix

logger = logging.getLogger(__name__)

BOX_CENTRE_112 = np.array([56.0, 61.0], np.float32)  # face box centre in the 112 template frame
BOX_SIZE_112 = np.array([76.0, 102.0], np.float32)  # face box w, h in the 112 template frame


def box_from_landmarks(lm: np.ndarray) -> np.ndarray:
    """The convention box (4,) x1,y1,x2,y2 of one face's landmarks (4, 2) (see module docstring)."""
    m = similarity_matrix(lm, TEMPLATE_112)  # image -> template
    a = m[:, :2]
    scale = float(np.sqrt(abs(np.linalg.det(a))))
    centre = np.linalg.solve(a, BOX_CENTRE_112 - m[:, 2])
    half = BOX_SIZE_112 / scale / 2
    return np.concatenate([centre - half, centre + half]).astype(np.float32)


def boxes_from_landmarks(lms: np.ndarray) -> np.ndarray:
    """Convention boxes (K, 4) x1,y1,x2,y2 for landmarks (K, 4, 2)."""
    return np.array([box_from_landmarks(lm) for lm in lms], np.float32).reshape(-1, 4)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU (N, M) of boxes (N, 4) and (M, 4), x1,y1,x2,y2."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


# ----------------------------------------------------------------------------------------------- reading


def read_landmarks(root: Path) -> dict[str, np.ndarray]:
    """WebFaces ``landmarks.txt`` -> {image name: (K, 4, 2) float32 landmarks}."""
    faces: dict[str, list[np.ndarray]] = {}
    for line in (root / "landmarks.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, *vals = line.split()
        faces.setdefault(name, []).append(np.array(vals, np.float32).reshape(4, 2))
    return {k: np.stack(v) for k, v in faces.items()}


def read_split(root: Path, split: str) -> list[str]:
    """Image names of a WebFaces split file (``train`` or ``val``)."""
    return [s.strip() for s in (root / f"{split}.txt").read_text().splitlines() if s.strip()]


def ir_grey(bgr: np.ndarray) -> np.ndarray:
    """(H, W) uint8 IR-like grey of a BGR image: skin bright, mostly the red channel."""
    b, g, r = (bgr[:, :, i].astype(np.float32) for i in range(3))
    return np.clip(0.75 * r + 0.2 * g + 0.05 * b, 0, 255).astype(np.uint8)


def two_greys(bgr: np.ndarray) -> np.ndarray:
    """(H, W, 2) uint8: standard grey and an IR-like grey (``ir_grey``)."""
    if bgr.ndim == 2:
        return np.dstack([bgr, bgr])
    return np.dstack([cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), ir_grey(bgr)])


def stored(bgr: np.ndarray, colour: bool) -> np.ndarray:
    """An image as a sample holds it: BGR (H, W, 3) for a colour model (a grey image repeated), else
    ``two_greys``."""
    if not colour:
        return two_greys(bgr)
    return cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR) if bgr.ndim == 2 else bgr


def cache_name(stem: str, count: int, colour: bool) -> str:
    """File name of a decoded-image cache: colour and grey samples are cached apart."""
    return f"{stem}_{count}{'_bgr' if colour else ''}.npz"


def read_bgr(path: Path) -> np.ndarray:
    """The image at ``path`` as BGR uint8; FileNotFoundError naming it when OpenCV cannot read it."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"{path}: cannot read image")
    return bgr


def load_images(folder: Path, names: list[str], cache: Path | None = None, colour: bool = False
                ) -> list[np.ndarray]:
    """Decode images as ``stored`` arrays, cached in one ``.npz`` when ``cache`` is given."""
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            if list(z["names"]) == names:
                return [z[f"i{i}"] for i in range(len(names))]
    images = [stored(read_bgr(folder / n), colour) for n in names]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Any, not np.ndarray: mypy checks a ** dict against savez's allow_pickle: bool too
        arrays: dict[str, Any] = {f"i{i}": im for i, im in enumerate(images)}
        np.savez(cache, names=np.array(names), **arrays)
    return images


@dataclass
class Sample:
    """One labelled image (see module docstring for the arrays)."""

    image: np.ndarray  # (H, W, 2) uint8, or (H, W, 3) BGR
    boxes: np.ndarray  # (K, 4) x1,y1,x2,y2
    landmarks: np.ndarray  # (K, 4, 2)
    lm_weight: np.ndarray  # (K,)
    peak: np.ndarray  # (K,) heatmap target at the face centre
    ignore: np.ndarray  # (M, 4) x1,y1,x2,y2


def empty_sample(image: np.ndarray) -> Sample:
    """A sample with no faces (a negative image)."""
    return Sample(image, np.zeros((0, 4), np.float32), np.zeros((0, 4, 2), np.float32), np.zeros(0, np.float32),
                  np.zeros(0, np.float32), np.zeros((0, 4), np.float32))


def load_samples(root: Path, split: str, cache_dir: Path | None, pseudo: Path | None = None,
                 limit: int | None = None, soft_pseudo: bool = False, colour: bool = False) -> list[Sample]:
    """WebFaces samples of a split; with ``pseudo`` (a JSON from ``pseudo_label.py``) extra faces and ignores,
    whose heatmap target is the teacher's score when ``soft_pseudo`` (else 1)."""
    names = read_split(root, split)[:limit]
    lms = read_landmarks(root)
    cache = cache_dir / cache_name(f"webfaces_{split}", len(names), colour) if cache_dir else None
    images = load_images(root / "images", names, cache, colour)
    extra = json.loads(pseudo.read_text()) if pseudo else {}
    samples = []
    for name, im in zip(names, images, strict=True):
        lm = lms.get(name, np.zeros((0, 4, 2), np.float32))
        ones = np.ones(len(lm), np.float32)
        s = Sample(im, boxes_from_landmarks(lm), lm, ones, ones, np.zeros((0, 4), np.float32))
        if name in extra:
            s = add_pseudo(s, extra[name], soft_pseudo)
        samples.append(s)
    return samples


def add_pseudo(s: Sample, extra: dict, soft: bool = False) -> Sample:
    """Merge pseudo-labelled faces (boxes, landmarks at half landmark weight, heatmap target 1 or, when ``soft``,
    the teacher's score) and ignore boxes into a sample."""
    pb = np.array(extra.get("boxes", []), np.float32).reshape(-1, 4)
    pl = np.array(extra.get("landmarks", []), np.float32).reshape(-1, 4, 2)
    ig = np.array(extra.get("ignore", []), np.float32).reshape(-1, 4)
    peak = np.array(extra["scores"], np.float32) if soft else np.ones(len(pb), np.float32)
    return Sample(s.image, np.concatenate([s.boxes, pb]), np.concatenate([s.landmarks, pl]),
                  np.concatenate([s.lm_weight, np.full(len(pb), 0.5, np.float32)]), np.concatenate([s.peak, peak]),
                  np.concatenate([s.ignore, ig]))


def load_negatives(folder: Path, colour: bool = False) -> list[np.ndarray]:
    """All images under ``folder`` (recursively) as ``stored`` arrays."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    out = []
    for p in paths:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is not None:
            out.append(stored(bgr, colour))
    return out
