"""Export a trained detector to ONNX, check it, store its weights as int8 and write the model folder.

    python -m training.detector.export runs/detector/main/ckpt.pt --out edgecam/models/face_detector

Steps: EMA weights -> fold BatchNorm into the convs -> fp32 ONNX (dynamic H, W; heatmap sigmoid in the
graph) -> ``onnx.checker`` -> PyTorch vs onnxruntime comparison -> int8 weight storage: every conv weight
becomes an int8 initializer with a per-output-channel scale and a ``DequantizeLinear`` in front of the
conv (QDQ on weights only; activations stay fp32), tensor names shortened -> onnxruntime comparison of the
int8 file against fp32 -> ``model.json`` (input spec, decoding, sha256, training data, licence). A run
trained with ``int4`` (quantisation-aware) stores every conv but the first and the last as int4 instead.
The shipped file must stay <= 51,200 bytes.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from edgecam.manifest import sha256_file
from training.compress.export import ort_session
from training.detector.model import ConvBnAct, DeployHead
from training.detector.train import INPUT_MEAN, INPUT_STD, build_model, config_from_dict

logger = logging.getLogger(__name__)

MAX_BYTES = 51_200
OPSET = 17
SESSION_CONFIG = {"session.disable_quant_qdq": "1"}  # fold the weight DequantizeLinear at load: fp32 conv speed


def load_trained(ckpt_path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The EMA model of a checkpoint (eval mode) and its saved config dict."""
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    cfg = config_from_dict(ck["config"])
    model = build_model(cfg)
    model.load_state_dict(ck["ema"])
    return model.eval(), ck["config"] | {"step": ck["step"]} | ({"soup": ck["soup"]} if "soup" in ck else {})


def fold_bn(model: nn.Module) -> nn.Module:
    """Fold every ConvBnAct's BatchNorm into its conv (in place; eval mode)."""
    for mod in model.modules():
        if isinstance(mod, ConvBnAct) and isinstance(mod[0], nn.Conv2d) and isinstance(mod[1], nn.BatchNorm2d):
            mod[0] = fuse_conv_bn_eval(mod[0], mod[1])
            mod[1] = nn.Identity()
    return model


def in_channels(model: nn.Module) -> int:
    """1 for a grey model, 3 for a colour (BGR) one."""
    conv = model.get_submodule("stem.0")
    assert isinstance(conv, nn.Conv2d)
    return conv.in_channels


def export_fp32(model: nn.Module, path: Path, size: tuple[int, int] = (256, 320)) -> None:
    """Plain fp32 ONNX export with dynamic height and width, then ``onnx.checker``."""
    x = torch.zeros(1, in_channels(model), *size)
    torch.onnx.export(DeployHead(model).eval(), (x,), str(path), input_names=["input"], output_names=["out"],
                      dynamic_axes={"input": {2: "h", 3: "w"}, "out": {2: "h4", 3: "w4"}}, opset_version=OPSET,
                      dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def quantize_weights(src: Path, dst: Path, int4: bool = False) -> None:
    """int8 per-channel weight storage (QDQ on conv weights) with short tensor names; with ``int4`` every conv
    but the first and the last stores int4 (as ``train.int4_weights`` trained them), opset 21."""
    m = onnx.load(str(src))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    weights = [n.input[1] for n in g.node if n.op_type == "Conv" and n.input[1] in inits]
    int8_always = {weights[0], weights[-1]}  # the stem and the head
    new_inits, new_nodes = [], []
    for node in g.node:
        if node.op_type == "Conv" and node.input[1] in inits:
            bits = 4 if int4 and node.input[1] not in int8_always else 8
            qmax = 2 ** (bits - 1) - 1
            w = numpy_helper.to_array(inits.pop(node.input[1])).astype(np.float32)
            scale = np.maximum(np.abs(w).reshape(len(w), -1).max(1), 1e-8) / qmax
            q = np.clip(np.round(w / scale[:, None, None, None]), -qmax, qmax).astype(np.int8)
            name = node.input[1]
            if bits == 4:
                import ml_dtypes  # onnx >= 1.16 depends on it: its int4 arrays are what from_array packs

                q = q.astype(ml_dtypes.int4)
            new_inits += [numpy_helper.from_array(q, name + "q"),
                          numpy_helper.from_array(scale.astype(np.float32), name + "s")]
            new_nodes.append(helper.make_node("DequantizeLinear", [name + "q", name + "s"], [name], axis=0))
        new_nodes.append(node)
    del g.initializer[:]
    g.initializer.extend(list(inits.values()) + new_inits)
    del g.node[:]
    g.node.extend(new_nodes)
    if int4:  # int4 tensors need opset 21 (onnxruntime >= 1.19); the graph's other ops mean the same there
        m.opset_import[0].version = 21
    shorten_names(m)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(dst))


