"""Crops: landmark-aligned face crops at the recognizer's input size, the quality gate, snapshots.

Landmarks are the 4 WebFaces points in image order: image-left eye, image-right eye, nose tip, mouth centre.
Alignment is a similarity transform (rotation, uniform scale, shift) that maps them onto the ArcFace 112x112
template (its two mouth corners averaged into one mouth centre), scaled to the crop size. Training code in
``training/`` uses these same functions, so a crop at run time is the crop the recognizer learnt from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from edgecam.config import CropsConfig

# (4, 2) x,y in a 112x112 crop: left eye, right eye, nose, mouth centre (ArcFace template).
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [56.1396, 92.2848]], np.float32)


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (2, 3) mapping points ``src`` (K, 2) onto ``dst`` (K, 2) (Umeyama)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1
    rot = u @ np.diag(sign) @ vt
    var_s = (s**2).sum() / len(src)
    scale = (sig * sign).sum() / var_s if var_s > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m.astype(np.float32)


def align(bgr: np.ndarray, landmarks: np.ndarray, size: int | tuple[int, int] = 112) -> np.ndarray:
    """Warp the face with ``landmarks`` (4, 2) to an aligned crop of ``size`` (square side or (w, h)).

    Crops smaller than 112 are warped at 112 and area-resized (anti-aliased, as the small models were trained).
    """
    w, h = (size, size) if isinstance(size, int) else size
    if w < 112 or h < 112:
        return cv2.resize(align(bgr, landmarks, 112), (w, h), interpolation=cv2.INTER_AREA)
    dst = TEMPLATE_112 * np.array([w / 112.0, h / 112.0], np.float32)
    m = similarity_matrix(np.asarray(landmarks, np.float32)[:4], dst)
    return cv2.warpAffine(bgr, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the grey crop: low means blurred."""
    grey = crop if crop.ndim == 2 else cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


# ---------------------------------------------------------------------------------------------- quality gate


def yaw(landmarks: np.ndarray) -> float:
    """Head-turn measure from the 4 landmarks: the nose's offset from the eyes' midpoint along the eye line,
    divided by the eye distance (0 frontal, about 0.5 in profile); independent of roll and scale."""
    lm = np.asarray(landmarks, np.float64)
    eyes = lm[1] - lm[0]
    dist = float(np.hypot(*eyes))
    if dist < 1e-6:
        return 1.0
    return abs(float(np.dot(lm[2] - (lm[0] + lm[1]) / 2, eyes / dist))) / dist


@dataclass(frozen=True)
class Quality:
    """The quality gate's measures for one crop and its verdict (``reason`` empty when ``ok``)."""

    size: float  # shorter side of the face box, frame pixels
    sharpness: float  # Laplacian variance of the aligned crop
    yaw: float  # see ``yaw()``
    ok: bool
    reason: str  # "" | "small" | "blurred" | "turned" (the first failing check)

    def as_dict(self) -> dict[str, float | bool | str]:
        """JSON-ready form, rounded."""
        return {"size": round(self.size, 1), "sharpness": round(self.sharpness, 1), "yaw": round(self.yaw, 3),
                "ok": self.ok, "reason": self.reason}


class QualityGate:
    """Decides whether an aligned crop may name someone or enroll: minimum face size, sharpness, frontal pose."""

    def __init__(self, min_size_px: float = 24.0, min_sharpness: float = 20.0, max_yaw: float = 0.35) -> None:
        self.min_size_px, self.min_sharpness, self.max_yaw = min_size_px, min_sharpness, max_yaw

    @classmethod
    def from_config(cls, cfg: CropsConfig) -> QualityGate:
        """Build from the config's ``crops`` section."""
        return cls(cfg.min_size_px, cfg.min_sharpness, cfg.max_yaw)

    def __call__(self, crop: np.ndarray, box: np.ndarray, landmarks: np.ndarray) -> Quality:
        """Measure ``crop`` (aligned), ``box`` (4+,) x1,y1,x2,y2 and ``landmarks`` (4, 2), and judge."""
        size = float(min(box[2] - box[0], box[3] - box[1]))
        sharp, turn = sharpness(crop), yaw(landmarks)
        checks = (("small", size >= self.min_size_px), ("blurred", sharp >= self.min_sharpness),
                  ("turned", turn <= self.max_yaw))
        reason = next((name for name, passed in checks if not passed), "")
        return Quality(size, sharp, turn, not reason, reason)


def snapshot_crop(bgr: np.ndarray, box: np.ndarray, margin: float, max_size: int) -> np.ndarray:
    """The face box widened by ``margin`` (fraction of its size) on each side, clipped to the frame and
    shrunk so its longer side is at most ``max_size``: the picture of a face that people look at."""
    h, w = bgr.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(0, int(x1 - mx)), max(0, int(y1 - my))
    right, bottom = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
    crop = bgr[top:max(bottom, top + 1), left:max(right, left + 1)]
    scale = max_size / max(crop.shape[:2])
    if scale < 1:
        crop = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(crop)
