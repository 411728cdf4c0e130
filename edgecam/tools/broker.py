"""A throwaway mosquitto on a free loopback port, for the measuring tools (``deploy/soak.py``,
``deploy/mqtt_latency.py``) when no broker is given."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from edgecam import EdgecamError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(workdir: Path, timeout: float = 10.0) -> tuple[subprocess.Popen[bytes], int]:
    """A mosquitto on a free loopback port with a generated config in ``workdir``; returns (process, port).

    Raises:
        EdgecamError: mosquitto is not installed or does not accept connections within ``timeout`` seconds.
    """
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise EdgecamError("mosquitto is not installed (apt-get install mosquitto), or pass --mqtt URL")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nuser {user}\n")
    proc = subprocess.Popen([exe, "-c", str(conf)],  # noqa: S603 - our own config, no shell
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise EdgecamError(f"mosquitto did not start on port {port} within {timeout:.0f} s")
