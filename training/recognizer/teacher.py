"""The SFace teacher: exact PyTorch replica from the ONNX file, and an onnxruntime embedder for caching.

SFace's ONNX graph takes ``data`` (B, 3, 112, 112) float RGB 0..255 and normalises inside ((x - 127.5) / 128);
its int8 block-quantised weights are dequantised here by running the graph's own DequantizeLinear nodes in
onnxruntime, so the replica uses exactly the numbers the ONNX model uses. Checked against
``cv2.FaceRecognizerSF.feature`` (cosine 1.0 on an aligned LFW crop; SFace's output does not depend on RGB
vs BGR order because its stem weights are equal across colour channels within int8 precision).

Usage: ``python -m training.recognizer.teacher --check`` loads the replica and prints the cosine between
PyTorch and onnxruntime embeddings on random crops.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from edgecam.manifest import session_options
from training.recognizer.model import DwSepBlock, FaceMobileNet, sface

ANCHORS = Path(__file__).resolve().parents[2] / "../shared/models/anchors"
SFACE_PATH = ANCHORS / "face_recognition_sface_2021dec_int8bq_ort.onnx"


def _onnx_tensors(path: Path) -> dict[str, np.ndarray]:
    """All initializers plus every dequantized / reshaped weight of the graph, by name."""
    model = onnx.load(str(path))
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    wanted = [o for n in model.graph.node if n.op_type in ("DequantizeLinear", "Reshape") for o in n.output]
    keep = {n.name for n in model.graph.node if n.op_type in ("DequantizeLinear", "Reshape")}
    nodes = [n for n in model.graph.node if n.name in keep]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(w, onnx.TensorProto.FLOAT, None) for w in wanted)
    del model.graph.input[:]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    tensors.update(zip(wanted, sess.run(wanted, {}), strict=True))
    return tensors


def _load_cba(mod: torch.nn.Module, t: dict[str, np.ndarray], conv: str, bn: str, act: str | None) -> None:
    """Copy conv weight, BN (gamma, beta, mean, var) and PReLU slopes into a Conv-BN-PReLU sequence."""
    conv_m = next(m for m in mod.modules() if isinstance(m, torch.nn.Conv2d))
    bn_m = next(m for m in mod.modules() if isinstance(m, torch.nn.BatchNorm2d))
    conv_m.weight.data = torch.from_numpy(t[f"{conv}_weight_reshaped"].astype(np.float32).copy())
    _load_bn(bn_m, t, bn)
    if act is not None:
        act_m = next(m for m in mod.modules() if isinstance(m, torch.nn.PReLU))
        act_m.weight.data = torch.from_numpy(t[f"{act}_gamma"].reshape(-1).astype(np.float32).copy())


def _load_bn(bn_m: torch.nn.Module, t: dict[str, np.ndarray], bn: str) -> None:
    for attr, key in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                      ("running_var", "moving_var")):
        getattr(bn_m, attr).data = torch.from_numpy(t[f"{bn}_{key}"].astype(np.float32).copy())


def sface_teacher(path: Path = SFACE_PATH) -> FaceMobileNet:
    """The SFace network in PyTorch with the ONNX file's (dequantized) weights, in eval mode."""
    t = _onnx_tensors(path)
    model = sface()
    _load_cba(model.stem, t, "conv_1_conv2d", "conv_1_batchnorm", "conv_1_relu")
    for i, block in enumerate(model.blocks, start=2):
        assert isinstance(block, DwSepBlock)
        _load_cba(block.dw, t, f"conv_{i}_dw_conv2d", f"conv_{i}_dw_batchnorm", f"conv_{i}_dw_relu")
        _load_cba(block.pw, t, f"conv_{i}_conv2d", f"conv_{i}_batchnorm", f"conv_{i}_relu")
    _load_bn(model.bn_feat, t, "bn1")
    model.fc.weight.data = torch.from_numpy(t["pre_fc1_weight_dequantized"].astype(np.float32).copy())
    model.fc.bias.data = torch.from_numpy(t["pre_fc1_bias_dequantized"].astype(np.float32).copy())
    _load_bn(model.bn_emb, t, "fc1")
    return model.eval()


class OnnxTeacher:
    """SFace in onnxruntime: (B, 112, 112, 3) uint8 RGB crops -> (B, 128) float32 embeddings."""

    def __init__(self, path: Path = SFACE_PATH, threads: int = 1):
        model = onnx.load(str(path))
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"  # the file fixes batch 1
        self.sess = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                         providers=["CPUExecutionProvider"])

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(rgb.transpose(0, 3, 1, 2), dtype=np.float32)
        return self.sess.run(None, {"data": x})[0].astype(np.float32)


def normalize_input(rgb_uint8: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB -> (B, 3, H, W) float tensor normalised as SFace wants ((x - 127.5) / 128)."""
    x = torch.from_numpy(np.ascontiguousarray(rgb_uint8)).permute(0, 3, 1, 2).float()
    return (x - 127.5) / 128.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", type=Path, default=SFACE_PATH, help="SFace ONNX file (default: ../shared anchors)")
    ap.add_argument("--check", action="store_true", help="compare the replica with onnxruntime on random crops")
    args = ap.parse_args()
    model = sface_teacher(args.onnx)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    with torch.no_grad():
        a = model(normalize_input(rgb)).numpy()
    b = OnnxTeacher(args.onnx)(rgb)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    print(f"torch vs onnxruntime cosine: min {cos.min():.6f}, max abs diff {np.abs(a - b).max():.2e}")


if __name__ == "__main__":
    main()