def shorten_names(m: onnx.ModelProto) -> None:
    """Rename every internal tensor to a short base-36 id, drop node names and doc strings."""
    g = m.graph
    keep = {i.name for i in g.input} | {o.name for o in g.output}
    names: dict[str, str] = {}

    def short(n: str) -> str:
        if n in keep or n == "":
            return n
        if n not in names:
            names[n] = np.base_repr(len(names), 36).lower()
        return names[n]

    for init in g.initializer:
        init.name = short(init.name)
    for node in g.node:
        node.name = ""
        node.doc_string = ""
        drop_default_attributes(node)
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    del g.value_info[:]
    m.producer_name, m.producer_version, m.doc_string, g.name = "edgecam", "", "", "d"


_DEFAULTS = {"dilations": {1}, "group": {1}, "pads": {0}, "strides": {1}}  # Conv attributes equal to the default


def drop_default_attributes(node: onnx.NodeProto) -> None:
    """Remove Conv attributes that only restate the default (saves bytes)."""
    if node.op_type != "Conv":
        return
    keep = [a for a in node.attribute
            if not (a.name in _DEFAULTS and set(helper.get_attribute_value(a) if a.type == onnx.AttributeProto.INTS
                                                else [helper.get_attribute_value(a)]) <= _DEFAULTS[a.name])]
    del node.attribute[:]
    node.attribute.extend(keep)


def ort_run(path: Path, x: np.ndarray, config: dict[str, str] | None = None) -> np.ndarray:
    """One onnxruntime run on one thread."""
    return ort_session(path, 1, config or {}).run(None, {"input": x})[0]


def compare(model: nn.Module, fp32: Path, int8: Path, image: np.ndarray | None = None) -> dict[str, float]:
    """Max abs differences: PyTorch vs onnxruntime fp32, and fp32 vs int8 heatmap, on test inputs."""
    rng = np.random.default_rng(0)
    xs = [rng.normal(0, 1, (1, in_channels(model), 96, 128)).astype(np.float32)]
    if image is not None:  # (H, W) grey or (H, W, 3) BGR, as the model reads
        x = (image.astype(np.float32) - INPUT_MEAN) / INPUT_STD
        xs.append(x[None, None] if x.ndim == 2 else x.transpose(2, 0, 1)[None])
    out = {"torch_vs_ort": 0.0, "fp32_vs_int8_heat": 0.0}
    for x in xs:
        with torch.no_grad():
            ref = DeployHead(model)(torch.from_numpy(x)).numpy()
        a = ort_run(fp32, x)
        b = ort_run(int8, x, SESSION_CONFIG)
        out["torch_vs_ort"] = max(out["torch_vs_ort"], float(np.abs(ref - a).max()))
        out["fp32_vs_int8_heat"] = max(out["fp32_vs_int8_heat"], float(np.abs(a[:, 0] - b[:, 0]).max()))
    return out


