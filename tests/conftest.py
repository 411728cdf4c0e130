"""Shared fixtures: a real mosquitto broker on a free loopback port, and a subscriber that collects messages.

``broker`` starts one mosquitto per test (generated config, persistence on so a stopped-and-restarted broker
keeps the subscriber's session and the messages queued for it), stops it afterwards. ``Broker.stop()``,
``.start()``, ``.restart()`` and ``.kill()`` inject outages mid-test. ``broker_factory(extra_conf)`` starts
brokers with extra config lines (TLS listeners, password files, ACLs). ``collector(topics)`` subscribes with
QoS 1 on a persistent session and records every message with its arrival time.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

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


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


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
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

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
