"""systemd notify protocol against a fake NOTIFY_SOCKET (a real unix datagram socket)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecam import notify


class FakeSystemd:
    """A unix datagram socket standing in for systemd's notify socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(2.0)

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def nothing_pending(self) -> bool:
        self.sock.settimeout(0.05)
        try:
            self.sock.recv(4096)
        except (BlockingIOError, TimeoutError):
            return True
        finally:
            self.sock.settimeout(2.0)
        return False


@pytest.fixture
def fake_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield FakeSystemd(sock)
    sock.close()


def test_ready_status_watchdog_stopping(fake_systemd: FakeSystemd) -> None:
    assert notify.ready("camera up")
    assert fake_systemd.recv() == "READY=1\nSTATUS=camera up"
    assert notify.status("12.5 fps,\n broker connected")
    assert fake_systemd.recv() == "STATUS=12.5 fps, broker connected"
    assert notify.watchdog()
    assert fake_systemd.recv() == "WATCHDOG=1"
    assert notify.stopping()
    assert fake_systemd.recv() == "STOPPING=1"
    assert fake_systemd.nothing_pending()


def test_status_is_one_bounded_line(fake_systemd: FakeSystemd) -> None:
    notify.status("x" * 1000)
    msg = fake_systemd.recv()
    assert msg.startswith("STATUS=") and len(msg) <= len("STATUS=") + 200 and "\n" not in msg


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"edgecam-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.watchdog()
        assert sock.recv(100) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_no_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready() is False
    assert notify.watchdog() is False


def test_gone_socket_does_not_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing.sock"))
    assert notify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    assert notify.status("x") is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert notify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert notify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.setenv("WATCHDOG_USEC", "junk")
    assert notify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert notify.watchdog_interval() is None
