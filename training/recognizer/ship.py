"""Ship the recognizer: export the last stage to ONNX, quantize to int8, calibrate thresholds, write the folder.

    python -m training.recognizer.ship --ckpt runs/recognizer/finetune/ckpt.pt --data runs/recognizer/data_det2

1. export the checkpoint (BN folded, checked against PyTorch) to ``runs/recognizer/ship/fp32/``; ``--flip``
   puts the mirror fusion in the graph (``model.FlipFusion``: embedding of the crop + that of its mirror,
   twice the time per crop for a few tenths of a point);
2. write calibration crops (300 aligned training-pool crops, never the eval or calib people) as PNG;
3. ``edgecam.tools.quantize`` (``deploy/quantize.py``) twice, each checked against fp32: static int8 QDQ
   (per-channel weights, uint8 activations) into ``int8_static/`` and int8 weights only (fp32 activations,
   folded at load) into ``int8_weights/``; the latter is shipped (on this x86 CPU onnxruntime's int8 kernels
   ran this PReLU net slower than fp32, and the static one loses accuracy); ``--static`` ships the former;
4. provisional thresholds on the LFW ``calib`` people with the int8 model (open-set protocol of ``evaluate``):
   ``known`` = the score that 1 % of non-enrolled probes reach, ``unknown`` = the one 5 % reach; from only
   20 non-enrolled people they do not hold on new people (issue 11): ``python -m training.recognizer.calibrate
   --config training/recognizer/configs/calibrate.yaml`` sets the shipped ones on thousands of strangers;
5. ``edgecam/models/face_recognizer/``: ``face_recognizer.onnx`` + ``model.json``. The model card and the
   metrics come from ``training.recognizer.report``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch

from edgecam.manifest import sha256_file, to_tensor
from training.compress.distill import load_model
from training.compress.export import export_onnx, onnx_weights, ort_session, unfold_bn
from training.recognizer.data import DEFAULT_OUT, CropSet
from training.recognizer.evaluate import calibrate, embed_all, people_of
from training.recognizer.model import DwSepBlock, FaceMobileNet, FlipFusion, NetConfig
from training.recognizer.teacher import normalize_input

REPO = Path(__file__).resolve().parents[2]
INPUT_SPEC = {"name": "input", "layout": "NCHW", "color": "rgb", "size": [112, 112],
              "mean": [127.5, 127.5, 127.5], "std": [128.0, 128.0, 128.0]}


def onnx_embedder(path: Path, spec: dict, threads: int = 1) -> object:
    """(N, 112, 112, 3) RGB uint8 crops -> (N, D) outputs of an ONNX model, preprocessed as edgecam does."""
    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    w, h = spec.get("size") or (112, 112)

    def run(rgb: np.ndarray) -> np.ndarray:
        bgr = [np.ascontiguousarray(c[:, :, ::-1]) for c in rgb]
        if (w, h) != (112, 112):
            bgr = [cv2.resize(c, (w, h), interpolation=cv2.INTER_AREA) for c in bgr]
        return np.concatenate([sess.run(None, {name: to_tensor(bgr[i:i + 1], spec)})[0]
                               for i in range(len(bgr))]) if spec.get("fixed_batch") else \
            sess.run(None, {name: to_tensor(bgr, spec)})[0]

    return run


@torch.no_grad()
def student_from_onnx(path: Path, x: torch.Tensor) -> FaceMobileNet:
    """The PyTorch student of a shipped recognizer file (``export_checkpoint``'s output, int8 weights or not):
    the architecture read from the graph (widths, strides, low-rank 1x1 convs, low-rank head), the dequantized
    weights, the folded BatchNorms given back (``unfold_bn`` on ``x``, normalised crops), in training mode.

    How the next stage starts from a shipped model when its checkpoint is gone (``train finetune --from X.onnx``).
    """
    g, w = onnx_weights(path)
    convs = [n for n in g.node if n.op_type == "Conv"]
    attr = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in convs]
    # PReLU slopes by the conv output they act on (exported as a * x + (1 - a) * relu(x): ``prelu_as_mul_relu``)
    slope = {n.input[0]: w[n.input[1]].reshape(-1) for n in g.node if n.op_type == "Mul" and n.input[1] in w}
    groups = [[0]]  # stem, then per block: depthwise, one or two 1x1 convs; the last conv is the head's
    for k, a in enumerate(attr[1:-1], start=1):
        (groups.append([k]) if a["group"] > 1 else groups[-1].append(k))
    blocks = tuple((int(w[convs[g_[-1]].input[1]].shape[0]), int(attr[g_[0]]["strides"][0])) for g_ in groups[1:])
    ranks = tuple(int(w[convs[g_[1]].input[1]].shape[0]) if len(g_) == 3 else 0 for g_ in groups[1:])
    head_w = w[convs[-1].input[1]]
    stem_stride = int(attr[0]["strides"][0])
    size = head_w.shape[-1] * stem_stride * int(np.prod([s for _, s in blocks]))  # the head spans the final map
    gemm = next(n for n in g.node if n.op_type == "Gemm")
    cfg = NetConfig(stem=int(w[convs[0].input[1]].shape[0]), blocks=blocks, stem_stride=stem_stride, input_size=size,
                    emb=int(w[gemm.input[1]].shape[0]), head="lowrank", head_rank=head_w.shape[0] // blocks[-1][0],
                    pw_ranks=ranks)
    model = FaceMobileNet(cfg)
    folded: dict[torch.nn.modules.batchnorm._BatchNorm, np.ndarray] = {}
    seqs = [model.stem] + [m for b in model.blocks if isinstance(b, DwSepBlock) for m in (b.dw, b.pw)]
    node_groups = [[0]] + [part for g_ in groups[1:] for part in ([g_[0]], g_[1:])]
    for seq, ks in zip(seqs, node_groups, strict=True):
        layers = [m for m in seq if isinstance(m, torch.nn.Conv2d)]
        for conv, k in zip(layers, ks, strict=True):
            conv.weight.copy_(torch.from_numpy(w[convs[k].input[1]]))
        last = convs[ks[-1]]
        folded[next(m for m in seq if isinstance(m, torch.nn.BatchNorm2d))] = w[last.input[2]]
        next(m for m in seq if isinstance(m, torch.nn.PReLU)).weight.copy_(torch.from_numpy(slope[last.output[0]]))
    bn = next(n for n in g.node if n.op_type == "BatchNormalization")
    for name, value in zip(("weight", "bias", "running_mean", "running_var"), bn.input[1:], strict=True):
        getattr(model.bn_feat, name).copy_(torch.from_numpy(w[value]))
    head = next(m for m in model.head_spatial.modules() if isinstance(m, torch.nn.Conv2d))
    head.weight.copy_(torch.from_numpy(head_w))
    model.fc.weight.copy_(torch.from_numpy(w[gemm.input[1]]))
    model.fc.bias.zero_()
    folded[model.bn_emb] = w[gemm.input[2]]
    unfold_bn(model, folded, x)
    return model


def export_checkpoint(ckpt: Path, onnx_path: Path, data: CropSet, flip: bool = False) -> float:
    """Export a checkpoint's model to ONNX (input ``input``, output ``embedding``); returns the check diff.

    With ``flip`` the graph embeds the crop and its mirror and sums the two unit vectors (``FlipFusion``).
    """
    model = load_model(ckpt)
    if flip:
        model = FlipFusion(model).eval()
    example = normalize_input(np.asarray(data.crops[:4]))
    return export_onnx(model, onnx_path, example, "input", "embedding")


def manifest(onnx_path: Path, thresholds: dict, extra: dict) -> dict:
    """The recognizer's model.json content."""
    return {"name": "face_recognizer", "file": onnx_path.name, "sha256": sha256_file(onnx_path),
            "input": INPUT_SPEC,
            "output": {"name": "embedding", "type": "embedding", "dim": 128, "normalize": "l2",
                       "thresholds": thresholds},
            "labels": [], **extra}


def write_calib_crops(data: CropSet, folder: Path, n: int = 300) -> None:
    """PNG crops (BGR files) from the training pool, seeded."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    pool = np.concatenate([data.indices("webfaces"), data.indices("lfw", "train")])
    for i in np.random.default_rng(3).choice(pool, n, replace=False):
        cv2.imwrite(str(folder / f"{i:06d}.png"), np.asarray(data.crops[i])[:, :, ::-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, default=REPO / "runs/recognizer/finetune/ckpt.pt",
                    help="checkpoint of the last float stage (default: %(default)s)")
    ap.add_argument("--data", type=Path, default=DEFAULT_OUT, help="crop folder (default: %(default)s)")
    ap.add_argument("--flip", action="store_true",
                    help="embed the crop and its mirror in one graph (default: the plain network)")
    ap.add_argument("--static", action="store_true",
                    help="ship the static int8 model (int8 activations too) instead of the int8-weights one")
    ap.add_argument("--work", type=Path, default=REPO / "runs/recognizer/ship", help="scratch (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=REPO / "edgecam/models/face_recognizer",
                    help="model folder to write (default: %(default)s)")
    ap.add_argument("--run-config", default="training/recognizer/configs/recognizer.yaml",
                    help="the run config of the chain this checkpoint came from, recorded in model.json as "
                         "training.config (default: %(default)s)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = CropSet.load(args.data)

    # 1. export fp32
    fp32_dir = args.work / "fp32"
    fp32_dir.mkdir(parents=True, exist_ok=True)
    diff = export_checkpoint(args.ckpt, fp32_dir / "face_recognizer_fp32.onnx", data, flip=args.flip)
    placeholder = {"known": 0.5, "unknown": 0.4}
    (fp32_dir / "model.json").write_text(json.dumps(manifest(fp32_dir / "face_recognizer_fp32.onnx", placeholder,
                                                             {}), indent=2))

    # 2-3. calibration crops; int8 both ways: static (weights + activations) and weights-only
    write_calib_crops(data, args.work / "calib_crops")
    for kind, flags in (("int8_static", []), ("int8_weights", ["--weights-only"])):
        subprocess.run([sys.executable, str(REPO / "deploy/quantize.py"), str(fp32_dir), "--calib",
                        str(args.work / "calib_crops"), "--out", str(args.work / kind), "--name",
                        "face_recognizer.onnx", *flags], check=True)
    int8_dir = args.work / ("int8_static" if args.static else "int8_weights")
    int8_json = json.loads((int8_dir / "model.json").read_text())
    quant = int8_json["quantization"]

    # 4. thresholds on the calib people with the int8 model
    int8 = int8_dir / "face_recognizer.onnx"
    people = people_of("calib", data)
    idx = np.array(sorted({i for v in people.values() for i in v}))
    emb = embed_all(onnx_embedder(int8, INPUT_SPEC), data.crops, idx)  # type: ignore[arg-type]
    thr = calibrate(emb, people)
    thresholds = {"known": round(thr["known"], 4), "unknown": round(thr["unknown"], 4),
                  "calibration": f"LFW calib people ({len(people)}, disjoint from training and eval): known = "
                                 "score reached by 1 % of non-enrolled probes, unknown = by 5 %",
                  "command": "python -m training.recognizer.ship"}

    # 5. the model folder (metrics and card are added by training.recognizer.report)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copy(int8, args.out / "face_recognizer.onnx")
    old = json.loads((args.out / "model.json").read_text()) if (args.out / "model.json").exists() else {}
    extra = {"source_checkpoint": str(args.ckpt.resolve().relative_to(REPO)) if args.ckpt.resolve().is_relative_to(REPO)
             else str(args.ckpt), "mirror_fusion": args.flip, "training": {"config": args.run_config},
             "quantization": quant, "export_check_max_abs_diff": diff,
             "metrics": {k: v for k, v in old.get("metrics", {}).items() if k != "calibration"},  # another model's
             "training_data": "distilled from SFace on aligned crops of Caltech WebFaces (all 10,524 labelled "
                              "faces) and LFW train people (research-only data, not redistributed)",
             "teacher": "SFace 2021dec (OpenCV Zoo, Apache-2.0)",
             "license": "Apache-2.0 (weights derived from SFace, Apache-2.0; trained on research-only data)"}
    if "session_config" in int8_json:
        extra["session_config"] = int8_json["session_config"]
    m = manifest(args.out / "face_recognizer.onnx", thresholds, extra)
    (args.out / "model.json").write_text(json.dumps(m, indent=2) + "\n")
    print(json.dumps({"thresholds": thresholds, "quantization": quant["check"], "export_diff": diff}))


if __name__ == "__main__":
    main()
