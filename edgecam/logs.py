"""Logging setup for the CLI and the daemon: stderr (journald under systemd), credentials masked."""

from __future__ import annotations

import logging
import sys

from edgecam.mqtt.config import install_secret_filter


def setup_logging(level: str) -> None:
    """Log to stderr at ``level`` (debug, info, warning, error); URL credentials and secrets are masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    install_secret_filter()
