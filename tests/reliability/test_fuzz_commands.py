"""Property-based fuzzing of every MQTT topic the daemon listens on, against a running ``edgecam run``.

One real daemon (enrollment over MQTT switched on, an identity recognizer with a gallery: the most exposed
setup) replays a long clip while hypothesis publishes well over 1,000 generated messages to its command
topics (``set/detection``, ``set/snapshot``, ``set/enroll``, unknown and malformed sub-topics) and to Home
Assistant's status topic. The daemon must never crash, must count every command message as applied or
ignored, must end with the detection state of the last valid command, and must stop cleanly afterwards.
"""

from __future__ import annotations

import json
import signal
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import HAVE_MOSQUITTO, Broker, Collector, FaultReport
from faultlib import CLIP_REASON, HAVE_CLIP_AND_DETECTOR, Daemon, long_clip, replay_source, traceback_free, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecam.mqtt.topics import MAX_COMMAND_BYTES

pytestmark = [pytest.mark.skipif(not HAVE_MOSQUITTO, reason="mosquitto not installed"),
              pytest.mark.skipif(not HAVE_CLIP_AND_DETECTOR, reason=CLIP_REASON)]

CAM = "fuzz"
BASE = f"edgecam/{CAM}"
EXAMPLES = 1500



def mqtt_utf8(c: str) -> bool:
    """Characters a broker accepts in a topic (mosquitto disconnects a client that sends control characters,
    surrogates or non-characters): the daemon never sees the others."""
    cp = ord(c)
    return not (cp <= 0x1F or 0x7F <= cp <= 0x9F or 0xD800 <= cp <= 0xDFFF or 0xFDD0 <= cp <= 0xFDEF
                or (cp & 0xFFFF) >= 0xFFFE or c in "+#")


_TOPIC_TEXT = st.text(st.characters().filter(mqtt_utf8), max_size=24)
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4), max_leaves=8)
COMMAND = st.one_of(st.sampled_from(["detection", "snapshot", "enroll"]), _TOPIC_TEXT,
                    st.sampled_from(["", "detection/x", "DETECTION", "enroll ", "set", "../detection"]))
PAYLOAD = st.one_of(
    st.binary(max_size=300),
    st.binary(min_size=MAX_COMMAND_BYTES - 2, max_size=MAX_COMMAND_BYTES + 2000),
    st.sampled_from([b"ON", b"OFF", b" on ", b"oFf\n", b"", b"PRESS", b"\xff\xfe", b"null", b"{}", b"[]"]),
    st.text(max_size=200).map(lambda s: s.encode("utf-8")),
    st.builds(lambda name: json.dumps({"name": name}).encode(), st.text(max_size=80) | st.sampled_from(
        ["alice", "face", "detection", "events", "a/b", "", " ", "x" * 65, "O'Neil-Smith Jr."])),
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.text(string.printable, max_size=50).map(lambda s: ("\ufeff" + s).encode("utf-16")),
)


@dataclass
class Fuzzed:
    daemon: Daemon
    broker: Broker
    client: Collector
    sent: int = 0  # messages to <base>/set/...
    ha_status: int = 0
    last_detection: bytes = b"ON"
    counts: dict[str, int] = field(default_factory=dict)

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example
        return f"Fuzzed(sent={self.sent}, ha_status={self.ha_status}, alive={self.daemon.alive})"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    """A running daemon with enrollment allowed and a subscriber/publisher client on its broker."""
    from test_recognize import write_folder

    from edgecam.manifest import load_manifest
    from edgecam.recognize import Gallery

    tmp = tmp_path_factory.mktemp("fuzz")
    broker = Broker(tmp / "broker")
    broker.start()
    model = write_folder(tmp / "emb", {"type": "embedding", "dim": 3, "thresholds": {"known": 0.95, "unknown": 0.8}})
    gallery = tmp / "gallery.npz"
    Gallery(str(load_manifest(model).data["sha256"]), 3).save(gallery)
    cfg = write_config(tmp / "edgecam.yaml", broker, camera={"name": CAM, "source": replay_source(
        long_clip(tmp / "clip.mp4", 12))}, mqtt={"allow_enroll": True}, stats_interval_s=1,
        recognizer={"type": "identity", "model": str(model), "gallery": str(gallery)})
    client = Collector(broker.host, broker.port, [f"{BASE}/stats", f"{BASE}/detection"])
    daemon = Daemon(["run", "--config", str(cfg)], tmp, "daemon")
    try:
        assert client.wait_for(lambda ms: any(m.topic == f"{BASE}/stats" for m in ms), 60), daemon.stderr()[-3000:]
        yield Fuzzed(daemon, broker, client)
    finally:
        daemon.kill()
        client.stop()
        broker.stop()


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(command=COMMAND, payload=PAYLOAD, qos=st.sampled_from([1, 2]), ha=st.integers(0, 19))
def test_fuzz_every_command_topic(fuzzed: Fuzzed, command: str, payload: bytes, qos: int, ha: int) -> None:
    assert fuzzed.daemon.alive, fuzzed.daemon.stderr()[-3000:]
    if ha == 0:  # one message in 20 goes to Home Assistant's status topic instead
        fuzzed.client.publish("homeassistant/status", payload, qos=1)
        fuzzed.ha_status += 1
        return
    fuzzed.client.publish(f"{BASE}/set/{command}", payload, qos=qos)
    fuzzed.sent += 1
    kind = command if command in ("detection", "snapshot", "enroll") else "other"
    fuzzed.counts[kind] = fuzzed.counts.get(kind, 0) + 1
    value = payload.strip().upper()
    if command == "detection" and value in (b"ON", b"OFF") and len(payload) <= MAX_COMMAND_BYTES:
        fuzzed.last_detection = value


