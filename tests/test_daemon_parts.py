"""The parts of the daemon beside its lifecycle, each with fakes (no broker, no models, no camera):
``MqttEvents`` (events, recognitions and states to a publisher), ``Commands`` (MQTT commands in the worker),
``Health`` (systemd readiness and watchdog, stats)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edgecam import notify
from edgecam.commands import Commands, snapshot_now
from edgecam.config import parse_config
from edgecam.health import Health
from edgecam.outputs import EventPublisher, MqttEvents
from edgecam.sources import Frame, SourceStats
from edgecam.track import Event


class FakePublisher:
    """Records what the daemon sends; satisfies ``EventPublisher``."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.callbacks: list[Any] = []

    def publish_event(self, event: dict[str, Any], frame_time: float | None = None) -> int:
        self.sent.append(("event", event["type"]))
        return len(self.sent)

    def publish_recognition(self, payload: dict[str, Any], frame_time: float | None = None) -> None:
        self.sent.append(("recognition", payload["event_type"]))

    def publish_snapshot(self, jpeg: bytes) -> None:
        assert jpeg[:3] == b"\xff\xd8\xff"
        self.sent.append(("snapshot", len(jpeg)))

    def publish_state(self, name: str, value: bool | int | float | str) -> None:
        self.sent.append(("state", (name, value)))

    def publish_stats(self, stats: dict[str, Any]) -> None:
        self.sent.append(("stats", stats))

    def publish_discovery(self, people: list[str], visitors: bool = False) -> None:
        self.sent.append(("discovery", people))

    def publish_visitor(self, payload: dict[str, Any], crop: bytes | None = None,
                        frame_time: float | None = None) -> None:
        self.sent.append(("visitor", (payload["message"], crop)))

    def on_command(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def status(self) -> dict[str, Any]:
        return {"connected": True, "queued": 3, "dropped": 0, "ever_connected": True}

    def kinds(self) -> list[str]:
        return [k for k, _ in self.sent]


def make_mqtt(pub: FakePublisher | None = None, recognizer_runs: bool = True) -> MqttEvents:
    publisher: EventPublisher = pub or FakePublisher()
    return MqttEvents(publisher, 80, recognizer_runs)


def payload(kind: str, track: str = "t1", name: str = "unknown", status: str = "unknown", votes: int = 0) -> dict:
    return {"type": kind, "id": track, "seq": 0, "identity": name, "status": status, "camera": "cam",
            "frames": {"votes": votes}, "timestamp": 1.0, "start": 0.5, "scores": {}}


def track(name: str, status: str, last_frame: int = 0, image: np.ndarray | None = None) -> Any:
    return SimpleNamespace(identity=(name, status, 1.0), last_frame=last_frame, best_image=image)


def frame(i: int = 7) -> Frame:
    return Frame(i, i / 10, np.full((60, 80, 3), 120, np.uint8))


# ---------------------------------------------------------------------------------------------- MqttEvents


def test_mqtt_events_event_then_recognition_then_snapshot() -> None:
    pub = FakePublisher()
    mqtt = make_mqtt(pub)
    mqtt.publish(Event(payload("new", name="alice", status="known", votes=2), np.zeros((8, 8, 3), np.uint8)), 0.0)
    mqtt.publish(Event(payload("update", name="alice", status="known", votes=3)), 0.0)  # said already
    assert pub.kinds() == ["event", "recognition", "snapshot", "event"]


def test_mqtt_events_states_only_when_they_change() -> None:
    pub = FakePublisher()
    mqtt = make_mqtt(pub)
    mqtt.announce(["alice", "bob"])
    mqtt.publish_states([track("alice", "known")])
    mqtt.publish_states([track("alice", "known")])
    mqtt.publish_states([])
    assert pub.sent == [("discovery", ["alice", "bob"]), ("state", ("face", 1)), ("state", ("alice", True)),
                        ("state", ("bob", False)), ("state", ("face", 0)), ("state", ("alice", False))]
    mqtt.detection_echoed(False)  # the publisher echoed it already: not sent again
    mqtt.set_state("detection", False)
    assert pub.sent[-1] == ("state", ("alice", False))


def test_mqtt_events_without_a_recognizer_every_face_is_unknown_at_once() -> None:
    assert make_mqtt(recognizer_runs=False).recognition(payload("new"))["event_type"] == "unknown"  # type: ignore[index]
    assert make_mqtt(recognizer_runs=True).recognition(payload("new")) is None  # not voted yet


# ---------------------------------------------------------------------------------------------- Commands


def make_commands(pub: FakePublisher, in_view: list[Any] | None = None,
                  cfg: dict[str, Any] | None = None) -> tuple[Commands, Any, list[Frame]]:
    pipeline: Any = SimpleNamespace(detection_enabled=True, tracker=SimpleNamespace(in_view=lambda: in_view or []))
    ended: list[Frame] = []
    cmds = Commands(parse_config(cfg or {}), pipeline, detector=None, recognizer=None,  # type: ignore[arg-type]
                    mqtt=make_mqtt(pub), end_tracks=ended.append)
    return cmds, pipeline, ended


def test_detection_off_ends_tracks_once_and_on_again() -> None:
    pub = FakePublisher()
    cmds, pipeline, ended = make_commands(pub)
    f = frame()
    for p in (b"OFF", b"off", b"ON"):
        cmds.put("detection", p)
    cmds.run(f)
    assert ended == [f] and pipeline.detection_enabled is True
    cmds.put("detection", b"OFF")
    cmds.run(None)  # before the first frame: switched off, nothing to end
    assert ended == [f] and pipeline.detection_enabled is False


def test_snapshot_is_the_newest_face_else_the_frame() -> None:
    older, newer = np.full((4, 4, 3), 1, np.uint8), np.full((6, 6, 3), 2, np.uint8)
    pipeline: Any = SimpleNamespace(tracker=SimpleNamespace(
        in_view=lambda: [track("a", "known", 3, older), track("b", "known", 9, newer), track("c", "known", 12)]))
    assert snapshot_now(frame(), pipeline, 640) is newer
    pipeline.tracker.in_view = list
    assert snapshot_now(frame(), pipeline, 640).shape[:2] == (60, 80)
    pub = FakePublisher()
    cmds, _, _ = make_commands(pub)
    cmds.put("snapshot", b"")
    cmds.run(None)  # no frame yet: nothing to show
    cmds.put("snapshot", b"")
    cmds.run(frame())
    [(kind, size)] = pub.sent
    assert kind == "snapshot" and size > 100


def test_commands_that_cannot_apply_are_logged_and_the_queue_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    pub = FakePublisher()
    cmds, pipeline, _ = make_commands(pub)
    cmds.handlers["boom"] = lambda payload, f: 1 / 0  # type: ignore[func-returns-value]
    for command, p in (("reboot", b""), ("boom", b""), ("enroll", b"alice"), ("detection", b"OFF")):
        cmds.put(command, p)
    with caplog.at_level(logging.WARNING):
        cmds.run(frame())
    assert "command reboot is not supported" in caplog.text and "command boom failed" in caplog.text
    assert "needs an identity recognizer with a gallery" in caplog.text  # no recognizer here
    assert pipeline.detection_enabled is False  # the last one still applied


# ---------------------------------------------------------------------------------------------- Health


class Sent:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, watchdog_s: float | None) -> None:
        self.lines: list[str] = []
        monkeypatch.setattr(notify, "ready", lambda text=None: self.lines.append("READY"))
        monkeypatch.setattr(notify, "watchdog", lambda: self.lines.append("WATCHDOG"))
        monkeypatch.setattr(notify, "status", lambda text: self.lines.append(f"STATUS {text}"))
        monkeypatch.setattr(notify, "watchdog_interval", lambda: watchdog_s)


