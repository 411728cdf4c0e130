"""Model size as stored and as entropy-coded (Deep Compression's last step), and parameter counts of ONNX files.

- ``file``: bytes of the ``.onnx`` file;
- ``zip``: the file deflated (zlib level 9), what a zipped download costs;
- ``huffman``: the weights alone, each initializer Huffman-coded over its symbols — int8/uint8 tensors over
  their 256 values, float tensors over each of their 4 byte planes — plus a code-length table per tensor
  (1 byte per used symbol). Graph structure and names are not counted: this is the information in the
  weights, the figure Deep Compression reports.
"""

from __future__ import annotations

import heapq
import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def huffman_lengths(counts: dict[int, int]) -> dict[int, int]:
    """Code length per symbol of a Huffman code for the symbol counts."""
    if len(counts) == 1:
        return dict.fromkeys(counts, 1)
    heap = [(c, k, [s]) for k, (s, c) in enumerate(counts.items())]
    heapq.heapify(heap)
    lengths = dict.fromkeys(counts, 0)
    tie = len(heap)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    return lengths


def huffman_bytes(symbols: np.ndarray) -> int:
    """Bytes of the Huffman-coded symbols plus a table of one code length per used symbol."""
    vals, counts = np.unique(symbols, return_counts=True)
    lengths = huffman_lengths({int(v): int(c) for v, c in zip(vals, counts, strict=True)})
    bits = sum(lengths[int(v)] * int(c) for v, c in zip(vals, counts, strict=True))
    return (bits + 7) // 8 + len(vals)


def tensor_huffman_bytes(a: np.ndarray) -> int:
    """Huffman-coded bytes of one weight tensor (8-bit: over values; wider: over each byte plane)."""
    a = np.ascontiguousarray(a)
    if a.size == 0:
        return 0
    if a.dtype.itemsize == 1:
        return huffman_bytes(a.view(np.uint8).reshape(-1))
    planes = a.view(np.uint8).reshape(-1, a.dtype.itemsize)
    return sum(huffman_bytes(planes[:, k]) for k in range(a.dtype.itemsize))


def onnx_weights(path: Path) -> list[np.ndarray]:
    """The initializers (weights) of an ONNX file, plus Constant-node tensors."""
    model = onnx.load(str(path))
    arrays = [numpy_helper.to_array(t) for t in model.graph.initializer]
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.t is not None and a.t.dims:
                    arrays.append(numpy_helper.to_array(a.t))
    return arrays


def sizes(path: Path) -> dict[str, int]:
    """{"file", "zip", "huffman"} byte counts of an ONNX model (see module docstring)."""
    raw = Path(path).read_bytes()
    return {"file": len(raw), "zip": len(zlib.compress(raw, 9)),
            "huffman": int(sum(tensor_huffman_bytes(a) for a in onnx_weights(path)))}
