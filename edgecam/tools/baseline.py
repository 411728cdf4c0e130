"""Reference face detectors for ``edgecam bench --baseline``, behind the pipeline's detector interface.

``--baseline PATH`` takes either an edgecam model folder (another version of our detector: the fp32 export, an
older release) or a YuNet ``.onnx`` file (OpenCV Zoo's detector, e.g. the anchor in ``shared/models/anchors``),
which runs through ``cv2.FaceDetectorYN``. Both return what ``edgecam.detect.FaceDetector`` returns: boxes
``(N, 5)`` x1,y1,x2,y2,score and landmarks ``(N, 4, 2)`` (image-left eye, image-right eye, nose, mouth centre),
so the same pipeline (motion gate, crops, recognizer, tracker) runs behind them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgecam import EdgecamError
from edgecam.manifest import ModelError

logger = logging.getLogger(__name__)

YUNET_PAD = 32
"""cv2.FaceDetectorYN pads its input to a multiple of this (for the MAC count)."""


@dataclass(frozen=True)
class DetectorInfo:
    """What the bench reports about a detector: a label, its ONNX file and the input tensor for a frame."""

    label: str
    onnx_path: Path
    channels: int
    pad_multiple: int
    max_side: int | None

    def input_shape(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(1, C, H, W) the detector runs on for a ``width`` x ``height`` frame (downscaled, padded)."""
        scale = min(1.0, self.max_side / max(width, height)) if self.max_side else 1.0
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        m = self.pad_multiple
        return 1, self.channels, -(-h // m) * m, -(-w // m) * m


class YuNetDetector:
    """YuNet (OpenCV Zoo) through ``cv2.FaceDetectorYN``: ``det(bgr) -> (boxes (N, 5), landmarks (N, 4, 2))``.

    YuNet's 5 landmarks (image-left eye, image-right eye, nose, two mouth corners) become our 4: the mouth
    corners are averaged into the mouth centre.

    Args:
        path: the YuNet ``.onnx`` file.
        score_threshold: minimum face score (default 0.6, OpenCV Zoo's).
        nms_threshold: NMS IoU (OpenCV Zoo's default 0.3).
    """

    def __init__(self, path: Path, score_threshold: float = 0.6, nms_threshold: float = 0.3) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise EdgecamError(f"{self.path}: no such baseline model file")
        self.net: Any = None
        try:
            self.net = cv2.FaceDetectorYN.create(str(self.path), "", (320, 240), score_threshold, nms_threshold, 5000)
            self.net.detect(np.zeros((240, 320, 3), np.uint8))  # warm up, and fail here on a non-YuNet graph
        except cv2.error as e:
            raise ModelError(f"{self.path}: cv2.FaceDetectorYN cannot run it (not a YuNet model? {_cv_reason(e)})") \
                from None
        self.size = (320, 240)
        self.info = DetectorInfo(f"yunet:{self.path.stem}", self.path, 3, YUNET_PAD, None)

    def __call__(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Detect faces in a BGR uint8 image (grey is converted); boxes and landmarks in its pixels."""
        if bgr.ndim == 2:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        size = (bgr.shape[1], bgr.shape[0])
        if size != self.size:
            self.net.setInputSize(size)
            self.size = size
        _, faces = self.net.detect(bgr)
        faces = np.zeros((0, 15), np.float32) if faces is None else faces.astype(np.float32)  # (N, 15)
        # faces: x, y, w, h, 5 landmarks x,y (left eye, right eye, nose, mouth left, mouth right), score
        boxes = np.hstack([faces[:, 0:2], faces[:, 0:2] + faces[:, 2:4], faces[:, 14:15]])  # (N, 5)
        pts = faces[:, 4:14].reshape(-1, 5, 2)
        lms = np.concatenate([pts[:, :3], pts[:, 3:5].mean(1, keepdims=True)], axis=1)  # (N, 4, 2)
        return boxes.reshape(-1, 5), lms.reshape(-1, 4, 2)

    def close(self) -> None:
        """Release the network."""
        self.net = None


def _cv_reason(e: Exception) -> str:
    """The human part of an OpenCV error: ``... error: (-215:Assertion failed) X in function 'f'`` -> ``X``."""
    text = " ".join(str(e).split())
    m = re.search(r"error: \(-?\d+:[^)]*\) (.*?)(?: in function .*)?$", text)
    return (m.group(1) if m else text)[:160]


def is_model_folder(path: Path) -> bool:
    """Whether ``path`` is an edgecam model folder (or its ``model.json``) rather than a bare ``.onnx``."""
    return path.is_dir() or path.name == "model.json"


def detector_info(detector: object, label: str | None = None) -> DetectorInfo:
    """The ``DetectorInfo`` of a ``FaceDetector`` or a ``YuNetDetector``."""
    info = getattr(detector, "info", None)
    if isinstance(info, DetectorInfo):
        return info
    manifest = getattr(detector, "manifest", None)
    if manifest is None:
        raise TypeError(f"{type(detector).__name__} is not a known detector")
    spec = manifest.input
    channels = 1 if spec.get("color") == "gray" else 3
    max_side = getattr(detector, "max_side", None) or spec.get("max_side")
    return DetectorInfo(label or str(manifest.data.get("name", manifest.folder.name)), manifest.onnx_path, channels,
                        int(spec.get("pad_multiple", 1)), int(max_side) if max_side else None)
