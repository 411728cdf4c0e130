"""Export a PyTorch model to ONNX, checked: BN folded, ``onnx.checker``, PyTorch vs onnxruntime outputs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

logger = logging.getLogger(__name__)


def ort_session(path: Path | str | bytes, threads: int = 1) -> ort.InferenceSession:
    """A CPU onnxruntime session with ``threads`` intra-op threads."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def export_onnx(model: nn.Module, path: Path, example: torch.Tensor, input_name: str = "input",
                output_name: str = "output", opset: int = 17, tol: float = 1e-3) -> float:
    """Fold BN into the preceding conv/linear, export with a dynamic batch, check; returns max |torch - ort|.

    Raises ValueError when onnxruntime's output differs from PyTorch's by more than ``tol``.
    """
    model = fuse(model.eval())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (example,), str(path), input_names=[input_name], output_names=[output_name],
                      dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}}, opset_version=opset,
                      dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    with torch.no_grad():
        want = model(example).numpy()
    got = ort_session(path).run(None, {input_name: example.numpy()})[0]
    diff = float(np.abs(want - got).max())
    if diff > tol:
        raise ValueError(f"{path}: onnxruntime differs from PyTorch by {diff:.2e} (> {tol})")
    logger.info("exported %s (max |torch - ort| %.2e)", path, diff)
    return diff
