"""Crops: landmark-aligned face crops at the recognizer's input size, and the quality gate's measures.

Landmarks are the 4 WebFaces points in image order: image-left eye, image-right eye, nose tip, mouth centre.
Alignment is a similarity transform (rotation, uniform scale, shift) that maps them onto the ArcFace 112x112
template (its two mouth corners averaged into one mouth centre), scaled to the crop size. Training code in
``training/`` uses these same functions, so a crop at run time is the crop the recognizer learnt from.
"""

from __future__ import annotations

import cv2
import numpy as np

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
    """Warp the face with ``landmarks`` (4, 2) to an aligned crop of ``size`` (square side or (w, h))."""
    w, h = (size, size) if isinstance(size, int) else size
    dst = TEMPLATE_112 * np.array([w / 112.0, h / 112.0], np.float32)
    m = similarity_matrix(np.asarray(landmarks, np.float32)[:4], dst)
    return cv2.warpAffine(bgr, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the grey crop: low means blurred."""
    grey = crop if crop.ndim == 2 else cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())
