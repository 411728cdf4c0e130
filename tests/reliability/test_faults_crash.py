"""Daemon crashes and stops: SIGKILL mid-replay (repeatedly, broker away and present), SIGTERM with the broker
away. The on-disk outbox survives, is never corrupted, and the next start delivers it: nothing lost."""

from __future__ import annotations

import random
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Broker, Collector, FaultReport, needs_mosquitto, wait_until
from faultlib import (
    CLIP,
    CLIP_REASON,
    HAVE_CLIP_AND_DETECTOR,
    Daemon,
    TcpProxy,
    outbox_rows,
    read_jsonl,
    received_until_complete,
    tally,
    traceback_free,
    write_config,
)

from edgecam.mqtt.publish import OUTBOX_FILE

pytestmark = [needs_mosquitto, pytest.mark.skipif(not HAVE_CLIP_AND_DETECTOR, reason=CLIP_REASON)]

CAM = "door"
EVENTS = f"edgecam/{CAM}/events"


def replay(cfg: Path, events: Path, workdir: Path, name: str, speed: str = "realtime") -> Daemon:
    return Daemon(["replay", str(CLIP), "--config", str(cfg), "--camera", CAM, "--speed", speed,
                   "--events", str(events)], workdir, name)


def check_outbox(state_dir: Path) -> int:
    """``PRAGMA integrity_check`` of the outbox as the next start finds it; the rows queued in it."""
    with sqlite3.connect(state_dir / OUTBOX_FILE) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def test_sigkill_mid_replay_repeatedly_outbox_survives_and_is_delivered(
    broker: Broker, collector: Callable[..., Collector], tmp_path: Path, fault_report: FaultReport
) -> None:
    """Four SIGKILLs at random points of a replay (two with the broker away, two while delivering), then one
    clean run: the outbox passes the integrity check after every kill and every produced event arrives."""
    sub = collector([EVENTS])
    cfg = write_config(tmp_path / "edgecam.yaml", broker)
    rng = random.Random(5)
    runs: list[Path] = []
    rows_after_kill = []
    for round_, broker_up in enumerate([False, False, True, True]):
        if broker_up and not broker.running:
            broker.start()
        elif not broker_up and broker.running:
            broker.stop()
        events = tmp_path / f"run{round_}.jsonl"
        runs.append(events)
        d = replay(cfg, events, tmp_path, f"run{round_}")
        try:
            at = rng.randint(3, 12)
            assert wait_until(lambda ev=events, n=at: len(read_jsonl(ev)) >= n, 60), d.stderr()[-3000:]
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            d.kill()
        rows_after_kill.append(check_outbox(tmp_path / "state"))
    final = tmp_path / "final.jsonl"
    runs.append(final)
    d = replay(cfg, final, tmp_path, "final", speed="max")
    assert d.wait(120) == 0, d.stderr()[-3000:]
    produced = [e for path in runs for e in read_jsonl(path)]
    t = tally(produced, received_until_complete(sub, EVENTS, produced, 30))
    left = check_outbox(tmp_path / "state")
    fault_report.add("faults", "daemon SIGKILLed mid-replay 4x, then restarted", kills=4,
                     rows_on_disk_after_each_kill=rows_after_kill, rows_left_at_end=left, **t.figures())
    assert t.lost == 0 and t.in_order, t
    assert rows_after_kill[0] > 0 and rows_after_kill[1] > rows_after_kill[0]  # queued across a kill
    assert left == 0 and traceback_free(d.stderr())


def test_sigterm_with_the_broker_away_persists_the_outbox(
    broker: Broker, collector: Callable[..., Collector], tmp_path: Path, fault_report: FaultReport
) -> None:
    """SIGTERM while the broker is away: the daemon does not wait for it, stops at once with its events on
    disk, and the next start delivers them."""
    sub = collector([EVENTS])
    broker.stop()
    cfg = write_config(tmp_path / "edgecam.yaml", broker)
    first = tmp_path / "first.jsonl"
    d = replay(cfg, first, tmp_path, "first")
    try:
        assert wait_until(lambda: len(read_jsonl(first)) >= 5, 60), d.stderr()[-3000:]
        stop_s = d.terminate(20, status=1)  # a replay whose events stay on disk says so and exits 1
    finally:
        d.kill()
    queued = re.search(r"(\d+) queued on disk for the next start", d.stderr())
    assert queued and int(queued.group(1)) == outbox_rows(read_jsonl(first)) == check_outbox(tmp_path / "state")
    broker.start()
    second = tmp_path / "second.jsonl"
    d2 = replay(cfg, second, tmp_path, "second", speed="max")
    assert d2.wait(120) == 0, d2.stderr()[-3000:]
    produced = read_jsonl(first) + read_jsonl(second)
    t = tally(produced, received_until_complete(sub, EVENTS, produced, 30))
    fault_report.add("faults", "SIGTERM with the broker away, then restarted", stop_s=round(stop_s, 2),
                     queued_on_disk=int(queued.group(1)), **t.figures())
    assert stop_s < 3.0 and t.lost == 0 and t.in_order, t
    assert traceback_free(d.stderr() + d2.stderr())



@pytest.mark.parametrize("then", ["link cut", "daemon SIGKILLed"])
def test_lost_pubacks_are_redelivered_and_counted(
    broker: Broker, collector: Callable[..., Collector], tmp_path: Path, fault_report: FaultReport, then: str
) -> None:
    """The link loses the broker's replies (PUBACKs) while events flow, then the connection is cut (or the
    daemon is killed and started again): the unacknowledged rows go again. At least once: nothing lost, the
    redeliveries are the duplicates a subscriber drops by ``(id, seq)``."""
    sub = collector([EVENTS])
    proxy = TcpProxy(broker.port)
    cfg = write_config(tmp_path / "edgecam.yaml", broker, mqtt={"port": proxy.port})
    first = tmp_path / "first.jsonl"
    runs = [first]
    d = replay(cfg, first, tmp_path, "first")
    try:
        assert sub.wait_for(lambda ms: len(ms) >= 2, 60), d.stderr()[-3000:]
        proxy.hold_replies()
        n = len(sub.on(EVENTS))
        assert sub.wait_for(lambda ms: len(ms) >= n + 3, 30), d.stderr()[-3000:]  # forwarded, PUBACKs held
        if then == "link cut":
            proxy.cut()
            assert d.wait(120) == 0, d.stderr()[-3000:]
        else:
            d.kill()
            proxy.cut()
            unacked = check_outbox(tmp_path / "state")
            assert unacked >= 3
            runs.append(tmp_path / "second.jsonl")
            d = replay(cfg, runs[-1], tmp_path, "second", speed="max")
            assert d.wait(120) == 0, d.stderr()[-3000:]
    finally:
        d.kill()
        proxy.close()
    produced = [e for path in runs for e in read_jsonl(path)]
    t = tally(produced, received_until_complete(sub, EVENTS, produced, 30))
    fault_report.add("faults", f"PUBACKs lost on the link, then {then}", **t.figures())
    assert t.lost == 0 and t.in_order, t
    assert t.duplicates >= 3, "no redelivery: the lost-PUBACK path was not hit"
    assert check_outbox(tmp_path / "state") == 0 and traceback_free(d.stderr())
