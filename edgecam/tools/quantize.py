"""int8 static post-training quantization of any edgecam model folder, checked against its fp32 original.

    python deploy/quantize.py MODEL_DIR --calib DIR --out OUT_DIR [--check DIR] [--max 300] [--size WxH]
    python -m edgecam.tools.quantize ...           # the same (deploy/quantize.py is its command-line entry point)

MODEL_DIR holds an fp32 ``.onnx`` and its ``model.json`` (the input spec gives size, colour order and
normalisation; a model of any input size, like the detector, gets every image fitted into ``--size``).
Calibration images (``--calib``, any folder tree of .jpg/.png/.pgm/.bmp: for a recognizer,
aligned crops) run through a calibration data reader; activations get ranges from them (``--method``
minmax | percentile | entropy), weights are int8 per output channel (symmetric), activations uint8, in QDQ
format (onnxruntime fuses QDQ pairs into integer kernels; other runtimes read the same graph); tensor names
are then shortened (``--keep-names`` to keep them). Weights use 7 of their 8 bits by default (onnxruntime's
``reduce_range``): on x86 CPUs without VNNI (AVX2 only: Intel before Ice Lake / Cascade Lake, AMD before Zen 4)
onnxruntime's uint8 x int8 kernel adds pairs of products in int16 (``vpmaddubsw``), which saturates with full-range
weights and costs accuracy that a check on a VNNI or ARM machine never shows (a test model: output cosine 0.9998
with VNNI, 0.972 on AVX2; 0.9998 on both with 7-bit weights). ``--full-range`` keeps all 8 bits for a target
known to have VNNI or to be ARM. OUT_DIR gets
the int8 ``.onnx`` and a ``model.json`` with its sha256 and a ``quantization`` record: sizes, fp32-vs-int8
output agreement (cosine of outputs, top-1 agreement) on ``--check`` images (default: the calibration
images) and single-thread milliseconds per input of both.

``--weights-only``: int8 weights only (per output channel, symmetric, each behind a DequantizeLinear),
activations stay fp32; model.json gets ``session_config: {session.disable_quant_qdq: "1"}`` so that
onnxruntime folds the weights back to fp32 once, at load. The file is as small as the static one; it runs at
fp32 speed with nearly fp32 accuracy — the choice for a network whose int8 kernels are slower than fp32
(on x86, a PReLU net: the per-channel Mul / Add of its activations has no fast integer kernel).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edgecam import EdgecamError
from edgecam.manifest import Manifest, load_manifest, session_options, sha256_file, to_tensor

if TYPE_CHECKING:
    import onnxruntime as ort

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".pgm", ".bmp"}


def list_images(folder: Path, limit: int, seed: int = 0) -> list[Path]:
    """Up to ``limit`` image paths under ``folder`` (a seeded sample when there are more)."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXT)
    if not paths:
        raise EdgecamError(f"{folder}: no images (.jpg/.png/.pgm/.bmp) found for calibration")
    if len(paths) > limit:
        keep = np.random.default_rng(seed).choice(len(paths), limit, replace=False)
        paths = [paths[i] for i in sorted(keep)]
    return paths


def load_inputs(paths: list[Path], spec: dict, free_size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """Images -> the model's input batch (resized to the input size when the model has one; a model of any
    size, like the detector, gets each image fitted into ``free_size`` (w, h) rounded up to
    ``input.pad_multiple``, aspect kept, padded with the mean pixel)."""
    ims = []
    for p in paths:
        im = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if im is None:
            raise EdgecamError(f"{p}: not a readable image")
        if spec.get("size"):
            w, h = spec["size"]
            if im.shape[:2] != (h, w):
                im = cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA)
        else:
            im = fit(im, free_size, int(spec.get("pad_multiple", 1) or 1), spec.get("mean", [0.0]))
        ims.append(im)
    return to_tensor(ims, spec)


