"""Attention stage: the tiny face detector (ONNX, fully convolutional, any image size).

All preprocessing and decoding parameters come from the model's ``model.json``: grey input normalised by
``input.mean``/``input.std``, images larger than ``input.max_side`` downscaled, padded to ``input.pad_multiple``;
one stride-``output.stride`` map (CenterNet-style) decoded here in numpy: heatmap peaks (3x3 local maxima over
the score threshold), box distances and landmark offsets at each peak, then greedy NMS. Boxes and landmarks
come back in the pixels of the original image.

Every scale: with ``input.coarse_side`` set, a frame whose (downscaled) short side is over 1.5x that also runs
once more downscaled to that short side (a cheap pass, ~1/9 of the pixels of a 640x480 frame) where faces that
fill the frame come down to the sizes the network was trained on; both passes are merged by NMS, and a box
mostly inside a larger, higher-scored box (a nose or an eye of a big face) is dropped.

Low light: with ``input.dark_below`` set, a frame whose mean grey is under it is brightened first (a gamma
that brings its mean grey to about 100), so faces in a dim room are not left near black.

Local contrast: with ``input.clahe`` set (a clip limit, e.g. 2), each pass equalises its resized frame's
brightness by OpenCV's CLAHE on tiles of about ``CLAHE_TILE`` pixels (on the luma of a colour model's input), so
a face in a dark corner of a lit frame, or lit from one side, keeps its contrast; training applies the same.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgecam.manifest import Manifest, ModelError, load_manifest, session, to_tensor

logger = logging.getLogger(__name__)

_OUTPUT_KEYS = ("stride", "score_threshold", "nms_threshold", "peak_kernel", "top_k")
_INPUT_KEYS = ("color", "mean", "std", "pad_multiple", "max_side")
CLAHE_TILE = 64  # pixels per CLAHE tile side (``equalize``)
HEAD_CHANNELS = 13  # heat, box l,t,r,b, 4 landmarks x,y (see ``decode``)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first.

    Args:
        boxes: (N, 4) x1,y1,x2,y2.
        scores: (N,) scores.
        threshold: IoU above which the lower-scored box is dropped.
    """
    order = np.argsort(-scores, kind="stable")
    areas = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= threshold]
    return np.asarray(keep, np.int64)


def suppress_inner(boxes: np.ndarray, scores: np.ndarray, cover: float = 0.7, ratio: float = 4.0) -> np.ndarray:
    """Indices of the boxes kept when a box lying mostly (``cover`` of its area) inside a higher-scored box at
    least ``ratio`` times its area is dropped (a part of a big face found as a small face)."""
    areas = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
    lt = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)  # (N, N) [inner, outer]
    inside = (inter >= cover * areas[:, None]) & (areas[None, :] >= ratio * areas[:, None])
    inside &= scores[None, :] > scores[:, None]
    return np.nonzero(~inside.any(1))[0]


