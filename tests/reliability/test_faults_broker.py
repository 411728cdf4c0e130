"""Broker faults against real ``edgecam`` processes and a real mosquitto: restarts mid-replay, a broker that is
away when the daemon starts, an outbox that overflows. Each test ends with events produced vs received."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Broker, Collector, FaultReport, NotifySocket, needs_mosquitto, wait_until
from faultlib import (
    CLIP,
    CLIP_REASON,
    HAVE_CLIP_AND_DETECTOR,
    Daemon,
    event_key,
    long_clip,
    read_jsonl,
    received_until_complete,
    replay_source,
    tally,
    traceback_free,
    write_config,
)

pytestmark = [needs_mosquitto, pytest.mark.skipif(not HAVE_CLIP_AND_DETECTOR, reason=CLIP_REASON)]


@pytest.fixture(scope="module")
def clip_x2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return long_clip(tmp_path_factory.mktemp("clips") / "corridor_x2.mp4", 2)


def events_topic(camera: str) -> str:
    return f"edgecam/{camera}/events"


def test_broker_restarted_three_times_two_cameras_nothing_lost_order_kept(
    broker: Broker, collector: Callable[..., Collector], clip_x2: Path, tmp_path: Path, fault_report: FaultReport
) -> None:
    """Two cameras (two daemons sharing one outbox file) replay at real-time pace; the broker stops and
    restarts three times. Every event arrives, in order per camera; QoS 1 redeliveries are counted."""
    cameras = ("cam_a", "cam_b")
    sub = collector([events_topic(c) for c in cameras])
    cfg = write_config(tmp_path / "edgecam.yaml", broker)
    daemons = {c: Daemon(["replay", str(clip_x2), "--config", str(cfg), "--camera", c, "--speed", "realtime",
                          "--events", str(tmp_path / f"{c}.jsonl")], tmp_path, c) for c in cameras}
    try:
        assert sub.wait_for(lambda ms: {m.topic for m in ms} == {events_topic(c) for c in cameras}, 60), \
            "no event from both cameras before the first outage"
        for k in range(1, 4):
            broker.stop()
            time.sleep(1.0)  # the outage
            broker.start()
            assert wait_until(lambda k=k: all(d.stderr().count("MQTT: connected to") > k
                                              for d in daemons.values()), 30), "a daemon did not reconnect"
        for d in daemons.values():
            assert d.wait(120) == 0, d.stderr()[-3000:]
    finally:
        for d in daemons.values():
            d.kill()
    for camera, d in daemons.items():
        produced = read_jsonl(tmp_path / f"{camera}.jsonl")
        t = tally(produced, received_until_complete(sub, events_topic(camera), produced, 30))
        outages_seen = d.stderr().count("MQTT: disconnected from")
        fault_report.add("faults", f"broker stopped+restarted 3x during a replay ({camera})", outages=3,
                         outages_seen_by_daemon=outages_seen, **t.figures())
        assert t.lost == 0 and t.in_order and t.extra == 0, t
        assert outages_seen == 3, d.stderr()[-3000:]
        assert traceback_free(d.stderr())
        assert {e["camera"] for e in produced} == {camera}


def test_broker_down_when_the_daemon_starts(
    broker: Broker, collector: Callable[..., Collector], notify_socket: Callable[..., NotifySocket], tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    """The daemon starts without the broker: READY once camera and models are up, broker state in STATUS and
    stats, events queued on disk and delivered when the broker appears."""
    cam = "door"
    sub = collector([events_topic(cam), f"edgecam/{cam}/stats"])  # its persistent session outlives the outage
    broker.stop()
    systemd = notify_socket(watchdog_s=2.0)
    cfg = write_config(tmp_path / "edgecam.yaml", broker, camera={"name": cam, "source": replay_source(CLIP)},
                       stats_interval_s=1)
    events = tmp_path / "events.jsonl"
    d = Daemon(["run", "--config", str(cfg), "--events", str(events)], tmp_path, "daemon", env=systemd.env)
    try:
        assert wait_until(lambda: any(t.startswith("READY=1") for t in systemd.texts()), 60), d.stderr()[-3000:]
        ready_after = time.monotonic() - d.started
        assert wait_until(lambda: any("broker away" in s for s in systemd.status_lines()), 10), systemd.texts()
        assert wait_until(lambda: len(read_jsonl(events)) >= 3, 30)
        queued_while_away = len(read_jsonl(events))
        broker.start()
        assert d.wait(60) == 0, d.stderr()[-3000:]
    finally:
        d.kill()
    produced = read_jsonl(events)
    t = tally(produced, received_until_complete(sub, events_topic(cam), produced, 30))
    stats = [json.loads(m.payload) for m in sub.on(f"edgecam/{cam}/stats")]
    fault_report.add("faults", "broker down when the daemon starts", ready_s=round(ready_after, 2),
                     produced_before_broker=queued_while_away, **t.figures())
    assert t.lost == 0 and t.in_order, t
    assert any("broker connected" in s for s in systemd.status_lines()), systemd.status_lines()
    assert any("broker away" in s and "queued" in s for s in systemd.status_lines())
    assert stats and all(s["broker_connected"] for s in stats) and "queue_depth" in stats[-1]
    assert len(systemd.times("WATCHDOG=1")) >= 2
    assert "cannot connect to mqtt://127.0.0.1" in d.stderr() and traceback_free(d.stderr())


def test_outbox_full_drops_oldest_counts_and_keeps_running(
    broker: Broker, collector: Callable[..., Collector], clip_x2: Path, tmp_path: Path, fault_report: FaultReport
) -> None:
    """``mqtt.outbox_max_rows: 10`` and the broker away: the oldest rows are dropped first, the drops show in
    the stats and the log, the daemon goes on, and everything after the drops is delivered in order. The outbox
    holds events and recognitions (``<base>/recognized``: one ``unknown`` per track here, no recognizer), so the
    rows dropped are the events lost plus the recognitions lost."""
    cam = "door"
    sub = collector([events_topic(cam), f"edgecam/{cam}/stats", f"edgecam/{cam}/recognized"])
    broker.stop()
    cfg = write_config(tmp_path / "edgecam.yaml", broker, camera={"name": cam, "source": replay_source(clip_x2)},
                       mqtt={"outbox_max_rows": 10}, stats_interval_s=1)
    events = tmp_path / "events.jsonl"
    d = Daemon(["run", "--config", str(cfg), "--events", str(events)], tmp_path, "daemon")
    try:
        assert wait_until(lambda: len(read_jsonl(events)) >= 16, 60), d.stderr()[-3000:]
        broker.start()
        assert d.wait(60) == 0, d.stderr()[-3000:]
    finally:
        d.kill()
    produced = read_jsonl(events)
    t = tally(produced, received_until_complete(sub, events_topic(cam), produced[6:], 30))
    stats = [json.loads(m.payload) for m in sub.on(f"edgecam/{cam}/stats")]
    dropped = stats[-1]["dropped_events"]
    received = {event_key(json.loads(m.payload)) for m in sub.on(events_topic(cam))}
    tracks = {e["id"] for e in produced}  # one recognition each, queued right after its first event
    recognitions_lost = len(tracks - {json.loads(m.payload)["id"] for m in sub.on(f"edgecam/{cam}/recognized")})
    fault_report.add("faults", "outbox full (outbox_max_rows 10, broker away)", dropped_by_bound=dropped,
                     recognitions_lost=recognitions_lost, **t.figures())
    assert dropped >= 6 and stats[-1]["mqtt"]["dropped"] == dropped
    # rows dropped = events lost + recognitions dropped (the collector may also miss a recognition or two)
    assert 0 < t.lost <= dropped <= t.lost + recognitions_lost and t.in_order, (t, recognitions_lost)
    assert [event_key(e) for e in produced[:t.lost]] == [k for k in map(event_key, produced) if k not in received]
    assert "outbox full (10 rows): dropped" in d.stderr() and traceback_free(d.stderr())
    assert stats[-1]["frames"] > 0 and max(s["frames"] for s in stats) == stats[-1]["frames"]


def test_sigterm_during_heavy_load_stops_cleanly(
    broker: Broker, collector: Callable[..., Collector], tmp_path: Path, fault_report: FaultReport,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A max-speed replay of a long clip (events every few frames) gets SIGTERM: it stops within a few seconds,
    publishes ``offline``, and every event it produced is delivered or left on disk for the next start."""
    clip = long_clip(tmp_path_factory.mktemp("clips") / "corridor_x8.mp4", 8)
    cam = "door"
    sub = collector([events_topic(cam), "edgecam/availability"])
    cfg = write_config(tmp_path / "edgecam.yaml", broker, tracker={"update_interval_s": 0.0})
    events = tmp_path / "events.jsonl"
    d = Daemon(["replay", str(clip), "--config", str(cfg), "--camera", cam, "--speed", "max", "--events",
                str(events)], tmp_path, "daemon")
    try:
        assert wait_until(lambda: len(read_jsonl(events)) >= 30, 60), d.stderr()[-3000:]
        stop_s = d.terminate(20)
    finally:
        d.kill()
    produced = read_jsonl(events)
    t = tally(produced, received_until_complete(sub, events_topic(cam), produced, 30))
    avail = [m.payload for m in sub.on("edgecam/availability")]
    fault_report.add("faults", "SIGTERM during a max-speed replay", stop_s=round(stop_s, 2), **t.figures())
    assert stop_s < 5.0, f"stopping took {stop_s:.1f} s"
    assert avail and avail[-1] == b"offline"
    assert t.lost == 0 and t.in_order, t
    assert "SIGTERM: stopping" in d.stderr() and traceback_free(d.stderr())
    opened = {e["id"] for e in produced if e["type"] == "new"}
    assert opened == {e["id"] for e in produced if e["type"] == "end"}  # every open track ended on the way out