def fit(im: np.ndarray, size: tuple[int, int], multiple: int, mean: list[float]) -> np.ndarray:
    """``im`` scaled to fit (w, h) = ``size`` rounded up to ``multiple``, padded bottom/right with the mean."""
    w, h = (-(-v // multiple) * multiple for v in size)
    scale = min(w / im.shape[1], h / im.shape[0])
    im = cv2.resize(im, (max(1, round(im.shape[1] * scale)), max(1, round(im.shape[0] * scale))),
                    interpolation=cv2.INTER_AREA)
    fill = [float(np.mean(mean))] * 3
    return cv2.copyMakeBorder(im, 0, h - im.shape[0], 0, w - im.shape[1], cv2.BORDER_CONSTANT, value=fill)


class FolderReader:
    """onnxruntime CalibrationDataReader over a preprocessed batch, one input at a time."""

    def __init__(self, input_name: str, batch: np.ndarray) -> None:
        self.name, self.batch, self.i = input_name, batch, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.batch):
            return None
        self.i += 1
        return {self.name: self.batch[self.i - 1:self.i]}

    def rewind(self) -> None:
        self.i = 0


def quantize(fp32: Path, out: Path, calib: np.ndarray, input_name: str, method: str,
             reduce_range: bool = True) -> None:
    """Static QDQ int8 quantization (per-channel weights) of ``fp32`` into ``out``; ``reduce_range``: 7-bit
    weights, exact on x86 CPUs without VNNI (see the module docstring)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), FolderReader(input_name, calib), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        reduce_range=reduce_range, calibrate_method=methods[method],
                        extra_options={"CalibPercentile": 99.99} if method == "percentile" else None)


def compact_names(path: Path) -> None:
    """Rename the graph's tensors to short ids and drop node names and value_info (in place).

    Quantization names every tensor after its layer (``blocks.11.pw.0.weight_DequantizeLinear_Output``);
    in a sub-megabyte model those strings are several percent of the file. Inputs and outputs keep their
    names, so a manifest still describes the model.
    """
    import onnx

    model = onnx.load(str(path))
    g = model.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output} | {""}
    ids: dict[str, str] = {}

    def short(name: str) -> str:
        return name if name in keep else ids.setdefault(name, f"t{len(ids):x}")

    for t in g.initializer:
        t.name = short(t.name)
    for n in g.node:
        n.name, n.doc_string = "", ""
        n.input[:] = [short(x) for x in n.input]
        n.output[:] = [short(x) for x in n.output]
    del g.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def session(path: Path, threads: int = 1, config: dict | None = None) -> ort.InferenceSession:
    """A CPU onnxruntime session with ``threads`` threads and the given session config entries."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads, config), providers=["CPUExecutionProvider"])


def ms_per_input(path: Path, x: np.ndarray, input_name: str, n: int = 100, config: dict | None = None) -> float:
    """Median single-thread milliseconds of one input (batch 1) after a warm-up."""
    s = session(path, config=config)
    for i in range(10):
        s.run(None, {input_name: x[i % len(x):i % len(x) + 1]})
    times = []
    for i in range(n):
        t = time.perf_counter()
        s.run(None, {input_name: x[i % len(x):i % len(x) + 1]})
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def first_output(path: Path, x: np.ndarray, input_name: str, config: dict | None = None) -> np.ndarray:
    """(N, K) first output for each input, run one at a time (graphs exported with batch 1 work too)."""
    s = session(path, config=config)
    return np.concatenate([s.run(None, {input_name: x[i:i + 1]})[0].reshape(1, -1) for i in range(len(x))])


def compare(fp32: Path, int8: Path, x: np.ndarray, input_name: str, config: dict | None = None) -> dict[str, float]:
    """Agreement of the int8 model's outputs with fp32's on the same inputs, sizes and speed (``config``: the
    int8 model's onnxruntime session config entries)."""
    a, b = first_output(fp32, x, input_name), first_output(int8, x, input_name, config)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"inputs": len(x), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
            "fp32_bytes": fp32.stat().st_size, "int8_bytes": int8.stat().st_size,
            "fp32_ms": ms_per_input(fp32, x, input_name), "int8_ms": ms_per_input(int8, x, input_name, config=config)}


WEIGHTS_ONLY_CONFIG = {"session.disable_quant_qdq": "1"}  # onnxruntime folds DequantizeLinear(weights) at load


