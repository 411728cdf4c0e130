"""edgecam: selective-attention face events for IoT cameras."""

from pathlib import Path

__version__ = "0.1.0"

MODELS_DIR = Path(__file__).parent / "models"
"""Folder of the shipped models, one sub-folder per model (``.onnx`` + ``model.json``)."""


class EdgecamError(Exception):
    """A user-facing error: bad input, config or model. The CLI prints its message in one line, exit 2."""
