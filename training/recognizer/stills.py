"""Face crops of still photos made as the runtime makes them, and their embeddings through the runtime class.

A photo's face is found as ``edgecam enroll`` finds it (``edgecam.recognize.detect_in_portrait``: the detector on
the photo, retried on a grey canvas 3x its size when a close-up fills it); of several faces the one whose box
centre is nearest the photo centre is the labelled person (``data.central_face``'s rule); it is aligned on the
detector's 4 landmarks (``edgecam.crops.align``) at the recognizer's input size, kept BGR as in the daemon.
Embeddings come from ``edgecam.recognize.EmbeddingRecognizer.embed`` (the manifest's preprocessing).

Crops are cached per detector file (its sha256) and photo list under ``cache``: a run with another detector
makes them again.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edgecam.crops import align
from edgecam.detect import FaceDetector
from edgecam.recognize import EmbeddingRecognizer, detect_in_portrait

logger = logging.getLogger(__name__)


@dataclass
class Faces:
    """One aligned crop per photo in which a face was found, with the photo's person and path."""

    crops: np.ndarray  # (N, H, W, 3) BGR uint8
    person: np.ndarray  # (N,) str
    path: np.ndarray  # (N,) str
    side: np.ndarray  # (N,) float32 face box side (sqrt of its area) in photo pixels
    missed: int  # photos without a face

    def __len__(self) -> int:
        return len(self.crops)

    def people(self) -> dict[str, list[int]]:
        """{person: crop indices}, people sorted."""
        out: dict[str, list[int]] = {}
        for i, p in enumerate(self.person.tolist()):
            out.setdefault(str(p), []).append(i)
        return dict(sorted(out.items()))


def photo_face(detector: FaceDetector, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(box (5,), landmarks (4, 2)) of the photo's central face, or None when no face is found."""
    boxes, landmarks = detect_in_portrait(detector, bgr)
    if len(boxes) == 0:
        return None
    k = central_index(boxes, bgr.shape)
    return boxes[k], landmarks[k]


def central_index(boxes: np.ndarray, shape: tuple[int, ...]) -> int:
    """The box (N, 4+) whose centre is nearest the image centre (``data.central_face``'s rule)."""
    centres = (boxes[:, :2] + boxes[:, 2:4]) / 2
    return int(np.argmin(np.linalg.norm(centres - np.array([shape[1] / 2, shape[0] / 2]), axis=1)))


def make_faces(detector: FaceDetector, items: list[tuple[str, Path]], size: tuple[int, int], desc: str) -> Faces:
    """Crops of the photos ``items`` ((person, path), ...) with the detector."""
    crops, person, path, side = [], [], [], []
    missed = 0
    for who, p in tqdm(items, desc=desc, mininterval=5):
        bgr = cv2.imread(str(p))
        found = photo_face(detector, bgr) if bgr is not None else None
        if bgr is None or found is None:
            missed += 1
            continue
        box, lm = found
        crops.append(align(bgr, lm, size))
        person.append(who)
        path.append(str(p))
        side.append(float(np.sqrt(max(box[2] - box[0], 1.0) * max(box[3] - box[1], 1.0))))
    w, h = size
    return Faces(np.stack(crops) if crops else np.zeros((0, h, w, 3), np.uint8), np.array(person, dtype=str),
                 np.array(path, dtype=str), np.array(side, np.float32), missed)


def cached_faces(detector: FaceDetector, items: list[tuple[str, Path]], size: tuple[int, int], name: str,
                 cache: Path | None) -> Faces:
    """``make_faces`` through a cache file keyed by the detector's sha256, the crop size and the photo list."""
    if cache is None:
        return make_faces(detector, items, size, name)
    key = hashlib.sha1("\n".join([str(detector.manifest.data["sha256"]), str(size),
                                  *(f"{w}\t{p}" for w, p in items)]).encode()).hexdigest()[:12]
    f = cache / f"{name}-{key}.npz"
    if f.exists():
        z = np.load(f)
        return Faces(z["crops"], z["person"], z["path"], z["side"], int(z["missed"]))
    faces = make_faces(detector, items, size, name)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp.npz")
    np.savez(tmp, crops=faces.crops, person=faces.person, path=faces.path, side=faces.side,
             missed=np.array(faces.missed))
    tmp.replace(f)
    return faces


def embed(rec: EmbeddingRecognizer, crops: np.ndarray, idx: np.ndarray | None = None, batch: int = 32,
          desc: str = "") -> np.ndarray:
    """(N, D) unit embeddings of ``crops[idx]`` rows (every row when ``idx`` is None; others stay 0)."""
    idx = np.arange(len(crops)) if idx is None else np.asarray(idx, np.int64)
    out = np.zeros((len(crops), rec.dim), np.float32)
    for s in tqdm(range(0, len(idx), batch), desc=desc or "embed", mininterval=5, disable=not desc):
        sel = idx[s:s + batch]
        out[sel] = rec.embed(list(crops[sel]))
    return out