def decode(out: np.ndarray, spec: dict[str, Any], score_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of one (13, H, W) head map -> boxes (N, 5) x1,y1,x2,y2,score and landmarks (N, 4, 2), input pixels.

    Channel layout (``model.json`` ``output.channels``): 0 heat score; 1-4 log(l,t,r,b / stride) from the cell
    centre; 5-12 landmark x,y offsets from the cell centre divided by sqrt(box w * h).
    """
    stride, k = int(spec["stride"]), int(spec["peak_kernel"])
    heat = np.ascontiguousarray(out[0])
    peak = cv2.dilate(heat, np.ones((k, k), np.uint8)) == heat
    ys, xs = np.nonzero(peak & (heat >= score_threshold))
    scores = heat[ys, xs]
    top = np.argsort(-scores, kind="stable")[: int(spec["top_k"])]
    ys, xs, scores = ys[top], xs[top], scores[top]
    centre = np.stack([xs, ys], 1).astype(np.float32) * stride + (stride - 1) / 2  # (N, 2) x,y
    ltrb = np.exp(np.clip(out[1:5, ys, xs].T, -10, 10)) * stride  # (N, 4) l,t,r,b
    boxes = np.hstack([centre - ltrb[:, :2], centre + ltrb[:, 2:]])
    size = np.sqrt(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1))[:, None, None]
    lms = centre[:, None, :] + out[5:13, ys, xs].T.reshape(-1, 4, 2) * size  # (N, 4, 2) x,y
    return np.hstack([boxes, scores[:, None]]).astype(np.float32), lms.astype(np.float32)


class FaceDetector:
    """The face detector: ``det(bgr) -> (boxes (N, 5) x1,y1,x2,y2,score, landmarks (N, 4, 2))``.

    Landmarks: image-left eye, image-right eye, nose tip, mouth centre, in original image pixels.
    """

    def __init__(self, model: str | Path = "face_detector", score_threshold: float | None = None,
                 nms_threshold: float | None = None, threads: int = 1, providers: list[str] | None = None,
                 max_side: int | None = None, coarse_side: int | None = None):
        """Load the model folder (or shipped name) and warm it up.

        Args:
            model: shipped model name or path to a model folder / its ``model.json``.
            score_threshold: minimum score (default: the manifest's ``output.score_threshold``).
            nms_threshold: NMS IoU (default: the manifest's ``output.nms_threshold``).
            threads: onnxruntime intra-op threads.
            providers: onnxruntime execution providers (default CPU).
            max_side: downscale larger images to this long side first (default: ``input.max_side``).
            coarse_side: short side of the coarse pass for large faces, 0 = none (default: ``input.coarse_side``,
                none when the manifest has no such key).

        Raises:
            ModelError: a missing or bad model folder, manifest or ONNX file.
        """
        self.manifest: Manifest = load_manifest(model)
        self.input, self.output = self.manifest.input, self.manifest.output
        _check_keys(self.manifest, self.input, _INPUT_KEYS, "input")
        _check_keys(self.manifest, self.output, _OUTPUT_KEYS, "output")
        self.score_threshold = float(self.output["score_threshold"] if score_threshold is None else score_threshold)
        self.nms_threshold = float(self.output["nms_threshold"] if nms_threshold is None else nms_threshold)
        self.max_side = int(self.input["max_side"] if max_side is None else max_side)
        self.coarse_side = int(self.input.get("coarse_side", 0) if coarse_side is None else coarse_side)
        clip = float(self.input.get("clahe", 0))
        self.clahe = cv2.createCLAHE(clipLimit=clip) if clip > 0 else None
        self.session: Any = session(self.manifest, threads, providers)
        self.input_name = self.session.get_inputs()[0].name
        self._warm_up()
        logger.info("face detector %s loaded (threshold %.2f)", self.manifest.onnx_path, self.score_threshold)

    def __call__(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Detect faces in a BGR (or grey) uint8 image of any size.

        Returns:
            boxes (N, 5) float32 x1,y1,x2,y2,score and landmarks (N, 4, 2) float32 x,y, original pixels,
            best first; (0, 5) and (0, 4, 2) when there is no face.
        """
        img = _lift_dark(_check_image(bgr), float(self.input.get("dark_below", 0)))
        short = min(img.shape[:2])
        scale = min(1.0, self.max_side / max(img.shape[:2]))
        boxes, lms = self._detect(img, scale)
        if self.coarse_side and short * scale > 1.5 * self.coarse_side:
            cb, cl = self._detect(img, self.coarse_side / short)
            boxes, lms = np.concatenate([boxes, cb]), np.concatenate([lms, cl])
            keep = nms(boxes[:, :4], boxes[:, 4], self.nms_threshold)
            boxes, lms = boxes[keep], lms[keep]
        keep = suppress_inner(boxes[:, :4], boxes[:, 4])
        return boxes[keep].reshape(-1, 5), lms[keep].reshape(-1, 4, 2)

    def _detect(self, img: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """One pass on ``img`` resized by ``scale`` (<= 1): boxes (N, 5) and landmarks (N, 4, 2), ``img`` pixels."""
        h, w = img.shape[:2]
        if scale < 1.0:
            img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        if self.clahe is not None:
            img = equalize(img, self.clahe, self.input["color"])
        x = _pad(to_tensor([img], self.input), int(self.input["pad_multiple"]))
        out = self.session.run(None, {self.input_name: x})[0][0]
        boxes, lms = decode(out, self.output, self.score_threshold)
        keep = nms(boxes[:, :4], boxes[:, 4], self.nms_threshold)
        boxes, lms = boxes[keep], lms[keep]
        sx, sy = w / img.shape[1], h / img.shape[0]  # exact back-scale of the resize
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]] * sx, 0, w)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]] * sy, 0, h)
        lms *= np.array([sx, sy], np.float32)
        return boxes, lms

    def _warm_up(self) -> None:
        """Run once on a blank frame; ModelError when the ONNX graph does not fit the manifest's decoding."""
        x = _pad(to_tensor([np.zeros((240, 320, 3), np.uint8)], self.input), int(self.input["pad_multiple"]))
        try:
            out = self.session.run(None, {self.input_name: x})[0]
        except Exception as e:  # onnxruntime raises its own types for an input of the wrong shape or type
            raise ModelError(f"{self.manifest.onnx_path}: cannot run on a {x.shape} input "
                             f"({str(e).splitlines()[0][:160]})") from None
        if out.ndim != 4 or out.shape[1] != HEAD_CHANNELS:
            raise ModelError(f"{self.manifest.onnx_path}: output of shape {out.shape}, want (N, {HEAD_CHANNELS}, "
                             "H, W) (not a face detector?)")

    def close(self) -> None:
        """Release the onnxruntime session."""
        self.session = None


