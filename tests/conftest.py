"""Shared fixtures: a real mosquitto broker on a free loopback port, and a subscriber that collects messages.

``broker`` starts one mosquitto per test (generated config, persistence on so a stopped-and-restarted broker
keeps the subscriber's session and the messages queued for it), stops it afterwards. ``Broker.stop()``,
``.start()``, ``.restart()``, ``.kill()`` and ``.pause()`` / ``.resume()`` (SIGSTOP: a hung broker) inject
outages mid-test. ``broker_factory(extra_conf)`` starts
brokers with extra config lines (TLS listeners, password files, ACLs). ``collector(topics)`` subscribes with
QoS 1 on a persistent session and records every message with its arrival time.

``notify_socket`` is a fake systemd ``NOTIFY_SOCKET`` (a real unix datagram socket, read by a thread) for the
daemon in-process or as a child process. ``fault_report`` collects the figures of the fault and bad-input
suites (events produced / received / lost / duplicated, inputs tried / crashes); they are written to
``runs/reliability/report.json`` and printed at the end of the session.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
HAVE_MOSQUITTO = os.path.exists(MOSQUITTO)
needs_mosquitto = pytest.mark.skipif(
    not HAVE_MOSQUITTO, reason="mosquitto not installed (apt-get install mosquitto; `make test` does it)"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_video(path: Path) -> list[np.ndarray]:
    """Every frame of a video file, BGR."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def trackable(boxes: np.ndarray) -> np.ndarray:
    """The detections that can become a track (scored at least the tracker's gate), checking every other one is
    a small box (Grace Hopper's cap emblem scores about 0.5, a face 0.8: face detector card, Limits)."""
    from edgecam.config import TrackerConfig

    sure = boxes[:, 4] >= TrackerConfig().confirm_score
    assert np.all(np.maximum(boxes[~sure, 2] - boxes[~sure, 0], boxes[~sure, 3] - boxes[~sure, 1]) < 24), boxes
    return boxes[sure]


class Broker:
    """A mosquitto process on 127.0.0.1:<port> with a generated config under ``workdir``."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, extra_conf: str = "", port: int | None = None, listener: str | None = None):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.listener = listener if listener is not None else f"listener {self.port} {self.host}\nallow_anonymous true"
        self.log_path = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _write_conf(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"{self.listener}\n"
            f"user {getpass.getuser()}\n"  # as root, mosquitto would switch to user mosquitto: no access to workdir
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "max_queued_messages 100000\n"
            "set_tcp_nodelay true\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "connection_messages true\n"
            f"{self.extra_conf}\n"
        )
        return conf

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and wait until it accepts connections."""
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        conf = self._write_conf()
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not wait_until(self._accepting, timeout):
            err = self.proc.stderr.read().decode() if self.proc.poll() is not None and self.proc.stderr else ""
            self.stop()
            raise RuntimeError(f"mosquitto did not start on port {self.port}: {err}{self.log()[-2000:]}")

    def _accepting(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop mosquitto cleanly (SIGTERM: it saves its persistence file)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP mosquitto: connections stay open, nothing is answered (a hung broker, a half-open link)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL mosquitto (no persistence save): the harshest outage."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay away ``down_s`` seconds, start again on the same port."""
        self.stop()
        time.sleep(down_s)
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def broker_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Broker]]:
    """``make(extra_conf="", start=True, **kw) -> Broker``; every broker made is stopped at teardown."""
    if not HAVE_MOSQUITTO:
        pytest.skip("mosquitto not installed (apt-get install mosquitto; `make test` does it)")
    made: list[Broker] = []

    def make(extra_conf: str = "", start: bool = True, **kw: object) -> Broker:
        b = Broker(tmp_path_factory.mktemp("mosquitto"), extra_conf, **kw)  # type: ignore[arg-type]
        made.append(b)
        if start:
            b.start()
        return b

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def broker(broker_factory: Callable[..., Broker]) -> Broker:
    """A running mosquitto on a free loopback port (anonymous, persistence on)."""
    return broker_factory()


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    t: float  # time.monotonic() at arrival