def manifest(onnx_name: str, sha: str, train_cfg: dict[str, Any], fp32_bytes: int, n_params: int) -> dict[str, Any]:
    """The ``model.json`` contents (metrics are filled in by ``evaluate.py``)."""
    return {
        "name": "face_detector",
        "file": onnx_name,
        "sha256": sha,
        "input": {"name": "input", "layout": "NCHW", "color": "bgr" if train_cfg.get("colour") else "gray",
                  "size": None, "mean": [INPUT_MEAN],
                  "std": [INPUT_STD], "pad_multiple": 32, "max_side": 640, "coarse_side": 160,
                  **({"clahe": clahe} if (clahe := (train_cfg.get("aug") or {}).get("clahe", 0)) else {})},
        "output": {
            "name": "out", "kind": "centernet", "stride": 4,
            "channels": "0 heat (sigmoid score); 1-4 box l,t,r,b as log(distance/stride) from the cell centre; "
                        "5-12 landmark x,y offsets from the cell centre divided by sqrt(box w*h)",
            "cell_centre": "(index * stride) + (stride - 1) / 2",
            "landmarks": ["image-left eye", "image-right eye", "nose tip", "mouth centre"],
            "box_convention": "landmarks -> similarity fit onto the ArcFace 112 template; box centre (56, 61), "
                              "size 76 x 102 template units (the median YuNet box in that frame)",
            "score_threshold": 0.5, "nms_threshold": 0.4, "peak_kernel": 3, "top_k": 300,
        },
        "session_config": SESSION_CONFIG,
        "labels": ["face"],
        "params": n_params,
        "fp32_bytes": fp32_bytes,
        "training": {**{k: train_cfg.get(k) for k in ("model", "iters", "batch", "lr", "seed", "pseudo", "step",
                                                       "webfaces_weight", "extra")},
                     **({"soup": train_cfg["soup"]} if "soup" in train_cfg else {}),
                     "config": train_cfg.get("run_config", "")},
        "training_data": "Caltech 10k WebFaces train split (6,383 images, landmarks -> boxes) + YuNet pseudo-labels "
                         "for unlabelled faces + 91 face-free negatives (SUN/Hays, scikit-image)"
                         + ("; YuNet-labelled scene, portrait and video-frame folders staged by training.fetched "
                            "and hard negatives mined from the model's own detections (sources and weights: "
                            "training.extra)" if train_cfg.get("extra") else ""),
        "license": "Apache-2.0 (weights trained from scratch by edgecam; training images are research-only)",
        "metrics": {},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", help="training checkpoint (ckpt.pt)")
    ap.add_argument("--out", default="edgecam/models/face_detector", help="model folder (default: %(default)s)")
    ap.add_argument("--image", default="", help="a test image for the comparison (default: random input only)")
    ap.add_argument("--data", default="../shared/data/detection/webfaces", help="WebFaces (default: %(default)s)")
    ap.add_argument("--threshold-images", type=int, default=500,
                    help="train images to pick the default score threshold on; 0 keeps 0.5 (default: %(default)s)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # 1. trained model, BN folded
    model, cfg = load_trained(Path(args.ckpt))
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model = fold_bn(model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # 2. fp32 export + checker, then int8 weight storage
    fp32 = Path(args.ckpt).with_name("face_detector_fp32.onnx")
    export_fp32(model, fp32)
    dst = out / "face_detector.onnx"
    int4 = bool(cfg.get("int4"))
    quantize_weights(fp32, dst, int4)
    # 3. PyTorch vs onnxruntime, fp32 vs int8
    image = None
    if args.image:
        import cv2

        image = cv2.imread(args.image, cv2.IMREAD_COLOR if cfg.get("colour") else cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise SystemExit(f"--image {args.image}: not a readable image")
        image = image[: image.shape[0] // 32 * 32, : image.shape[1] // 32 * 32]
    diffs = compare(model, fp32, dst, image)
    print(f"torch vs onnxruntime max |diff| {diffs['torch_vs_ort']:.2e}; "
          f"fp32 vs {'int4' if int4 else 'int8'} heatmap {diffs['fp32_vs_int8_heat']:.3f}")
    if diffs["torch_vs_ort"] > 1e-3:
        raise SystemExit(f"export mismatch: torch vs onnxruntime differ by {diffs['torch_vs_ort']:.2e}")
    size = dst.stat().st_size
    print(f"{dst}: {size} bytes (fp32 {fp32.stat().st_size}); {n_params} parameters")
    if size > MAX_BYTES:
        raise SystemExit(f"{dst}: {size} bytes is over the {MAX_BYTES}-byte budget")
    # 4. manifest (keeps metrics only if they were measured on this very file)
    mpath = out / "model.json"
    sha = sha256_file(dst)
    data = manifest(dst.name, sha, cfg, fp32.stat().st_size, n_params)
    if mpath.is_file():
        old = json.loads(mpath.read_text())
        if old.get("sha256") == sha:
            data["metrics"] = old.get("metrics", {})
    mpath.write_text(json.dumps(data, indent=2) + "\n")
    print(f"{mpath}: sha256 {sha[:12]}")
    # 5. default score threshold: best F1 (IoU 0.5) on TRAIN images (val stays untouched)
    if args.threshold_images:
        thr, f1 = pick_threshold(out, Path(args.data), args.threshold_images)
        data["output"]["score_threshold"] = thr
        data["output"]["score_threshold_note"] = (f"best F1 ({f1:.3f}, IoU 0.5) on the first {args.threshold_images} "
                                                  "WebFaces train images")
        mpath.write_text(json.dumps(data, indent=2) + "\n")
        print(f"score threshold {thr} (train F1 {f1:.3f})")


def pick_threshold(folder: Path, data: Path, n: int) -> tuple[float, float]:
    """Score threshold with the best F1 at IoU 0.5 on the first ``n`` train images, rounded to 0.05."""
    from edgecam.detect import FaceDetector
    from training.detector.evaluate import load_split, match

    images, gts, _ = load_split(data, "train", n)
    det = FaceDetector(folder, score_threshold=0.05)
    scores, tps, n_gt = match([det(im)[0] for im in images], gts, 0.5)
    best = (0.5, 0.0)
    for thr in np.arange(0.1, 0.9, 0.05):
        tp = int(tps[scores >= thr].sum())
        f1 = 2 * tp / max(int((scores >= thr).sum()) + n_gt, 1)
        if f1 > best[1]:
            best = (round(float(thr), 2), f1)
    return best


if __name__ == "__main__":
    main()
