"""Export a PyTorch model to ONNX, checked: BN folded, ``onnx.checker``, PyTorch vs onnxruntime outputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from edgecam.manifest import session_options

logger = logging.getLogger(__name__)


def folder_session_config(path: Path | str | bytes) -> dict[str, str]:
    """``session_config`` of the model.json next to an ONNX file, when that manifest names this file."""
    if isinstance(path, bytes):
        return {}
    mj = Path(path).parent / "model.json"
    if not mj.exists():
        return {}
    data = json.loads(mj.read_text())
    return {str(k): str(v) for k, v in data.get("session_config", {}).items()} \
        if data.get("file") == Path(path).name else {}


def ort_session(path: Path | str | bytes, threads: int = 1,
                config: dict[str, str] | None = None) -> ort.InferenceSession:
    """A CPU onnxruntime session with ``threads`` intra-op threads, run as edgecam runs the model: with the
    session config entries ``config`` (default: those of the model.json next to the file, if any)."""
    opts = session_options(threads, folder_session_config(path) if config is None else config)
    src = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def prelu_as_mul_relu(model: onnx.ModelProto) -> int:
    """Rewrite every PRelu(x, a) node as a * x + (1 - a) * Relu(x) (exact); returns how many.

    onnxruntime's CPU PRelu kernel with per-channel slopes (C, 1, 1) is slow: on this machine it was about
    half the run time of a depthwise face net, while the same function as Mul / Relu / Mul / Add (whose
    broadcasting kernels are fast) ran 6-15x faster end to end. Quantization treats the new ops normally.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    alias = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity" and n.input[0] in inits}
    nodes, count = [], 0
    for n in g.node:
        a = alias.get(n.input[1], n.input[1]) if n.op_type == "PRelu" else ""
        if n.op_type != "PRelu" or a not in inits:  # the exporter shares equal weights through Identity
            nodes.append(n)
            continue
        x = n.input[0]
        y, p = n.output[0], f"{n.output[0]}_prelu"
        slope = onnx.numpy_helper.to_array(inits[a])
        g.initializer.append(onnx.numpy_helper.from_array((1 - slope).astype(slope.dtype), f"{p}_one_minus_a"))
        nodes += [onnx.helper.make_node("Mul", [x, a], [f"{p}_ax"]),
                  onnx.helper.make_node("Relu", [x], [f"{p}_relu"]),
                  onnx.helper.make_node("Mul", [f"{p}_relu", f"{p}_one_minus_a"], [f"{p}_brelu"]),
                  onnx.helper.make_node("Add", [f"{p}_ax", f"{p}_brelu"], [y])]
        count += 1
    del g.node[:]
    g.node.extend(nodes)
    return count


def export_onnx(model: nn.Module, path: Path, example: torch.Tensor, input_name: str = "input",
                output_name: str = "output", opset: int = 17, tol: float = 1e-3, fast_prelu: bool = True) -> float:
    """Fold BN into the preceding conv/linear, export with a dynamic batch, check; returns max |torch - ort|.

    With ``fast_prelu`` PRelu nodes are rewritten as Mul / Relu / Add (``prelu_as_mul_relu``, exact).
    Raises ValueError when onnxruntime's output differs from PyTorch's by more than ``tol``.
    """
    model = fuse(model.eval())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (example,), str(path), input_names=[input_name], output_names=[output_name],
                      dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}}, opset_version=opset,
                      dynamo=False)
    graph = onnx.load(str(path))
    if fast_prelu and prelu_as_mul_relu(graph):
        onnx.save(graph, str(path))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    with torch.no_grad():
        want = model(example).numpy()
    got = ort_session(path).run(None, {input_name: example.numpy()})[0]
    diff = float(np.abs(want - got).max())
    if diff > tol:
        raise ValueError(f"{path}: onnxruntime differs from PyTorch by {diff:.2e} (> {tol})")
    logger.info("exported %s (max |torch - ort| %.2e)", path, diff)
    return diff


def onnx_weights(path: Path) -> tuple[onnx.GraphProto, dict[str, np.ndarray]]:
    """An exported model's graph and its float32 initializers by name, with every int8 weight behind a
    ``DequantizeLinear`` (per output channel, symmetric: what ``edgecam quantize --weights-only`` writes)
    dequantized under the node's output name."""
    g = onnx.load(str(path)).graph
    arrays = {i.name: onnx.numpy_helper.to_array(i).astype(np.float32) for i in g.initializer}
    for n in g.node:
        if n.op_type == "DequantizeLinear":
            q, sc = arrays[n.input[0]], arrays[n.input[1]]
            arrays[n.output[0]] = q * sc.reshape(-1, *[1] * (q.ndim - 1))
    return g, arrays


@torch.no_grad()
def unfold_bn(model: nn.Module, folded: dict[nn.modules.batchnorm._BatchNorm, np.ndarray], x: torch.Tensor) -> None:
    """Give BatchNorms back to a model whose conv/linear weights came from an export with BN folded in.

    ``folded`` maps each BatchNorm to the bias the export folded into the layer before it. Each BatchNorm is
    first set to add exactly that bias in eval mode; then its running statistics are measured on ``x`` (a
    training batch) and its affine parameters set to undo them, so that in training mode too (batch
    statistics) the model computes nearly the exported function. Leaves the model in training mode.
    """
    stats: dict[nn.modules.batchnorm._BatchNorm, tuple[torch.Tensor, torch.Tensor]] = {}

    def measure(bn: nn.modules.batchnorm._BatchNorm, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        dims = [d for d in range(inp[0].ndim) if d != 1]  # every axis but the channels
        stats[bn] = (inp[0].mean(dims), inp[0].var(dims))

    hooks = []
    for bn, b in folded.items():
        assert bn.running_mean is not None and bn.running_var is not None
        bn.weight.fill_(1.0), bn.bias.copy_(torch.from_numpy(b)), bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        hooks.append(bn.register_forward_hook(measure))
    model.eval()(x)  # the exact exported function; the hooks see each BatchNorm's input statistics
    for h in hooks:
        h.remove()
    for bn, (mu, var) in stats.items():
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.copy_(mu), bn.running_var.copy_(var)
        bn.bias.add_(mu), bn.weight.copy_((var + bn.eps).sqrt())
    model.train()
