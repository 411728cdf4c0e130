"""Verify model folders against their model.json before shipping or after installing.

    python deploy/verify.py [MODEL_DIR_OR_NAME ...] [--json]

Same as ``edgecam models verify``: for every shipped model (default) or the named folders, the manifest keys
and model card, the sha256 of the ONNX file, the input spec against the graph, and a forward pass through the
runtime class of the model's kind. Prints a table (or JSON); exit 0 when every model passes, 2 otherwise.
A quantized folder written by ``deploy/quantize.py`` is checked the same way before it replaces a shipped one.
"""

from __future__ import annotations

import sys

from edgecam.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["models", "verify", *sys.argv[1:]]))
