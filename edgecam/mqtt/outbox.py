"""The on-disk outbox: every event is written here first and leaves only when the broker acknowledged it.

``Outbox`` is the storage; ``OutboxSender`` hands its rows to the MQTT client in order and deletes them on
PUBACK.

paho-mqtt keeps unacknowledged messages only in memory, so a daemon killed during a broker outage would lose
them. The outbox is a SQLite database in WAL mode in the state directory: one row per message, ordered by an
autoincrement ``seq``; rows carry the camera so several daemons may share one file. It is bounded: when a
camera has ``max_rows`` rows queued, the oldest rows that were not yet handed to the MQTT client are dropped
first, and the drops are counted (persisted in the ``meta`` table, so the count survives restarts).

Every method is thread-safe (one connection behind a lock); SQLite's own locking makes several processes
sharing a file safe. With ``fsync`` (``synchronous=FULL``) a committed row survives SIGKILL and power loss
alike; without it (``synchronous=NORMAL``) it survives SIGKILL and crashes of the daemon, and the file is never
corrupted, but the last rows may be lost if the power goes.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgecam import EdgecamError
from edgecam.statedb import open_state_db

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    camera  TEXT    NOT NULL,
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    qos     INTEGER NOT NULL,
    created REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_camera_seq ON outbox (camera, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class OutboxError(EdgecamError):
    """The outbox database cannot be opened or used (names the file)."""


@dataclass(frozen=True)
class Row:
    """One queued message."""

    seq: int
    topic: str
    payload: bytes
    qos: int


class Outbox:
    """A bounded, ordered, persistent queue of MQTT messages per camera.

    Args:
        path: The SQLite file (created with its folder when missing).
        camera: The camera whose rows this instance puts, reads and bounds.
        max_rows: Most rows queued for this camera; beyond it the oldest droppable rows go.
        fsync: Sync every commit to the storage (survives power loss; a few ms per event on SD cards).

    Raises:
        OutboxError: The file cannot be opened or is not an outbox database.
    """

    def __init__(self, path: Path, camera: str, max_rows: int, fsync: bool = True) -> None:
        if max_rows < 1:
            raise ValueError(f"outbox max_rows must be >= 1, got {max_rows}")
        self.path = Path(path)
        self.camera = camera
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._db = self._open(self.path, fsync)

    @staticmethod
    def _open(path: Path, fsync: bool, timeout: float = 10.0) -> sqlite3.Connection:
        """Open (or create) the database (``statedb.open_state_db``: WAL, retried while another process creates
        it) and check its schema."""
        def setup(db: sqlite3.Connection) -> None:
            db.executescript(_SCHEMA)
            db.execute("SELECT seq, camera, topic, payload, qos, created FROM outbox LIMIT 0")

        try:
            return open_state_db(path, fsync, setup, timeout=timeout)
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(f"{path}: cannot open the outbox database: {exc}") from exc

    def put(self, topic: str, payload: bytes, qos: int, created: float, keep_after: int = 0) -> tuple[int, int]:
        """Append one message, dropping the oldest rows first when the camera's queue is full.

        Args:
            topic: MQTT topic.
            payload: Message bytes.
            qos: MQTT QoS for the message.
            created: Wall-clock time of the message (seconds since the epoch).
            keep_after: Rows with ``seq <= keep_after`` are in flight in the MQTT client and are not dropped
                (they would be delivered anyway); only newer rows are candidates.

        Returns:
            ``(seq, dropped)``: the new row's sequence number and how many rows were dropped to make room.

        Raises:
            OutboxError: The database cannot be written (disk full, file removed, ...).
        """
        try:
            with self._tx():
                dropped = self._make_room(keep_after)
                cur = self._db.execute(
                    "INSERT INTO outbox (camera, topic, payload, qos, created) VALUES (?, ?, ?, ?, ?)",
                    (self.camera, topic, payload, qos, created),
                )
                seq = cur.lastrowid
        except sqlite3.Error as exc:
            raise OutboxError(f"{self.path}: cannot queue a message: {exc}") from exc
        assert seq is not None
        return seq, dropped

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One write transaction under the lock: committed on success, rolled back on error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _make_room(self, keep_after: int) -> int:
        """Delete the oldest droppable rows so one more fits; count them in ``meta``. Caller holds a transaction."""
        queued = self._db.execute("SELECT COUNT(*) FROM outbox WHERE camera = ?", (self.camera,)).fetchone()[0]
        excess = queued + 1 - self.max_rows
        if excess <= 0:
            return 0
        cur = self._db.execute(
            "DELETE FROM outbox WHERE seq IN "
            "(SELECT seq FROM outbox WHERE camera = ? AND seq > ? ORDER BY seq LIMIT ?)",
            (self.camera, keep_after, excess),
        )
        n = max(cur.rowcount, 0)
        if n:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = value + ?",
                (self._dropped_key, n, n),
            )
        return n

    @property
    def _dropped_key(self) -> str:
        return f"dropped:{self.camera}"

    def after(self, seq: int, limit: int) -> list[Row]:
        """The camera's rows with ``seq`` greater than ``seq``, oldest first, at most ``limit``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, payload, qos FROM outbox WHERE camera = ? AND seq > ? ORDER BY seq LIMIT ?",
                (self.camera, seq, limit),
            ).fetchall()
        return [Row(int(s), str(t), bytes(p), int(q)) for s, t, p, q in rows]

    def delete(self, seqs: list[int]) -> int:
        """Remove acknowledged rows (missing ones are ignored). Returns how many rows were removed."""
        if not seqs:
            return 0
        with self._tx():
            cur = self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
        return max(cur.rowcount, 0)

    def count(self) -> int:
        """Rows queued for this camera."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox WHERE camera = ?", (self.camera,)).fetchone()[0])

    def dropped(self) -> int:
        """Rows of this camera dropped for room since the database was created."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (self._dropped_key,)).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Checkpoint and close the database; safe to call twice."""
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._db.close()
            except sqlite3.ProgrammingError:
                pass  # already closed
            except sqlite3.Error as exc:
                logger.warning("outbox %s: close failed: %s", self.path, exc)