def quantize_weights(fp32: Path, out: Path) -> int:
    """int8 per-output-channel symmetric weights behind DequantizeLinear; activations stay fp32.

    Conv weights (output channels on axis 0), Gemm (axis 0 with transB, else 1) and 2-D MatMul initializers
    (axis 1). Returns the number of quantized tensors.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fp32))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    dq_nodes, done = [], 0
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
        trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
        axis = 0 if n.op_type == "Conv" or (n.op_type == "Gemm" and trans_b) else 1
        if w.ndim < 2 or (n.op_type == "MatMul" and w.ndim != 2):
            continue
        amax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(1)
        scale = np.maximum(amax / 127.0, 1e-12).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        name = n.input[1]
        g.initializer.remove(inits.pop(name))
        g.initializer.extend([numpy_helper.from_array(q, f"{name}_q"), numpy_helper.from_array(scale, f"{name}_s"),
                              numpy_helper.from_array(np.zeros_like(scale, np.int8), f"{name}_z")])
        dq_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [name],
                                         axis=axis))
        done += 1
    nodes = dq_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return done


def write_folder(src: Manifest, out_dir: Path, onnx_file: Path, record: dict,
                 session_config: dict | None = None) -> None:
    """OUT_DIR/model.json: the source manifest with the new file name, sha256, quantization record and (when
    given) onnxruntime session config entries."""
    data = dict(src.data)
    data["file"] = onnx_file.name
    data["sha256"] = sha256_file(onnx_file)
    data["quantization"] = record
    if session_config:
        data["session_config"] = {**data.get("session_config", {}), **session_config}
    (out_dir / "model.json").write_text(json.dumps(data, indent=2) + "\n")


def run(model_dir: Path, calib_dir: Path, out_dir: Path, check_dir: Path | None, limit: int, method: str,
        name: str | None = None, compact: bool = True, free_size: tuple[int, int] = (320, 240),
        weights_only: bool = False, full_range: bool = False, command: str | None = None) -> dict[str, Any]:
    """Quantize a model folder into ``out_dir``; returns the quantization record (``command``: how it was made,
    recorded in ``model.json``; default: this process's command line as ``deploy/quantize.py``)."""
    src = load_manifest(model_dir)
    spec = src.input
    input_name = spec.get("name", "input")
    calib = load_inputs(list_images(calib_dir, limit), spec, free_size)
    check = load_inputs(list_images(check_dir, limit, seed=1), spec, free_size) if check_dir else calib
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / (name or src.onnx_path.name.replace(".onnx", "") + "_int8.onnx")
    if dst.resolve() == src.onnx_path.resolve():
        raise EdgecamError(f"{dst}: would overwrite the fp32 source model")
    if weights_only:
        quantize_weights(src.onnx_path, dst)
        how, config = ("int8 weights (per output channel, symmetric) behind DequantizeLinear, fp32 activations; "
                       "onnxruntime folds the weights at load (session.disable_quant_qdq)"), WEIGHTS_ONLY_CONFIG
    else:
        quantize(src.onnx_path, dst, calib, input_name, method, reduce_range=not full_range)
        bits = "8-bit (full range)" if full_range else "7-bit (reduce_range: no int16 saturation without VNNI)"
        how, config = (f"onnxruntime static QDQ, per-channel int8 weights {bits}, uint8 activations, {method}",
                       None)
    if compact:
        compact_names(dst)
    record = {"method": how, "calibration_images": 0 if weights_only else len(calib),
              "check": compare(src.onnx_path, dst, check, input_name, config),
              "command": command or " ".join(["python", "deploy/quantize.py", *sys.argv[1:]])}
    write_folder(src, out_dir, dst, record, config)
    for extra in ["README.md", *(p.name for p in sorted(model_dir.glob("*.png")))]:  # the card and its plots
        if (model_dir / extra).exists() and not (out_dir / extra).exists():
            shutil.copy(model_dir / extra, out_dir / extra)
    return record


def main() -> None:
    """The command line (``deploy/quantize.py``); exit 2 with one line on bad input."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path, help="folder with the fp32 .onnx and model.json")
    ap.add_argument("--calib", type=Path, required=True, help="folder of calibration images")
    ap.add_argument("--out", type=Path, required=True, help="output model folder")
    ap.add_argument("--check", type=Path, default=None, help="folder of check images (default: --calib)")
    ap.add_argument("--max", type=int, default=300, help="images used from each folder (default: 300)")
    ap.add_argument("--method", choices=["minmax", "percentile", "entropy"], default="percentile",
                    help="activation range calibration (default: percentile, 99.99)")
    ap.add_argument("--name", default=None, help="output .onnx file name (default: <fp32 name>_int8.onnx)")
    ap.add_argument("--weights-only", action="store_true",
                    help="int8 weights only, fp32 activations, folded at load (default: static int8 QDQ)")
    ap.add_argument("--full-range", action="store_true", help="static int8: 8-bit weights, only for targets with "
                    "VNNI or ARM; they lose accuracy on AVX2-only x86 (default: 7-bit weights, exact everywhere)")
    ap.add_argument("--keep-names", action="store_true",
                    help="keep the quantizer's long tensor names (default: renamed to short ids)")
    ap.add_argument("--size", default="320x240", help="WxH the images are fitted into for a model of any input "
                    "size, like the detector (default: 320x240)")
    args = ap.parse_args()
    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        if len(size) != 2 or min(size) < 8:
            raise ValueError
    except ValueError:
        print(f"error: --size {args.size!r}: want WxH, e.g. 320x240", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        record = run(args.model_dir, args.calib, args.out, args.check, args.max, args.method, args.name,
                     not args.keep_names, (size[0], size[1]), args.weights_only, args.full_range)
    except EdgecamError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(record["check"]))


if __name__ == "__main__":
    main()
