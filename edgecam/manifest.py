"""Model artifacts: an ``.onnx`` file described by a ``model.json`` manifest.

The runtime reads preprocessing (input size, layout, colour order, normalisation) and output decoding from
the manifest, never from constants in code, and refuses a file whose sha256 does not match.

Manifest keys used here (a model kind may add its own under ``output``)::

    {"name": "face_detector", "file": "face_detector.onnx", "sha256": "...",
     "input": {"name": "input", "layout": "NCHW", "color": "gray" | "bgr" | "rgb",
               "size": [w, h] or null (any size), "mean": [..], "std": [..]},
     "output": {...}, "labels": [...], "metrics": {...}, "training_data": "...", "license": "...",
     "session_config": {"session.disable_quant_qdq": "1"}  (optional onnxruntime session config entries)}

Pixels are normalised as ``(pixel - mean) / std`` per channel, in the colour order of ``color``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgecam import MODELS_DIR, EdgecamError

logger = logging.getLogger(__name__)


class ModelError(EdgecamError):
    """A model folder, manifest or ONNX file that cannot be used."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A shipped model name (``face_detector``) or a path to a model folder or to its ``model.json``."""
    p = Path(name_or_path)
    if p.name == "model.json":
        p = p.parent
    if not p.exists() and (MODELS_DIR / str(name_or_path)).is_dir():
        p = MODELS_DIR / str(name_or_path)
    if not p.is_dir():
        raise ModelError(f"{name_or_path}: no such model folder (want a folder with model.json and the .onnx)")
    return p


@dataclass(frozen=True)
class Manifest:
    """A parsed, checked ``model.json`` and the path of its ONNX file."""

    folder: Path
    data: dict[str, Any]

    @property
    def onnx_path(self) -> Path:
        return self.folder / self.data["file"]

    @property
    def input(self) -> dict[str, Any]:
        return dict(self.data["input"])

    @property
    def output(self) -> dict[str, Any]:
        return dict(self.data.get("output", {}))

    @property
    def labels(self) -> list[str]:
        return list(self.data.get("labels", []))


def load_manifest(name_or_path: str | Path, check_sha: bool = True) -> Manifest:
    """Read and check a model folder's manifest (required keys, file present, sha256 match)."""
    folder = resolve_model_dir(name_or_path)
    mpath = folder / "model.json"
    try:
        data = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise ModelError(f"{mpath}: missing manifest") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{mpath}: manifest must be a JSON object")
    for key in ("file", "sha256", "input"):
        if key not in data:
            raise ModelError(f"{mpath}: missing key '{key}'")
    m = Manifest(folder, data)
    if not m.onnx_path.is_file():
        raise ModelError(f"{m.onnx_path}: model file missing (named by {mpath} key 'file')")
    if check_sha:
        digest = sha256_file(m.onnx_path)
        if digest != data["sha256"]:
            want = str(data["sha256"])[:12]
            raise ModelError(f"{m.onnx_path}: sha256 {digest[:12]}… does not match model.json ({want}…)")
    return m


def to_color(bgr: np.ndarray, color: str) -> np.ndarray:
    """A BGR (or grey) uint8 image in the colour order a model wants: ``gray``, ``bgr`` or ``rgb``."""
    if bgr.ndim == 2:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    if color == "gray":
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[:, :, None]
    if color == "rgb":
        return bgr[:, :, ::-1]
    if color == "bgr":
        return bgr
    raise ModelError(f"input.color '{color}' is not one of gray, bgr, rgb")


def to_tensor(images: list[np.ndarray] | np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Stack same-size BGR uint8 images into the float32 batch a model's ``input`` spec describes."""
    batch = np.stack([to_color(im, spec["color"]) for im in images]).astype(np.float32)  # (B, H, W, C)
    mean = np.asarray(spec.get("mean", [0.0]), np.float32)
    std = np.asarray(spec.get("std", [1.0]), np.float32)
    batch = (batch - mean) / std
    if spec.get("layout", "NCHW") == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch)


def session_options(threads: int = 1, config: dict[str, Any] | None = None) -> Any:
    """onnxruntime SessionOptions as edgecam runs models: ``threads`` intra-op threads (0 lets onnxruntime
    choose), one inter-op thread, quiet logs, and a manifest's ``session_config`` entries."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    for key, value in (config or {}).items():  # e.g. session.disable_quant_qdq
        opts.add_session_config_entry(str(key), str(value))
    return opts


def session(manifest: Manifest, threads: int = 1, providers: list[str] | None = None) -> Any:
    """An onnxruntime InferenceSession for a manifest's model; threads=0 lets onnxruntime choose."""
    import onnxruntime as ort

    opts = session_options(threads, manifest.data.get("session_config"))
    available = ort.get_available_providers()
    chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(manifest.onnx_path), opts, providers=chosen)
    except Exception as e:  # onnxruntime raises several unrelated types for a bad file
        raise ModelError(f"{manifest.onnx_path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None
