"""Publisher against a real mosquitto: PUBACK deletes outbox rows, outages, restarts, bounds, states, snapshot."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import Broker, Collector, Message, free_port, wait_until

from edgecam.mqtt.outbox import Outbox
from edgecam.mqtt.publish import OUTBOX_FILE, MqttConfig, Publisher

CAM = "door"
EVENTS = f"edgecam/{CAM}/events"


def make_cfg(port: int, **kw: Any) -> MqttConfig:
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "keepalive": 5,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "flush_timeout_s": 5.0,
    }
    return MqttConfig(**(base | kw))


def event(i: int) -> dict[str, Any]:
    return {"id": f"ev-{i:05d}", "type": "new", "camera": CAM, "score": np.float32(0.5), "box": np.arange(4)}


def first_arrivals(msgs: list[Message]) -> list[str]:
    """Event ids in order of first arrival (QoS 1 may deliver duplicates; subscribers dedupe by id)."""
    seen: set[str] = set()
    out: list[str] = []
    for m in msgs:
        i = json.loads(m.payload)["id"]
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


def rows_on_disk(state_dir: Path) -> int:
    with sqlite3.connect(state_dir / OUTBOX_FILE) as db:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


@pytest.fixture
def publisher_factory(tmp_path: Path) -> Any:
    made: list[Publisher] = []

    def make(port: int, state_dir: Path | None = None, camera: str = CAM, **kw: Any) -> Publisher:
        p = Publisher(make_cfg(port, **kw), camera, state_dir or tmp_path / "state")
        made.append(p)
        p.start()
        return p

    yield make
    for p in made:
        p.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_events_delivered_in_order_and_rows_deleted_on_puback(
    broker: Broker, collector: Callable[..., Collector], publisher_factory: Any, tmp_path: Path, protocol: str
) -> None:
    sub = collector(["edgecam/#"])
    pub = publisher_factory(broker.port, protocol=protocol)
    assert wait_until(lambda: pub.status()["connected"], 10)
    for i in range(50):
        pub.publish_event(event(i))
    msgs = sub.wait_count(EVENTS, 50)
    assert first_arrivals(msgs) == [f"ev-{i:05d}" for i in range(50)]
    payload = json.loads(msgs[0].payload)
    assert payload["score"] == 0.5 and payload["box"] == [0, 1, 2, 3]  # numpy values serialised
    assert wait_until(lambda: pub.status()["queued"] == 0 and pub.status()["inflight"] == 0, 5)
    assert rows_on_disk(tmp_path / "state") == 0
    status = pub.status()
    assert status["delivered"] == 50 and status["dropped"] == 0
    assert status["latency_ms"]["n"] == 50 and status["latency_ms"]["p50"] is not None
    online = sub.wait_count("edgecam/availability", 1)
    assert online[-1].payload == b"online"


def test_stop_publishes_offline_and_is_idempotent(
    broker: Broker, collector: Callable[..., Collector], tmp_path: Path
) -> None:
    sub = collector(["edgecam/availability"])
    pub = Publisher(make_cfg(broker.port), CAM, tmp_path)
    pub.start()
    assert sub.wait_for(lambda ms: any(m.payload == b"online" for m in ms))
    pub.publish_event(event(1))
    pub.stop()
    pub.stop()
    assert sub.wait_for(lambda ms: ms[-1].payload == b"offline")
    assert rows_on_disk(tmp_path) == 0  # flushed before stopping


def test_broker_down_at_start_then_appears(
    broker_factory: Callable[..., Broker], publisher_factory: Any, tmp_path: Path
) -> None:
    port = free_port()
    t0 = time.monotonic()
    pub = publisher_factory(port)
    assert time.monotonic() - t0 < 2.0, "start() must not wait for the broker"
    for i in range(20):
        pub.publish_event(event(i))
    status = pub.status()
    assert status["connected"] is False and status["queued"] == 20
    assert wait_until(lambda: pub.status()["last_error"] is not None, 5)
    assert "cannot connect" in pub.status()["last_error"]
    b = broker_factory(port=port)
    sub = Collector(b.host, b.port, [EVENTS])
    try:
        assert wait_until(lambda: pub.status()["queued"] == 0, 15)
        msgs = sub.wait_count(EVENTS, 20)
        assert first_arrivals(msgs) == [f"ev-{i:05d}" for i in range(20)]
    finally:
        sub.stop()


@pytest.mark.slow  # not in make test-fast
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_broker_restarts_mid_stream_every_event_arrives_in_order(
    broker: Broker, collector: Callable[..., Collector], publisher_factory: Any, protocol: str
) -> None:
    sub = collector([EVENTS])
    pub = publisher_factory(broker.port, protocol=protocol)
    assert wait_until(lambda: pub.status()["connected"], 10)
    n = 300
    done = threading.Event()
    produced = [0]

    def produce() -> None:
        for i in range(n):
            pub.publish_event(event(i))
            produced[0] = i + 1
            time.sleep(0.004)  # a steady stream, as a camera makes it
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    for k in (1, 2):  # restarts a third and two thirds of the way through the stream
        assert wait_until(lambda k=k: produced[0] >= k * n // 3, 10)
        broker.restart(down_s=0.4)
    assert done.wait(30)
    sub.wait_for(lambda ms: len(first_arrivals([m for m in ms if m.topic == EVENTS])) >= n, 30)
    ids = first_arrivals(sub.on(EVENTS))
    assert ids == [f"ev-{i:05d}" for i in range(n)]
    assert wait_until(lambda: pub.status()["queued"] == 0, 10)


def test_rows_left_on_disk_are_delivered_by_the_next_start(
    broker_factory: Callable[..., Broker], tmp_path: Path
) -> None:
    port = free_port()
    state = tmp_path / "state"
    first = Publisher(make_cfg(port, flush_timeout_s=0.1), CAM, state)
    first.start()
    for i in range(15):
        first.publish_event(event(i))
    first.stop()  # broker never seen: rows stay on disk
    assert rows_on_disk(state) == 15
    b = broker_factory(port=port)
    sub = Collector(b.host, b.port, [EVENTS])
    second = Publisher(make_cfg(port), CAM, state)
    second.start()
    try:
        msgs = sub.wait_count(EVENTS, 15)
        assert first_arrivals(msgs) == [f"ev-{i:05d}" for i in range(15)]
        assert wait_until(lambda: second.status()["queued"] == 0, 5)
    finally:
        second.stop()
        sub.stop()
    assert rows_on_disk(state) == 0


def test_outbox_bound_drops_oldest_and_counts(broker_factory: Callable[..., Broker], tmp_path: Path) -> None:
    port = free_port()
    pub = Publisher(make_cfg(port, outbox_max_rows=10, flush_timeout_s=0.1), CAM, tmp_path)
    pub.start()
    for i in range(25):
        pub.publish_event(event(i))
    status = pub.status()
    assert status["queued"] == 10 and status["dropped"] == 15
    b = broker_factory(port=port)
    sub = Collector(b.host, b.port, [EVENTS])
    try:
        msgs = sub.wait_count(EVENTS, 10)
        assert first_arrivals(msgs) == [f"ev-{i:05d}" for i in range(15, 25)]
    finally:
        pub.stop()
        sub.stop()
    # the drop count is persisted with the outbox
    box = Outbox(tmp_path / OUTBOX_FILE, CAM, 10)
    assert box.dropped() == 15
    box.close()


def test_states_retained_deduplicated_and_bool_as_on_off(
    broker: Broker, collector: Callable[..., Collector], publisher_factory: Any
) -> None:
    sub = collector([f"edgecam/{CAM}/+"])
    pub = publisher_factory(broker.port)
    assert wait_until(lambda: pub.status()["connected"], 10)
    pub.publish_state("face", 2)
    pub.publish_state("face", 2)
    pub.publish_state("face", np.int64(3))
    pub.publish_state("alice", True)
    assert [m.payload for m in sub.wait_count(f"edgecam/{CAM}/face", 2)] == [b"2", b"3"]
    assert sub.wait_count(f"edgecam/{CAM}/alice", 1)[0].payload == b"ON"
    assert sub.sync(f"edgecam/{CAM}/sync")  # nothing more on its way
    assert len(sub.on(f"edgecam/{CAM}/face")) == 2
    late = collector([f"edgecam/{CAM}/face"])
    got = late.wait_count(f"edgecam/{CAM}/face", 1)
    assert got[0].retain and got[0].payload == b"3"
    with pytest.raises(ValueError, match="reserved"):
        pub.publish_state("events", 1)
    with pytest.raises(ValueError, match="contains '/'"):
        pub.publish_state("a/b", 1)
    with pytest.raises(TypeError):
        pub.publish_state("face", [1, 2])  # type: ignore[arg-type]


def test_snapshot_retained_jpeg_decodes(
    broker: Broker, collector: Callable[..., Collector], publisher_factory: Any
) -> None:
    pub = publisher_factory(broker.port)
    img = np.zeros((64, 48, 3), np.uint8)
    img[10:50, 10:40] = (0, 128, 255)
    ok, jpeg = cv2.imencode(".jpg", img)
    assert ok
    pub.publish_snapshot(jpeg.tobytes())  # maybe before the connection: then sent on connect
    sub = collector([f"edgecam/{CAM}/snapshot"])
    assert sub.wait_count(f"edgecam/{CAM}/snapshot", 1)
    late = collector([f"edgecam/{CAM}/snapshot"])
    msg = late.wait_count(f"edgecam/{CAM}/snapshot", 1)[0]
    assert msg.retain
    decoded = cv2.imdecode(np.frombuffer(msg.payload, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (64, 48, 3)
    with pytest.raises(ValueError, match="JPEG"):
        pub.publish_snapshot(b"\x89PNG....")


def test_stats_include_publisher_status(
    broker: Broker, collector: Callable[..., Collector], publisher_factory: Any
) -> None:
    sub = collector([f"edgecam/{CAM}/stats"])
    pub = publisher_factory(broker.port)
    assert wait_until(lambda: pub.status()["connected"], 10)
    pub.publish_stats({"fps": 12.5, "stage_ms": {"detect": np.float64(3.25)}})
    stats = json.loads(sub.wait_count(f"edgecam/{CAM}/stats", 1)[0].payload)
    assert stats["fps"] == 12.5 and stats["stage_ms"]["detect"] == 3.25
    assert stats["mqtt"]["connected"] is True and stats["mqtt"]["queued"] == 0 and "dropped" in stats["mqtt"]


def test_publish_event_rejects_bad_events(broker: Broker, publisher_factory: Any) -> None:
    pub = publisher_factory(broker.port)
    with pytest.raises(ValueError, match="'id'"):
        pub.publish_event({"type": "new"})
    with pytest.raises(ValueError, match="JSON"):
        pub.publish_event({"id": "x", "bad": object()})
    with pytest.raises(ValueError, match="JSON"):
        pub.publish_event({"id": "x", "score": float("nan")})
    assert pub.status()["queued"] == 0


def test_publish_before_start_is_an_error(tmp_path: Path) -> None:
    pub = Publisher(make_cfg(free_port()), CAM, tmp_path)
    with pytest.raises(RuntimeError, match="new"):
        pub.publish_event(event(0))
    pub.stop()  # stop before start is a no-op
