"""End to end: the committed clip through `edgecam replay --mqtt` into a real mosquitto and a subscriber.

Asserts the event lifecycle (new -> update* -> end per track id, consistent fields), availability and the last
will (kill -9 of the daemon -> ``offline``), the Home Assistant discovery config, a snapshot JPEG that decodes,
and, with the broker stopped and restarted mid-replay, that every event the pipeline produced arrives in order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import Broker, Collector, Message

from edgecam import MODELS_DIR
from edgecam.mqtt.topics import device_id

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "edgecam" / "data" / "corridor.mp4"
CAM = "corridor"
EVENTS = f"edgecam/{CAM}/events"

pytestmark = pytest.mark.skipif(
    not (CLIP.exists() and (MODELS_DIR / "face_detector" / "model.json").exists()),
    reason="needs the bundled clip and the shipped face_detector model",
)


def write_config(tmp_path: Path, broker: Broker) -> Path:
    """A config for the test broker with fast reconnects; everything else (detector, tracker) at its defaults."""
    cfg = tmp_path / "edgecam.yaml"
    cfg.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"mqtt:\n  host: {broker.host}\n  port: {broker.port}\n  keepalive: 5\n"
        "  reconnect_min_s: 0.1\n  reconnect_max_s: 0.5\n"
    )
    return cfg


def replay_cmd(cfg: Path, speed: str, events_out: Path | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "edgecam", "replay", str(CLIP), "--config", str(cfg), "--camera", CAM,
           "--speed", speed]  # fmt: skip
    return cmd + (["--events", str(events_out)] if events_out else [])


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def key(e: dict[str, Any]) -> tuple[str, int, str]:
    """One event (a track id has several events: new, updates, end)."""
    return (e["id"], e["seq"], e["type"])


def first_arrivals(msgs: list[Message]) -> list[dict[str, Any]]:
    seen: set[tuple[str, int, str]] = set()
    out = []
    for m in msgs:
        e = json.loads(m.payload)
        if key(e) not in seen:
            seen.add(key(e))
            out.append(e)
    return out


def check_lifecycle(events: list[dict[str, Any]]) -> None:
    """Per track id: seq 0, 1, 2, ...; first ``new``, last ``end``, ``update`` in between; fields consistent."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_id.setdefault(e["id"], []).append(e)
    assert by_id, "the replay produced no events"
    for track_id, evs in by_id.items():
        assert [e["seq"] for e in evs] == list(range(len(evs))), track_id
        assert evs[0]["type"] == "new" and evs[-1]["type"] == "end", [e["type"] for e in evs]
        assert all(e["type"] == "update" for e in evs[1:-1])
        assert {e["camera"] for e in evs} == {CAM} and len({e["start"] for e in evs}) == 1
        assert all(len(e["box"]) == 4 and e["identity"] for e in evs)
        assert evs[-1]["end"] is not None and evs[-1]["end"] >= evs[0]["start"]


def test_replay_publishes_events_discovery_snapshot_availability(
    broker: Broker, collector: Callable[..., Collector], tmp_path: Path
) -> None:
    sub = collector(["edgecam/#", "homeassistant/#"])
    jsonl = tmp_path / "events.jsonl"
    proc = subprocess.run(replay_cmd(write_config(tmp_path, broker), "max", jsonl), env=env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    produced = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sub.wait_for(lambda ms: len(first_arrivals([m for m in ms if m.topic == EVENTS])) >= len(produced))
    received = first_arrivals(sub.on(EVENTS))
    assert [key(e) for e in received] == [key(e) for e in produced]
    check_lifecycle(received)
    # availability: online while running, offline after the clean stop
    avail = [m.payload for m in sub.on("edgecam/availability")]
    assert b"online" in avail and avail[-1] == b"offline"
    # a subscriber arriving after the run gets the retained discovery config, snapshot and availability
    late = collector([f"homeassistant/device/{device_id(CAM)}/config", f"edgecam/{CAM}/snapshot"])
    disc = late.wait_count(f"homeassistant/device/{device_id(CAM)}/config", 1)
    assert disc and disc[0].retain
    config = json.loads(disc[0].payload)
    assert config["dev"]["ids"] == [device_id(CAM)] and config["availability"][0]["topic"] == "edgecam/availability"
    assert {c["p"] for c in config["cmps"].values()} >= {"event", "image", "sensor", "switch"}
    snaps = late.wait_count(f"edgecam/{CAM}/snapshot", 1)
    assert snaps and snaps[0].retain, "no retained snapshot"
    img = cv2.imdecode(np.frombuffer(snaps[0].payload, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.ndim == 3 and min(img.shape[:2]) >= 16
    # faces-in-view state went up and back to 0, the detection switch state is published
    faces = [m.payload for m in sub.on(f"edgecam/{CAM}/face")]
    assert faces and faces[-1] == b"0" and any(int(f) > 0 for f in faces)
    assert sub.on(f"edgecam/{CAM}/detection")[-1].payload == b"ON"


def test_broker_outage_mid_replay_every_event_arrives_in_order(
    broker: Broker, collector: Callable[..., Collector], tmp_path: Path
) -> None:
    sub = collector([EVENTS])
    jsonl = tmp_path / "events.jsonl"
    proc = subprocess.Popen(replay_cmd(write_config(tmp_path, broker), "realtime", jsonl), env=env(), cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert sub.wait_for(lambda ms: len(ms) >= 1, 30), "no event before the outage"
        before = len(first_arrivals(sub.on(EVENTS)))
        broker.stop()
        time.sleep(1.5)
        broker.start()
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "disconnected from" in stderr, "the outage did not hit the publisher"
    produced = [json.loads(line) for line in jsonl.read_text().splitlines()]
    sub.wait_for(lambda ms: len(first_arrivals(ms)) >= len(produced), 20)
    received = first_arrivals(sub.on(EVENTS))
    assert [key(e) for e in received] == [key(e) for e in produced]
    assert before < len(produced), "no event was produced during or after the outage"


def test_kill_9_of_the_daemon_publishes_the_last_will(
    broker: Broker, collector: Callable[..., Collector], tmp_path: Path
) -> None:
    sub = collector(["edgecam/availability", EVENTS])
    proc = subprocess.Popen(replay_cmd(write_config(tmp_path, broker), "realtime"), env=env(), cwd=ROOT,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert sub.wait_for(lambda ms: any(m.payload == b"online" for m in ms), 30)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sub.wait_for(lambda ms: [m.payload for m in ms if m.topic == "edgecam/availability"][-1] == b"offline", 15)