def make_health(publisher: FakePublisher | None) -> tuple[Health, Any]:
    counts = SimpleNamespace(frames=0)
    pipeline: Any = SimpleNamespace(counts=counts, stats=lambda elapsed: {"frames": counts.frames,
                                                                           "tracks_in_view": 1, "elapsed": elapsed})
    source: Any = SimpleNamespace(description="fake", stats=SourceStats(frames=5, stalls=1))
    return Health("cam", 10.0, pipeline, source, publisher, now=100.0), counts


def test_ready_once_and_watchdog_only_while_frames_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    sent = Sent(monkeypatch, watchdog_s=2.0)
    health, _ = make_health(None)
    health.tick(None, 100.5)  # no frame yet: neither ready nor alive
    assert sent.lines == []
    for t in (101.0, 101.5, 102.1):
        health.tick(frame(), t)
    health.tick(None, 104.0)  # frames stopped: no ping however long
    health.tick(None, 105.0)
    assert sent.lines == ["READY", "WATCHDOG", "WATCHDOG"]


def test_stats_go_to_the_publisher_with_broker_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    sent = Sent(monkeypatch, watchdog_s=None)
    pub = FakePublisher()
    health, counts = make_health(pub)
    counts.frames = 50
    health.tick(frame(), 110.0)  # 50 frames in 10 s
    [(kind, stats)] = pub.sent
    assert kind == "stats" and stats["fps"] == 5.0 and stats["queue_depth"] == 3 and stats["source"]["stalls"] == 1
    assert sent.lines[-1] == "STATUS 5.0 fps, 1 face(s) in view, broker connected, 3 queued"
    health.t_end = 120.0
    assert health.stats()["elapsed"] == 20.0


def test_stats_without_a_broker_go_to_the_log(monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    Sent(monkeypatch, watchdog_s=None)
    health, _ = make_health(None)
    with caplog.at_level(logging.INFO, logger="edgecam.health"):
        health.report(111.0)
    assert "stats: {" in caplog.text and '"source"' in caplog.text


def test_fakes_here_match_the_real_thing() -> None:
    """The Publisher has every method ``EventPublisher`` names (what mypy checks in ``App``)."""
    from edgecam.mqtt.publish import Publisher

    wanted = {n for n in vars(EventPublisher) if not n.startswith("_")}
    assert wanted <= set(dir(Publisher)) and wanted <= set(dir(FakePublisher))
