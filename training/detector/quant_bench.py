"""Which int8 form to ship: weight-only int8 storage vs full int8 execution, measured side by side.

    python -m training.detector.quant_bench runs/detector/main/face_detector_fp32.onnx

Variants, each timed as a bare single-thread ``session.run`` on a 320x240 frame (padded to 320x256) and
scored for AP on the first ``--limit`` WebFaces val images through the runtime decoder:
  * fp32: the plain export;
  * int8 weights, DQ folded: the shipped file with ``session.disable_quant_qdq=1`` (dequantized once at load);
  * int8 weights, DQ per run: the shipped file with onnxruntime defaults (DequantizeLinear every run);
  * full int8 (QDQ activations too): ``onnxruntime.quantization.quantize_static`` with a calibration reader
    over ``--calib`` TRAIN images (per-channel int8 weights, uint8 activations), run as QLinear kernels.
Writes ``OUT/quant_bench.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from training.compress.export import ort_session
from training.detector.data import read_bgr, read_split
from training.detector.evaluate import average_precision, load_split, match, model_folder, ours
from training.detector.export import SESSION_CONFIG
from training.detector.train import INPUT_MEAN, INPUT_STD


def grey_tensor(bgr: np.ndarray, pad: int = 32) -> np.ndarray:
    """A BGR image as the network's (1, 1, H, W) input, padded to a multiple of ``pad``."""
    g = (cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.float32) - INPUT_MEAN) / INPUT_STD
    h, w = g.shape
    return np.pad(g, ((0, -h % pad), (0, -w % pad)))[None, None]


class CalibReader:
    """onnxruntime calibration reader over grey train images."""

    def __init__(self, paths: list[Path]):
        self.items = iter([{"input": grey_tensor(read_bgr(p))} for p in paths])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def full_int8(fp32: Path, dst: Path, calib: list[Path]) -> None:
    """Static QDQ quantization of weights and activations."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(str(fp32), str(dst), CalibReader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)


def session_ms(path: Path, config: dict[str, str], x: np.ndarray, runs: int) -> float:
    """Median ms of a bare single-thread ``session.run``."""
    s = ort_session(path, 1, config or {})
    for _ in range(20):
        s.run(None, {"input": x})
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        s.run(None, {"input": x})
        t.append(time.perf_counter() - t0)
    return float(np.median(t) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fp32", help="fp32 export (face_detector_fp32.onnx from export.py)")
    ap.add_argument("--model", default="edgecam/models/face_detector", help="shipped folder (default: %(default)s)")
    ap.add_argument("--data", default="../shared/data/detection/webfaces", help="WebFaces (default: %(default)s)")
    ap.add_argument("--calib", type=int, default=64, help="train images to calibrate with (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=300, help="val images for AP (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=500, help="timed runs per variant (default: %(default)s)")
    ap.add_argument("--out", default="runs/detector/quant_bench", help="output folder (default: %(default)s)")
    args = ap.parse_args()

    # 1. the variants as model folders
    out, root, shipped = Path(args.out), Path(args.data), Path(args.model)
    out.mkdir(parents=True, exist_ok=True)
    calib = [root / "images" / n for n in read_split(root, "train")[: args.calib]]
    full_int8(Path(args.fp32), out / "full_int8.onnx", calib)
    variants = {
        "fp32": (Path(args.fp32), {}),
        "int8 weights, DQ folded at load (shipped)": (shipped / "face_detector.onnx", SESSION_CONFIG),
        "int8 weights, DQ every run": (shipped / "face_detector.onnx", {}),
        "full int8 (QDQ activations)": (out / "full_int8.onnx", {}),
    }
    # 2. latency of the bare session and AP through the runtime decoder
    images, gts, _ = load_split(root, "val", args.limit)
    x = grey_tensor(cv2.resize(images[0], (320, 240), interpolation=cv2.INTER_AREA))
    rows = {}
    for i, (name, (path, config)) in enumerate(variants.items()):
        folder = model_folder(path, shipped, out / f"v{i}", config)
        det = ours(folder, 0.05)
        dets = [det(im)[0] for im in images]
        rows[name] = {"session_ms": round(session_ms(path, config, x, args.runs), 3),
                      "ap30": round(average_precision(match(dets, gts, 0.3)[1], sum(len(g) for g in gts)), 4),
                      "ap50": round(average_precision(match(dets, gts, 0.5)[1], sum(len(g) for g in gts)), 4),
                      "file_bytes": path.stat().st_size}
        print(name, rows[name], flush=True)
    # 3. write
    report = {"command": "python -m training.detector.quant_bench " + " ".join(sys.argv[1:]),
              "val_images": len(images), "variants": rows}
    (out / "quant_bench.json").write_text(json.dumps(report, indent=2))
    print("| variant | session ms / 320x240 | AP@0.3 | AP@0.5 | file bytes |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['session_ms']:.3f} | {r['ap30']:.3f} | {r['ap50']:.3f} | {r['file_bytes']:,} |")


if __name__ == "__main__":
    main()