def _check_keys(m: Manifest, section: dict[str, Any], keys: tuple[str, ...], name: str) -> None:
    missing = [k for k in keys if k not in section]
    if missing:
        raise ModelError(f"{m.folder / 'model.json'}: '{name}' lacks {', '.join(missing)} (not a face detector?)")


def _check_image(img: np.ndarray) -> np.ndarray:
    """A uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image as grey or BGR; ValueError naming the shape."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        raise ValueError(f"image must be a uint8 numpy array, got {type(img).__name__} {getattr(img, 'dtype', '')}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3) or min(img.shape[:2]) < 1:
        raise ValueError(f"image shape {img.shape} is not (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    return img


def _lift_dark(img: np.ndarray, below: float, target: float = 100.0) -> np.ndarray:
    """A frame whose mean grey is under ``below`` (0 = never) brightened by the gamma that moves its mean grey
    to about ``target`` (a dim stage, a dark room without IR); other frames unchanged."""
    if below <= 0:
        return img
    mean = float(img.mean()) if img.ndim == 2 else float(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).mean())
    if mean >= below or mean < 1:
        return img
    gamma = np.log(target / 255) / np.log(mean / 255)
    return cv2.LUT(img, (255 * (np.arange(256) / 255) ** gamma).astype(np.uint8))


def equalize(img: np.ndarray, clahe: Any, color: str = "gray") -> np.ndarray:
    """``img`` after CLAHE (``cv2.createCLAHE``) on tiles of about ``CLAHE_TILE`` pixels: the grey image for a grey
    model, else the luma of a BGR image."""
    h, w = img.shape[:2]
    clahe.setTilesGridSize((max(1, round(w / CLAHE_TILE)), max(1, round(h / CLAHE_TILE))))
    if img.ndim == 2 or color == "gray":
        return clahe.apply(img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    ycc = cv2.cvtColor(img, cv2.COLOR_BGR2YCrCb)
    ycc[:, :, 0] = clahe.apply(ycc[:, :, 0])
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2BGR)


def _pad(x: np.ndarray, multiple: int) -> np.ndarray:
    """Zero-pad (the normalised mean grey) an NCHW batch at bottom/right to a multiple of ``multiple``."""
    h, w = x.shape[2:]
    ph, pw = -h % multiple, -w % multiple
    return np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw))) if ph or pw else x
