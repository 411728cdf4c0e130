"""The on-disk outbox: every event is written here first and leaves only when the broker acknowledged it.

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
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgecam import EdgecamError

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
    def _open(path: Path, fsync: bool) -> sqlite3.Connection:
        """Open (or create) the database in WAL mode and check its schema."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(path), timeout=10.0, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            db.executescript(_SCHEMA)
            db.execute("SELECT seq, camera, topic, payload, qos, created FROM outbox LIMIT 0")
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(f"{path}: cannot open the outbox database: {exc}") from exc
        return db

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
