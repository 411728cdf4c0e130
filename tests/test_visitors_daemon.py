"""Visitors end to end: the daemon (real detector and recognizer) on a looping clip, a real mosquitto, Home Assistant
discovery, the ``set/visitor`` command (name -> known from the next track, forget -> a new id), a restart keeping the
store, and ``edgecam replay`` twice through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import needs_mosquitto, read_video, wait_until

from edgecam.app import App
from edgecam.config import parse_config
from edgecam.mqtt.topics import device_id
from edgecam.recognize import EmbeddingRecognizer, Gallery
from edgecam.sources import Backend, Backoff, LiveSource
from edgecam.visitors import STORE_FILE, VisitorStore

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "edgecam" / "data" / "corridor.mp4"
CAM = "door"
BASE = f"edgecam/{CAM}"


class LoopingClip(LiveSource):
    """A live camera showing the bundled clip again and again, with empty frames between (the people leave)."""

    type = "loop"

    def __init__(self, frames: list[np.ndarray], gap: int = 16) -> None:
        super().__init__(stall_timeout_s=30, backoff=Backoff(0.01, 0.02))
        self.frames, self.gap, self.i = frames, gap, 0
        self.loops = 0
        self.paused = threading.Event()

    def open_backend(self) -> Backend:
        src = self
        blank = np.full_like(self.frames[0], 110)

        class B(Backend):
            def read(self) -> Any:
                while src.paused.is_set():
                    time.sleep(0.01)
                time.sleep(0.004)
                k = src.i % (len(src.frames) + src.gap)
                src.i += 1
                if k == len(src.frames) + src.gap - 1:
                    src.loops += 1
                return src.frames[k] if k < len(src.frames) else blank

            def close(self) -> None:
                pass

        return B()


def daemon_config(tmp: Path, port: int, gallery: Path) -> Any:
    # the clip's second person is soft (crop sharpness 20-40, just over the gate): counted fully for sharpness, so
    # two of their crops decide the vote (and make a visit) however many frames the live loop drops
    return parse_config({
        "camera": {"name": CAM}, "motion": {"enabled": False}, "state_dir": str(tmp / "state"),
        "tracker": {"vote_full_sharpness": 20},
        "recognizer": {"gallery": str(gallery)}, "visitors": {"enabled": True, "fsync": False},
        "mqtt": {"host": "127.0.0.1", "port": port, "allow_visitors": True, "outbox_fsync": False},
    })


def messages(col: Any, topic: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in col.on(topic)]


@pytest.mark.slow
@needs_mosquitto
def test_daemon_visitors_over_mqtt_name_forget_restart(tmp_path: Path, broker: Any, collector: Any) -> None:
    rec = EmbeddingRecognizer("face_recognizer")
    gallery = tmp_path / "gallery.npz"
    Gallery(rec.model_sha, rec.dim).save(gallery)
    rec.close()
    cfg = daemon_config(tmp_path, broker.port, gallery)
    col = collector([f"{BASE}/#", "homeassistant/#"])
    source = LoopingClip(read_video(CLIP))
    app = App(cfg, source=source)
    app.start()
    try:
        # two people walk through: two new visitors; the next loop they are seen again
        def seen(ms: list[Any], what: bytes = b"") -> int:
            return sum(m.topic == f"{BASE}/visitor" and what in m.payload for m in ms)

        assert col.wait_for(lambda ms: seen(ms) >= 4 and seen(ms, b'"new_visitor"') >= 2, 60)
        said = messages(col, f"{BASE}/visitor")  # a loaded machine drops frames: a person may come back early
        news = [m for m in said if m["event_type"] == "new_visitor"]
        assert [m["visitor"] for m in news[:2]] == ["visitor-1", "visitor-2"]
        assert said[0]["message"] == "new visitor visitor-1" and said[0]["cameras"] == [CAM]
        again = [m for m in said if m["visitor"] == "visitor-1" and m is not said[0]][0]
        assert again["event_type"] == "visitor_again" and again["message"] == "visitor-1 again (2nd time)"
        image = col.on(f"{BASE}/visitor/image")[-1]
        assert image.payload[:3] == b"\xff\xd8\xff"
        events = messages(col, f"{BASE}/events")
        assert any(e["visitor"] == "visitor-1" and e["visits"] >= 1 for e in events)
        assert all("visitor" in e and "visits" in e for e in events)
        cmps = json.loads(col.on(f"homeassistant/device/{device_id(CAM)}/config")[-1].payload)["cmps"]
        assert cmps[f"{device_id(CAM)}_visitor"]["event_types"] == ["new_visitor", "visitor_again"]
        assert cmps[f"{device_id(CAM)}_visitor_face"]["image_topic"] == f"{BASE}/visitor/image"

        # naming over MQTT: visitor-1 goes into the gallery; from the next track on, the person is known
        col.publish(f"{BASE}/set/visitor", json.dumps({"visitor": "visitor-1", "name": "Alice"}))
        assert wait_until(lambda: "Alice" in Gallery.read(gallery).people, 20)
        assert col.wait_for(lambda ms: any(m.topic == f"{BASE}/recognized" and json.loads(m.payload).get(
            "identity") == "Alice" for m in ms), 60)
        assert col.wait_for(lambda ms: any(m.topic == f"{BASE}/Alice" and m.payload == b"ON" for m in ms), 10)
        # forgetting over MQTT: visitor-2 is deleted; the person comes back under a new id
        col.publish(f"{BASE}/set/visitor", json.dumps({"visitor": "visitor-2", "forget": True}))
        assert col.wait_for(lambda ms: any(m.topic == f"{BASE}/visitor" and json.loads(m.payload)[
            "visitor"] == "visitor-3" for m in ms), 60)
        new3 = [m for m in messages(col, f"{BASE}/visitor") if m["visitor"] == "visitor-3"][0]
        assert new3["event_type"] == "new_visitor"
    finally:
        app.stop()
    assert app.stats()["visitors"]["visitors"] == 1  # in the daemon's stats (here: at closing)
    store = VisitorStore(tmp_path / "state" / STORE_FILE)
    numbers = [v.number for v in store.visitors()]
    visits = store.get("visitor-3").visits
    store.close()
    assert numbers == [3]  # visitor-1 named, visitor-2 forgotten: neither is in the store any more

    # a restart keeps the store: the same person is visitor-3 again
    col.messages.clear()
    app = App(cfg, source=LoopingClip(read_video(CLIP)))
    app.start()
    try:
        assert col.wait_for(lambda ms: any(m.topic == f"{BASE}/visitor" for m in ms), 60)
        first = messages(col, f"{BASE}/visitor")[0]
        assert (first["visitor"], first["event_type"]) == ("visitor-3", "visitor_again")
        assert first["visits"] == visits + 1
    finally:
        app.stop()


def test_visitor_commands_are_refused_unless_allowed() -> None:
    from edgecam.mqtt.topics import CommandError, parse_command

    good = json.dumps({"visitor": "visitor-17", "name": "Alice"}).encode()
    with pytest.raises(CommandError, match="allow_visitors"):
        parse_command("visitor", good)
    assert json.loads(parse_command("visitor", good, allow_visitors=True)) == {"visitor": "visitor-17",
                                                                               "name": "Alice"}
    forget = json.dumps({"visitor": "visitor-2", "forget": True}).encode()
    assert json.loads(parse_command("visitor", forget, allow_visitors=True)) == {"visitor": "visitor-2",
                                                                                 "forget": True}
    for bad in (b"nope", b"[]", b'{"visitor": "alice", "name": "x"}', b'{"visitor": "visitor-0", "name": "x"}',
                b'{"visitor": "visitor-1"}', b'{"visitor": "visitor-1", "forget": 1}',
                b'{"visitor": "visitor-1", "name": "a/b"}', b'{"visitor": "visitor-1", "name": "events"}',
                b'{"visitor": "visitor-1", "name": "x", "forget": true}'):
        with pytest.raises(CommandError):
            parse_command("visitor", bad, allow_visitors=True)


@pytest.mark.slow
def test_replay_twice_through_the_cli_keeps_the_visitors(tmp_path: Path) -> None:
    """``edgecam replay`` with visitors on, twice (two processes): the second run sees the same two visitors
    again; ``visitors name`` then makes one of them known in a third run."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"recognizer: {{}}\nstate_dir: {tmp_path / 'state'}\nvisitors: {{enabled: true}}\n")

    def replay(config: Path, n: int) -> list[dict[str, Any]]:
        out = tmp_path / f"events{n}.jsonl"
        subprocess.run([sys.executable, "-m", "edgecam", "replay", str(CLIP), "--config", str(config),
                        "--events", str(out), "--no-progress"], check=True, capture_output=True, timeout=300)
        return [e for e in map(json.loads, out.read_text().splitlines()) if e["type"] == "end"]

    first = replay(cfg, 1)
    assert sorted((e["visitor"], e["visits"]) for e in first if e["visitor"]) == [("visitor-1", 1), ("visitor-2", 1)]
    second = replay(cfg, 2)
    assert sorted((e["visitor"], e["visits"]) for e in second if e["visitor"]) == [("visitor-1", 2), ("visitor-2", 2)]
    gallery = tmp_path / "gallery.npz"
    subprocess.run([sys.executable, "-m", "edgecam", "visitors", "name", "visitor-2", "Bob", "--gallery",
                    str(gallery), "--config", str(cfg)], check=True, capture_output=True, timeout=60)
    cfg.write_text(f"recognizer: {{gallery: {gallery}}}\nstate_dir: {tmp_path / 'state'}\n"
                   "visitors: {enabled: true}\n")
    third = replay(cfg, 3)
    assert [e["identity"] for e in third if e["status"] == "known"] == ["Bob"]
    assert sorted((e["visitor"], e["visits"]) for e in third if e["visitor"]) == [("visitor-1", 3)]


@pytest.mark.slow
def test_visitor_components_pass_home_assistants_own_schemas() -> None:
    """The Visitor event and Visitor face image as Home Assistant 2025.4 reads them (EDGECAM_HA_PYTHON)."""
    import test_mqtt_ha as ha

    from edgecam.mqtt.topics import Topics, discovery_config

    exe = ha._ha_python()
    if exe is None:
        pytest.skip("Home Assistant not importable: set EDGECAM_HA_PYTHON (see README)")
    payloads = {"visitors on": discovery_config(Topics("edgecam", CAM), ["alice"], visitors=True)}
    r = subprocess.run([exe, str(ha.HA_CHECK)], input=json.dumps(payloads), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(r.stdout)["payloads"]["visitors on"]
    assert result["errors"] == [] and result["dropped_keys"] == []
    off = discovery_config(Topics("edgecam", CAM), ["alice"])["cmps"]
    assert result["components"] == sum("name" in c for c in off.values()) + 2 and result["removed"] == 0
