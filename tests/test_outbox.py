"""The SQLite outbox on its own: order, bound, drop count, concurrency, WAL, SIGKILL durability."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import edgecam.mqtt.outbox as outbox_module
from edgecam.mqtt.outbox import Outbox, OutboxError, OutboxSender


def test_put_after_delete_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", "cam", 100)
    seqs = [box.put("t", f"m{i}".encode(), 1, time.time())[0] for i in range(10)]
    assert seqs == sorted(seqs) and box.count() == 10
    rows = box.after(0, 4)
    assert [r.payload for r in rows] == [b"m0", b"m1", b"m2", b"m3"] and rows[0].qos == 1 and rows[0].topic == "t"
    assert [r.payload for r in box.after(rows[-1].seq, 100)] == [f"m{i}".encode() for i in range(4, 10)]
    assert box.delete([seqs[0], seqs[1], 999_999]) == 2
    assert box.count() == 8 and box.after(0, 1)[0].payload == b"m2"
    box.close()
    box.close()


def test_cameras_share_a_file_without_mixing(tmp_path: Path) -> None:
    a, b = Outbox(tmp_path / "o.db", "a", 3), Outbox(tmp_path / "o.db", "b", 3)
    for i in range(5):
        a.put("ta", b"%d" % i, 1, 0.0)
    b.put("tb", b"x", 1, 0.0)
    assert a.count() == 3 and b.count() == 1 and a.dropped() == 2 and b.dropped() == 0
    assert [r.payload for r in a.after(0, 10)] == [b"2", b"3", b"4"]
    a.close()
    b.close()


def test_bound_drops_oldest_not_in_flight(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", "cam", 5)
    seqs = [box.put("t", b"%d" % i, 1, 0.0)[0] for i in range(5)]
    # rows 0 and 1 are in flight (seq <= keep_after): the oldest droppable is row 2
    seq, dropped = box.put("t", b"5", 1, 0.0, keep_after=seqs[1])
    assert dropped == 1
    assert [r.payload for r in box.after(0, 10)] == [b"0", b"1", b"3", b"4", b"5"]
    _, dropped = box.put("t", b"6", 1, 0.0)
    assert dropped == 1 and box.after(0, 1)[0].payload == b"1"
    assert box.dropped() == 2
    box.close()
    again = Outbox(tmp_path / "o.db", "cam", 5)
    assert again.dropped() == 2 and again.count() == 5  # counts and rows survive a reopen
    again.close()


@pytest.mark.parametrize("fsync", [True, False])
def test_wal_mode_sync_level_and_integrity(tmp_path: Path, fsync: bool) -> None:
    box = Outbox(tmp_path / "o.db", "cam", 10, fsync=fsync)
    box.put("t", b"x", 1, 0.0)
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == (2 if fsync else 1)  # FULL / NORMAL
    with sqlite3.connect(tmp_path / "o.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    box.close()


def test_write_failure_is_an_outbox_error(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", "cam", 10)
    box._db.execute("PRAGMA query_only=ON")  # every write now fails, like a full or read-only disk
    with pytest.raises(OutboxError, match="cannot queue"):
        box.put("t", b"x", 1, 0.0)
    box._db.execute("PRAGMA query_only=OFF")
    box.put("t", b"y", 1, 0.0)  # and the outbox still works afterwards
    assert box.count() == 1
    box.close()


def test_threads_put_and_delete_concurrently(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", "cam", 100_000)
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(200):
                box.put("t", b"%d-%d" % (k, i), 1, 0.0)
        except BaseException as exc:  # noqa: BLE001 - collected for the assert
            errors.append(exc)

    def deleter() -> None:
        deadline = time.monotonic() + 10
        deleted = 0
        while deleted < 400 and time.monotonic() < deadline:
            rows = box.after(0, 50)
            deleted += box.delete([r.seq for r in rows])

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)] + [threading.Thread(target=deleter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert box.count() == 0
    box.close()


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "o.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutboxError, match=str(bad)):
        Outbox(bad, "cam", 10)
    with pytest.raises(ValueError, match="max_rows"):
        Outbox(tmp_path / "p.db", "cam", 0)


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from edgecam.mqtt.outbox import Outbox
    box = Outbox(Path(sys.argv[1]), "cam", 1_000_000)
    i = 0
    while True:
        seq, _ = box.put("t", b"%d" % i, 1, time.time())
        print(seq, flush=True)
        if i % 7 == 0:
            box.delete([r.seq for r in box.after(0, 3)])
        i += 1
    """
)


@pytest.mark.slow  # not in make test-fast
@pytest.mark.parametrize("round_", range(3))
def test_sigkill_mid_write_never_corrupts_or_loses_committed_rows(tmp_path: Path, round_: int) -> None:
    path = tmp_path / "o.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout is not None
    acked: list[int] = []
    deadline = time.monotonic() + 20
    while len(acked) < 150 + 50 * round_ and time.monotonic() < deadline:
        acked.append(int(proc.stdout.readline()))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    acked += [int(line) for line in proc.stdout.read().split()]  # printed (so committed) before the kill landed
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    box = Outbox(path, "cam", 1_000_000)
    on_disk = [r.seq for r in box.after(0, 1_000_000)]
    # the writer deletes only from the head, so what is on disk is exactly the newest committed rows: the tail of
    # the seqs put() returned (plus at most one row committed just before the kill, before its seq was printed)
    if on_disk and on_disk[-1] == acked[-1] + 1:
        on_disk.pop()
    assert len(on_disk) >= 50 and on_disk == acked[-len(on_disk) :]
    box.close()