# ---------------------------------------------------------------------------------------------------------------
# Handing rows to the MQTT client in order

PublishRow = Callable[[Row], "tuple[int, bool | None]"]
"""Give a row to the MQTT client: ``(mid, True)`` sent, ``(mid, False)`` accepted while disconnected (the client
sends it after connecting), ``(0, None)`` the client's queue is full (try later)."""

RESEND_AFTER_S = 30.0
"""Rows from an earlier connection still unacknowledged this long after a reconnect are sent again."""
_LATENCY_WINDOW = 10_000


@dataclass
class _Inflight:
    """A row handed to the client: which row, on which connection (``epoch``; -1 = accepted while away)."""

    seq: int
    epoch: int


class OutboxSender:
    """Moves outbox rows to an MQTT client in order and deletes each when its PUBACK arrives.

    At most ``max_inflight`` rows await PUBACK at once, and only while connected. The client (paho) re-sends
    what is unacknowledged after a reconnect, in order; rows handed over on an earlier connection must be
    acknowledged before newer rows go out, so order is kept. ``put``, ``connected``, ``disconnected`` and
    ``ack`` may be called from any thread (``ack`` never blocks: paho calls it holding its own locks);
    ``step`` runs in one pump thread.

    Args:
        outbox: The rows.
        max_inflight: Most rows awaiting PUBACK.
        publish: Hands one row to the client (see ``PublishRow``).
        on_reject: Called with ``(seq, reason)`` when the broker refuses a row (MQTT 5 failure reason code).
    """

    def __init__(
        self, outbox: Outbox, max_inflight: int, publish: PublishRow, on_reject: Callable[[int, str], None]
    ) -> None:
        self.outbox = outbox
        self.max_inflight = max_inflight
        self._publish = publish
        self._on_reject = on_reject
        self._lock = threading.Lock()  # epoch, connection state, _last_seq, handing rows over
        self._acks: queue.SimpleQueue[tuple[int, str | None, float]] = queue.SimpleQueue()
        self._inflight: dict[int, _Inflight] = {}  # mid -> row; pump thread only (read-only elsewhere)
        self._last_seq = 0
        self._epoch = 0
        self._connected = False
        self._connected_at = 0.0
        self._t0: dict[int, float] = {}  # seq -> monotonic time the message's frame arrived
        self.latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self.delivered = 0
        self.rejected = 0

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def put(self, topic: str, payload: bytes, qos: int, t0: float) -> tuple[int, int]:
        """Queue a message on disk; returns ``(seq, dropped)`` (see ``Outbox.put``)."""
        with self._lock:
            seq, dropped = self.outbox.put(topic, payload, qos, time.time(), keep_after=self._last_seq)
            self._t0[seq] = t0
        return seq, dropped

    def connected(self) -> None:
        """A new connection is up (a new epoch)."""
        with self._lock:
            self._epoch += 1
            self._connected = True
            self._connected_at = time.monotonic()

    def disconnected(self) -> None:
        self._connected = False

    def ack(self, mid: int, failure: str | None, t_ack: float) -> None:
        """A PUBACK (or the send of a QoS 0 message) for ``mid``; ``failure`` is the reason when refused."""
        self._acks.put((mid, failure, t_ack))

    def idle(self) -> bool:
        """Nothing queued and nothing awaiting PUBACK."""
        return not self._inflight and self.outbox.count() == 0

    def step(self) -> None:
        """Delete acknowledged rows, re-send stuck ones, hand over new ones (the pump thread's work)."""
        self.handle_acks()
        self._resend_stuck()
        self._send_more()

    def handle_acks(self) -> None:
        """Delete the rows whose PUBACK arrived; count deliveries, rejections and latency."""
        done: list[int] = []
        while True:
            try:
                mid, failure, t_ack = self._acks.get_nowait()
            except queue.Empty:
                break
            row = self._inflight.pop(mid, None)
            if row is None:
                continue  # not a row of ours (a state, snapshot, discovery message)
            done.append(row.seq)
            t0 = self._t0.pop(row.seq, None)
            if failure is not None:
                self.rejected += 1
                self._on_reject(row.seq, failure)
            else:
                self.delivered += 1
                if t0 is not None:
                    self.latencies.append(t_ack - t0)
                    logger.debug("MQTT: event row %d PUBACK %.3f ms after its frame", row.seq, (t_ack - t0) * 1e3)
        self.outbox.delete(done)
        if len(self._t0) > 2 * self.outbox.max_rows:  # rows dropped for room never get a PUBACK
            self._t0.clear()

    def _resend_stuck(self) -> None:
        """Safety net: rows from an earlier connection still unacknowledged long after a reconnect go again."""
        with self._lock:
            if not self._connected or time.monotonic() - self._connected_at < RESEND_AFTER_S:
                return
            stale = [row.seq for row in self._inflight.values() if row.epoch != self._epoch]
            if not stale:
                return
            logger.warning("MQTT: %d events unacknowledged since the reconnect; sending them again", len(stale))
            self._inflight.clear()
            self._last_seq = min(stale) - 1

    def _send_more(self) -> None:
        """Hand the next rows over while connected, keeping at most ``max_inflight`` awaiting PUBACK."""
        with self._lock:
            if not self._connected:
                return
            if any(row.epoch != self._epoch for row in self._inflight.values()):
                return  # the client re-sends those first; newer rows wait so order is kept
            free = self.max_inflight - len(self._inflight)
            for row in self.outbox.after(self._last_seq, free) if free > 0 else []:
                mid, sent = self._publish(row)
                if sent is None:
                    break
                self._inflight[mid] = _Inflight(row.seq, self._epoch if sent else -1)
                self._last_seq = row.seq