@dataclass
class Collector:
    """A subscriber that records every message; persistent session, resubscribes after broker restarts."""

    host: str
    port: int
    topics: list[str]
    client_id: str = field(default_factory=lambda: f"collector-{uuid.uuid4().hex[:8]}")
    username: str | None = None
    password: str | None = None
    messages: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self.connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False)
        if self.username:
            self.client.username_pw_set(self.username, self.password)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.connect_async(self.host, self.port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError(f"collector could not connect to {self.host}:{self.port}")

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        for t in self.topics:
            client.subscribe(t, qos=1)
        self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic()))
            self._cond.notify_all()

    def on(self, topic: str) -> list[Message]:
        """Messages received so far on exactly ``topic``."""
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, predicate: Callable[[list[Message]], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate(messages)`` holds; returns whether it did."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True

    def wait_count(self, topic: str, n: int, timeout: float = 10.0) -> list[Message]:
        """Wait for at least ``n`` messages on ``topic``; returns them (maybe fewer after the timeout)."""
        self.wait_for(lambda ms: sum(m.topic == topic for m in ms) >= n, timeout)
        return self.on(topic)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def sync(self, topic: str, timeout: float = 10.0) -> bool:
        """Publish a unique marker to ``topic`` (one this collector subscribes to) and wait until it comes back:
        what the broker had for this subscriber before it (retained messages included) has arrived by then, so
        a test can check that something did *not* arrive without sleeping. The marker is not kept."""
        marker = f"sync-{uuid.uuid4().hex}".encode()
        self.publish(topic, marker)
        ok = self.wait_for(lambda ms: any(m.payload == marker for m in ms), timeout)
        with self._cond:
            self.messages = [m for m in self.messages if m.payload != marker]
        return ok

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def collector(broker: Broker) -> Iterator[Callable[..., Collector]]:
    """``collect(topics=["#"]) -> Collector`` on the ``broker`` fixture; all are stopped at teardown."""
    made: list[Collector] = []

    def make(topics: list[str] | None = None, **kw: object) -> Collector:
        c = Collector(broker.host, broker.port, topics or ["#"], **kw)  # type: ignore[arg-type]
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


# ---------------------------------------------------------------------------------------------- systemd notify


@dataclass
class Notification:
    text: str
    t: float  # time.monotonic() at arrival


class NotifySocket:
    """A fake systemd notify socket: a unix datagram socket whose datagrams a thread records with arrival times.

    ``env`` holds ``NOTIFY_SOCKET`` (and ``WATCHDOG_USEC`` when a watchdog interval is given) for a child
    process; ``monkeypatch.setenv`` the same for the daemon in-process.
    """

    def __init__(self, watchdog_s: float | None = None) -> None:
        self._dir = tempfile.mkdtemp(prefix="ntfy")  # short: unix socket paths are limited to ~107 bytes
        self.path = os.path.join(self._dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.env = {"NOTIFY_SOCKET": self.path}
        if watchdog_s is not None:
            self.env["WATCHDOG_USEC"] = str(int(watchdog_s * 1e6))
        self.messages: list[Notification] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="fake-systemd", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(Notification(data.decode("utf-8", "replace"), time.monotonic()))

    def texts(self, since: float = 0.0) -> list[str]:
        """Every datagram received at or after ``since`` (monotonic time)."""
        with self._lock:
            return [m.text for m in self.messages if m.t >= since]

    def times(self, line: str, since: float = 0.0) -> list[float]:
        """Arrival times of the datagrams holding ``line`` (e.g. ``WATCHDOG=1``)."""
        with self._lock:
            return [m.t for m in self.messages if m.t >= since and line in m.text.split("\n")]

    def status_lines(self) -> list[str]:
        """The ``STATUS=`` texts in order."""
        return [part[len("STATUS="):] for text in self.texts() for part in text.split("\n")
                if part.startswith("STATUS=")]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self.sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def notify_socket() -> Iterator[Callable[..., NotifySocket]]:
    """``make(watchdog_s=None) -> NotifySocket``; closed at teardown."""
    made: list[NotifySocket] = []

    def make(watchdog_s: float | None = None) -> NotifySocket:
        n = NotifySocket(watchdog_s)
        made.append(n)
        return n

    yield make
    for n in made:
        n.close()


# ---------------------------------------------------------------------------------------------- figures

REPORT_PATH = Path(__file__).resolve().parents[1] / "runs" / "reliability" / "report.json"


class FaultReport:
    """Rows of measured figures, one per fault or bad-input case, keyed by ``suite``."""

    def __init__(self) -> None:
        self.rows: list[dict[str, object]] = []

    def add(self, suite: str, name: str, **figures: object) -> None:
        """Record one row (``suite`` is ``faults``, ``badinput``, ``fuzz``, ``security`` or ``soak``)."""
        self.rows.append({"suite": suite, "name": name, **figures})

    def write(self, path: Path = REPORT_PATH) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.rows, indent=1, default=str) + "\n")


_REPORT = FaultReport()


@pytest.fixture
def fault_report() -> FaultReport:
    """The session's ``FaultReport`` (written to runs/reliability/report.json and summarised at the end)."""
    return _REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _REPORT.rows:
        return
    _REPORT.write()
    tr = terminalreporter
    tr.section("reliability figures")
    for row in _REPORT.rows:
        figures = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("suite", "name"))
        tr.write_line(f"{row['suite']:9} {row['name']}: {figures}")
    tr.write_line(f"(written to {REPORT_PATH})")
