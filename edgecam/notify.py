"""The systemd notify protocol (``sd_notify``) in a few lines: READY, WATCHDOG, STATUS, STOPPING.

systemd passes a unix datagram socket in ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace)
to a ``Type=notify`` service; the service sends ``KEY=VALUE`` lines to it. Outside systemd the variable is
unset and every function here is a no-op that returns ``False``. Sending never raises: a daemon must not die
because its supervisor went away.

Usage in the daemon::

    notify.ready()                      # camera and models are up (never wait for the broker)
    notify.status("12.5 fps, broker connected")
    notify.watchdog()                   # only while frames flow, every watchdog_interval() / 2 seconds
    notify.stopping()
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger(__name__)

_MAX_STATUS = 200  # characters kept of a STATUS= text (systemctl status shows one line)


def _socket_address() -> str | None:
    """The address in ``$NOTIFY_SOCKET``, abstract-namespace names (``@name``) as ``\\0name``; None when unset."""
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return None
    if addr.startswith("@"):
        return "\0" + addr[1:]
    if not addr.startswith("/"):
        logger.debug("NOTIFY_SOCKET %r is neither a path nor an abstract name; notify disabled", addr)
        return None
    return addr


def notify(message: str) -> bool:
    """Send one raw notify datagram (``KEY=VALUE`` lines).

    Args:
        message: The datagram text, e.g. ``"READY=1\\nSTATUS=running"``.

    Returns:
        True when the datagram was sent, False without ``$NOTIFY_SOCKET`` or when sending failed (logged).
    """
    addr = _socket_address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        logger.warning("systemd notify failed (%s): %s", message.split("=", 1)[0], exc)
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    """Tell systemd the service is up (``READY=1``), optionally with a STATUS text."""
    return notify("READY=1" + (f"\nSTATUS={_one_line(status_text)}" if status_text else ""))


def watchdog() -> bool:
    """Keep the systemd watchdog fed (``WATCHDOG=1``). Call only while the daemon does real work."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """Set the one-line status shown by ``systemctl status`` (``STATUS=...``)."""
    return notify(f"STATUS={_one_line(text)}")


def stopping() -> bool:
    """Tell systemd the service is shutting down (``STOPPING=1``)."""
    return notify("STOPPING=1")


def watchdog_interval() -> float | None:
    """The watchdog timeout systemd expects pings within, in seconds; None when the watchdog is off.

    Reads ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, which must be this process when set). Ping at about
    half this interval.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


def _one_line(text: str) -> str:
    """A status text squeezed onto one line and bounded in length."""
    return " ".join(text.split())[:_MAX_STATUS]
