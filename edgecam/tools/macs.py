"""Multiply-accumulates of an ONNX graph for one input shape (Conv, ConvTranspose, Gemm, MatMul).

Used by ``edgecam bench`` (what the detector and the recognizer spend per frame and per crop) and by
``edgecam models verify``. Needs the ``onnx`` package (its shape inference); the daemon itself never calls
this, so ``onnx`` stays out of the runtime dependencies: ``macs()`` raises ``MacsUnavailable`` without it.
Weights behind a ``DequantizeLinear`` (int8 QDQ models) are followed to their initializer. Element-wise ops,
pooling and activations are not counted (they are a few percent of a convolutional network).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class MacsUnavailable(RuntimeError):
    """MACs cannot be counted here (``onnx`` is not installed, or its shape inference failed)."""


def _fix_input(model: Any, shape: tuple[int, ...]) -> None:
    """Give the first graph input the static ``shape``; drop shapes recorded for another size."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise MacsUnavailable(f"input has {len(dims)} dimensions, asked for {shape}")
    for d, v in zip(dims, shape, strict=True):
        d.ClearField("dim_param")
        d.dim_value = int(v)
    del model.graph.value_info[:]
    for o in model.graph.output:
        o.type.tensor_type.ClearField("shape")


def _shapes(model: Any) -> dict[str, list[int]]:
    """Static shape of every tensor the shape inference could work out (initializers included)."""
    g = model.graph
    shapes = {i.name: list(i.dims) for i in g.initializer}
    for v in [*g.value_info, *g.output, *g.input]:
        dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            shapes[v.name] = dims
    for n in g.node:  # int8 weights: DequantizeLinear(w_int8) -> w
        if n.op_type == "DequantizeLinear" and n.input[0] in shapes:
            shapes.setdefault(n.output[0], shapes[n.input[0]])
    return shapes


def _node_macs(op: str, ins: list[list[int] | None], out: list[int] | None) -> int:
    """MACs of one node from its input and output shapes (0 when a shape is unknown)."""
    if op in ("Conv", "ConvTranspose"):
        w = ins[1] if len(ins) > 1 else None
        if w is None or out is None:
            return 0
        if op == "Conv":  # every output element: Cin/groups x kh x kw
            return int(np.prod(out)) * int(np.prod(w[1:]))
        x = ins[0]  # ConvTranspose: every input element scatters Cout/groups x kh x kw
        return int(np.prod(x)) * int(np.prod(w[1:])) if x is not None else 0
    if op in ("Gemm", "MatMul"):
        a = ins[0]
        if a is None or out is None:
            return 0
        return int(np.prod(out)) * int(a[-1])  # out (.., M, N), contracted over K = a's last dimension
    return 0


def count_macs(model: Any) -> int:
    """MACs of an ``onnx.ModelProto`` whose shapes are already inferred."""
    shapes = _shapes(model)
    total = 0
    for n in model.graph.node:
        ins = [shapes.get(x) for x in n.input]
        total += _node_macs(n.op_type, ins, shapes.get(n.output[0]) if n.output else None)
    return total


@lru_cache(maxsize=32)
def macs(path: Path, shape: tuple[int, ...]) -> int:
    """MACs of the ONNX file at ``path`` for one input of ``shape`` (e.g. ``(1, 1, 272, 480)``).

    Raises:
        MacsUnavailable: ``onnx`` is not installed, or the graph's shapes cannot be inferred for ``shape``.
    """
    try:
        import onnx
        from onnx import shape_inference
    except ImportError:
        raise MacsUnavailable("MACs need the onnx package (pip install onnx)") from None
    model = onnx.load(str(path))
    _fix_input(model, shape)
    try:
        model = shape_inference.infer_shapes(model)
    except Exception as e:  # onnx raises its own InferenceError and others
        raise MacsUnavailable(f"{path}: shape inference failed for {shape} ({e})") from None
    total = count_macs(model)
    logger.debug("%s: %d MACs for input %s", path, total, shape)
    return total