def test_hung_broker_half_open_link(
    broker: Broker, collector: Callable[..., Collector], tmp_path: Path, fault_report: FaultReport,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The broker hangs (SIGSTOP) for longer than 1.5 x keepalive: the daemon notices the dead link, retries
    (connects that the kernel accepts but nobody answers), and delivers everything once the broker is back."""
    cam = "door"
    sub = collector([events_topic(cam)])
    cfg = write_config(tmp_path / "edgecam.yaml", broker)
    events = tmp_path / "events.jsonl"
    clip = long_clip(tmp_path_factory.mktemp("clips") / "corridor_x3.mp4", 3)
    d = Daemon(["replay", str(clip), "--config", str(cfg), "--camera", cam, "--speed", "realtime",
                "--events", str(events)], tmp_path, "daemon")
    try:
        assert sub.wait_for(lambda ms: len(ms) >= 2, 60), d.stderr()[-3000:]
        noticed = d.stderr().count("MQTT: disconnected from")
        broker.pause()
        produced_before = len(read_jsonl(events))
        # keepalive 5 s: a PINGREQ within 5 s, the link given up 1.5 x keepalive later without a PINGRESP
        assert wait_until(lambda: d.stderr().count("MQTT: disconnected from") > noticed, 20), d.stderr()[-3000:]
        produced_while_hung = len(read_jsonl(events)) - produced_before
        broker.resume()
        assert d.wait(60) == 0, d.stderr()[-3000:]
    finally:
        broker.resume()
        d.kill()
    produced = read_jsonl(events)
    t = tally(produced, received_until_complete(sub, events_topic(cam), produced, 30))
    fault_report.add("faults", "broker hung (SIGSTOP) mid-replay until the daemon gave the link up (half-open)",
                     produced_while_hung=produced_while_hung, **t.figures())
    assert t.lost == 0 and t.in_order, t
    assert "MQTT: disconnected from" in d.stderr() and traceback_free(d.stderr())