class FakeClient:
    """Stands in for paho: records what the sender hands over; ``mode`` decides the answer."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []  # (mid, payload)
        self.mode: bool | None = True
        self.next_mid = 0

    def publish(self, row: object) -> tuple[int, bool | None]:
        if self.mode is None:
            return 0, None
        self.next_mid += 1
        self.sent.append((self.next_mid, row.payload))  # type: ignore[attr-defined]
        return self.next_mid, self.mode


def make_sender(tmp_path: Path, n: int, max_inflight: int = 3) -> tuple[OutboxSender, FakeClient, list[int]]:
    client, rejected = FakeClient(), []
    sender = OutboxSender(Outbox(tmp_path / "o.db", "cam", 100), max_inflight, client.publish,
                          lambda seq, reason: rejected.append(seq))  # fmt: skip
    for i in range(n):
        sender.put("t", b"%d" % i, 1, time.monotonic())
    return sender, client, rejected


def test_sender_window_order_and_delete_on_ack(tmp_path: Path) -> None:
    sender, client, _ = make_sender(tmp_path, 5)
    sender.step()
    assert client.sent == [], "nothing goes out while disconnected"
    sender.connected()
    sender.step()
    assert [p for _, p in client.sent] == [b"0", b"1", b"2"] and sender.inflight == 3
    sender.ack(client.sent[0][0], None, time.monotonic())
    sender.ack(999, None, time.monotonic())  # not ours: ignored
    sender.step()
    assert [p for _, p in client.sent] == [b"0", b"1", b"2", b"3"] and sender.outbox.count() == 4
    assert sender.delivered == 1 and len(sender.latencies) == 1


def test_sender_waits_for_rows_of_an_earlier_connection(tmp_path: Path) -> None:
    sender, client, _ = make_sender(tmp_path, 6)
    sender.connected()
    sender.step()
    first = [mid for mid, _ in client.sent]
    sender.disconnected()
    sender.connected()  # paho re-sends the 3 unacknowledged rows itself, in order
    sender.ack(first[0], None, time.monotonic())
    sender.step()
    assert len(client.sent) == 3, "newer rows must wait until the re-sent ones are acknowledged"
    for mid in first[1:]:
        sender.ack(mid, None, time.monotonic())
    sender.step()
    assert [p for _, p in client.sent[3:]] == [b"3", b"4", b"5"]


def test_sender_queue_full_and_accepted_while_away(tmp_path: Path) -> None:
    sender, client, _ = make_sender(tmp_path, 4)
    sender.connected()
    client.mode = None  # the client's queue is full
    sender.step()
    assert client.sent == [] and sender.inflight == 0
    client.mode = False  # accepted while the link is (secretly) down: counts as from an earlier connection
    sender.step()
    assert len(client.sent) == 3
    client.mode = True
    sender.step()
    assert len(client.sent) == 3, "rows accepted while away must be acknowledged first"


def test_sender_rejected_rows_are_reported_and_removed(tmp_path: Path) -> None:
    sender, client, rejected = make_sender(tmp_path, 2)
    sender.connected()
    sender.step()
    sender.ack(client.sent[0][0], "Not authorized", time.monotonic())
    sender.step()
    assert rejected == [1] and sender.rejected == 1 and sender.outbox.count() == 1


def test_sender_resends_rows_stuck_after_a_reconnect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox_module, "RESEND_AFTER_S", 0.0)
    sender, client, _ = make_sender(tmp_path, 2)
    sender.connected()
    sender.step()
    sender.disconnected()
    sender.connected()  # suppose paho lost them: after RESEND_AFTER_S they go again, in order
    sender.step()
    assert [p for _, p in client.sent] == [b"0", b"1", b"0", b"1"]


@pytest.mark.slow  # not in make test-fast
def test_processes_opening_a_new_outbox_at_once_all_succeed(tmp_path: Path) -> None:
    """Two daemons (cameras) sharing a state directory start together: creating the database, switching
    it to WAL and creating the schema race; every one of them must open it (SQLite answers 'database is
    locked' at once there, without waiting for its busy timeout)."""
    for round_ in range(5):
        path = tmp_path / f"round{round_}" / "outbox.sqlite3"
        start = time.time() + 1.0
        code = textwrap.dedent(f"""
            import time
            from pathlib import Path
            from edgecam.mqtt.outbox import Outbox
            time.sleep(max(0.0, {start!r} - time.time()))
            Outbox(Path({str(path)!r}), "cam", 100).put("t", b"x", 1, 0.0)
        """)
        procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
                 for _ in range(6)]
        errors = [p.communicate(timeout=60)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), [e for e in errors if e][:1]
        assert Outbox(path, "cam", 100).count() == 6
