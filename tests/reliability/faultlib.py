"""Helpers of the fault suite: real ``edgecam`` processes, configs, longer clips, produced-vs-received tallies.

Every fault test ends with a ``Tally`` of the events the daemon produced (its ``--events`` JSON lines, written
after the event is committed to the on-disk outbox) against the events a subscriber received, keyed by event
``(id, seq)``: lost, duplicated (QoS 1 redelivery; subscribers dedupe by ``(id, seq)``) and order.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import yaml
from conftest import Broker, Message, read_video

from edgecam import MODELS_DIR

ROOT = Path(__file__).resolve().parents[2]
CLIP = ROOT / "edgecam" / "data" / "corridor.mp4"
HAVE_CLIP_AND_DETECTOR = CLIP.exists() and (MODELS_DIR / "face_detector" / "model.json").exists()
CLIP_REASON = "needs the bundled clip and the shipped face_detector model"

Key = tuple[str, int]


def long_clip(path: Path, repeat: int) -> Path:
    """The bundled clip ``repeat`` times in a row (mp4v), for replays that outlast several injected faults."""
    frames = read_video(CLIP)
    cap = cv2.VideoCapture(str(CLIP))
    fps = cap.get(cv2.CAP_PROP_FPS) or 12.5
    cap.release()
    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for _ in range(repeat):
        for frame in frames:
            out.write(frame)
    out.release()
    return path


def write_config(path: Path, broker: Broker | None = None, **sections: Any) -> Path:
    """A YAML config at ``path``: fast MQTT reconnects to ``broker`` (when given) merged with ``sections``."""
    data: dict[str, Any] = {"state_dir": str(path.parent / "state")}
    if broker is not None:
        data["mqtt"] = {"host": broker.host, "port": broker.port, "keepalive": 5, "reconnect_min_s": 0.1,
                        "reconnect_max_s": 0.5}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data))
    return path


def replay_source(video: Path, speed: str = "realtime") -> dict[str, Any]:
    """A ``camera.source`` section replaying ``video`` (for ``edgecam run``: a camera that ends)."""
    return {"type": "replay", "path": str(video), "speed": speed}


def outbox_rows(events: list[dict[str, Any]]) -> int:
    """Rows a daemon without a recognizer queues for ``events``: each event, and one ``unknown`` recognition
    (``<base>/recognized``) per track."""
    return len(events) + len({e["id"] for e in events})


class Daemon:
    """One ``python -m edgecam ARGS`` child process; stderr goes to a file (``stderr()`` reads it)."""

    def __init__(self, args: list[str], workdir: Path, name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.stderr_path = workdir / f"{name}.stderr"
        self.stdout_path = workdir / f"{name}.stdout"
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(self.stderr_path, "w") as err, open(self.stdout_path, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "edgecam", *args], cwd=ROOT, env=full_env,
                                         stdout=out, stderr=err)
        self.started = time.monotonic()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        """The exit status; kills the process and fails when it outlives ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} did not exit within {timeout} s:\n{self.stderr()[-3000:]}") from None

    def signal(self, sig: int) -> None:
        if self.alive:
            self.proc.send_signal(sig)

    def terminate(self, timeout: float, status: int = 0) -> float:
        """SIGTERM; asserts an exit with ``status`` (0: clean; a replay that leaves events undelivered exits 1)
        within ``timeout``; returns the seconds it took."""
        t0 = time.monotonic()
        self.signal(signal.SIGTERM)
        assert self.wait(timeout) == status, self.stderr()[-3000:]
        return time.monotonic() - t0

    def kill(self) -> None:
        """SIGKILL and reap."""
        self.signal(signal.SIGKILL)
        self.proc.wait()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The events of a ``--events`` file (none when it was never created)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def event_key(event: dict[str, Any]) -> Key:
    return (str(event["id"]), int(event["seq"]))


@dataclass
class Tally:
    """Events produced vs received, by ``(id, seq)``."""

    produced: int
    received: int  # distinct events received
    deliveries: int  # messages received, duplicates included
    lost: int  # produced, never received
    duplicates: int  # deliveries - received
    extra: int  # received but not in the produced files (committed to the outbox just before a SIGKILL)
    in_order: bool  # first arrivals in the order they were produced (per camera)

    def figures(self) -> dict[str, Any]:
        return asdict(self)


def tally(produced: Iterable[dict[str, Any]], messages: Iterable[Message]) -> Tally:
    """Compare produced events (in production order, one camera) with the messages a subscriber got."""
    keys = [event_key(e) for e in produced]
    got = [event_key(json.loads(m.payload)) for m in messages]
    first = list(dict.fromkeys(got))
    want, seen = set(keys), set(first)
    in_order = [k for k in first if k in want] == [k for k in keys if k in seen]
    return Tally(produced=len(keys), received=len(want & seen), deliveries=len(got), lost=len(want - seen),
                 duplicates=len(got) - len(first), extra=len(seen - want), in_order=in_order)


def received_until_complete(sub: Any, topic: str, produced: list[dict[str, Any]], timeout: float) -> list[Message]:
    """Wait until every produced event arrived on ``topic`` (or ``timeout``); the messages on it."""
    want = {event_key(e) for e in produced}
    sub.wait_for(lambda ms: want <= {event_key(json.loads(m.payload)) for m in ms if m.topic == topic}, timeout)
    return list(sub.on(topic))


def traceback_free(text: str) -> bool:
    return "Traceback (most recent call last)" not in text


class TcpProxy:
    """A TCP relay in front of the broker that can lose the return path or cut every connection.

    ``hold_replies()``: bytes from the broker to the client are held back (a link that loses PUBACKs);
    ``cut()``: every relayed connection is closed at once and what was held is lost (Wi-Fi gone). New
    connections are relayed normally again after a cut.
    """

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host, self.target = host, target_port
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind((host, 0))
        self._server.listen(16)
        self.port = int(self._server.getsockname()[1])
        self._hold = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((self.host, self.target), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while replies and self._hold.is_set():
                    if src.fileno() < 0:
                        return
                    time.sleep(0.01)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def hold_replies(self) -> None:
        self._hold.set()

    def cut(self) -> None:
        """Close every relayed connection (held bytes are lost) and relay normally from now on."""
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._hold.clear()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._server.close()