def test_the_daemon_survived_the_fuzz(fuzzed: Fuzzed, fault_report: FaultReport) -> None:
    """Every command message counted (applied or ignored), the last valid detection state holds, clean stop."""
    d, client = fuzzed.daemon, fuzzed.client

    def mqtt_counts() -> dict[str, Any]:
        stats = [json.loads(m.payload) for m in client.on(f"{BASE}/stats")]
        return stats[-1]["mqtt"] if stats else {}

    def all_counted(_: object) -> bool:
        c = mqtt_counts()
        return c.get("commands", 0) + c.get("bad_commands", 0) >= fuzzed.sent

    assert fuzzed.sent >= 1000 and all(fuzzed.counts.get(c, 0) >= 50 for c in ("detection", "snapshot", "enroll"))
    assert client.wait_for(all_counted, 60), (fuzzed.sent, mqtt_counts(), d.stderr()[-2000:])
    counts = mqtt_counts()
    assert client.wait_for(lambda ms: [m.payload for m in ms if m.topic == f"{BASE}/detection"][-1:]
                           == [fuzzed.last_detection], 10), ([m.payload for m in client.on(f"{BASE}/detection")][-5:],
                                                             fuzzed.last_detection)
    assert d.alive
    d.signal(signal.SIGTERM)
    rc = d.wait(30)
    stderr = d.stderr()
    fault_report.add("fuzz", "hypothesis on every command topic of a running daemon",
                     messages=fuzzed.sent + fuzzed.ha_status, command_messages=fuzzed.sent,
                     ha_status_messages=fuzzed.ha_status, applied=counts["commands"],
                     ignored=counts["bad_commands"], per_topic=fuzzed.counts,
                     crashes=int(rc != 0 or not traceback_free(stderr)))
    assert rc == 0 and traceback_free(stderr), stderr[-3000:]
    assert counts["commands"] + counts["bad_commands"] == fuzzed.sent, (counts, fuzzed)
    assert counts["bad_commands"] > 0 and counts["commands"] > 0, counts
    assert "MQTT: ignored command" in stderr and "command enroll" in stderr


@pytest.mark.parametrize("name", ["face", "detection", "events", "snapshot", "stats", "set", "availability"])
def test_enroll_names_that_collide_with_edgecam_topics_are_refused(name: str) -> None:
    """A person's presence is published on ``<prefix>/<camera>/<name>``: these names would overwrite edgecam's own
    topics (a person called ``face`` would publish ON/OFF over the faces-in-view count)."""
    from edgecam.mqtt.topics import CommandError, parse_command

    with pytest.raises(CommandError, match="reserved"):
        parse_command("enroll", json.dumps({"name": name}).encode(), allow_enroll=True)
    other = name + "2"
    assert parse_command("enroll", json.dumps({"name": other}).encode(), allow_enroll=True) == other.encode()
    with pytest.raises(CommandError, match="want"):
        parse_command("enroll", json.dumps({"name": [name]}).encode(), allow_enroll=True)  # unhashable: no TypeError
