"""Visitors: repeat unknown faces remembered on the device, under stable ids (``visitor-17``), named later.

A track whose identity vote ends ``unknown`` with at least ``min_crops`` good-quality recognitions is a visit.
Its embeddings are averaged into one unit vector (the visit centroid) and matched against the stored visitors:
the visit's similarity to a visitor is the best cosine between its centroid and the centroids of the
visitor's earlier visits (the newest ``embeddings_per_visitor`` are kept). At or above the calibrated threshold
the visit updates that visitor (last seen, count, cameras, the best crop so far); below it, a new visitor gets
the next number, never reused. Naming a visitor (``edgecam visitors name``, the MQTT ``set/visitor`` command)
moves its centroids into the recognizer's gallery under the person's name and deletes the visitor.

The store is one SQLite file in the state directory (``visitors.db``), opened like the outbox: WAL, ``FULL``
sync by default (a committed visit survives power loss), a busy timeout and a retried open so cameras sharing
the folder can share the file. It is bounded in visitors and bytes (crops + embeddings): the visitors seen
longest ago go first. Visitors not seen for ``retention_days`` are deleted when the store opens and at every
visit (the daemon also calls ``expire`` periodically). Deleting is for real: ``secure_delete`` overwrites the
deleted rows, the WAL is checkpointed and truncated, and freed pages are returned to the file system.

The embeddings belong to one recognizer model (its sha256 is kept in the file): a store made by another model
is refused, naming the file, rather than matched against.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecam import EdgecamError
from edgecam.statedb import open_state_db

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.625
"""Visit-to-visitor similarity when neither the config (``visitors.threshold``) nor the recognizer's
``output.thresholds.visitor`` sets one: the lowest threshold at which at most 0.5 % of the visitors held two people
or more on the calibration people (LFW calib, the 500 CelebA eval identities that also calibrate the recognizer's
thresholds, the calibration half of lfw_few), measured with ``python -m training.recognizer.visitors_eval`` for the
recognizer ``DEFAULT_THRESHOLD_MODEL``."""
DEFAULT_THRESHOLD_MODEL = "54aa0387e87d60bbeac9800f903a091fb1239ee2685b563f5075b05d609871a5"
"""sha256 of the recognizer model ``DEFAULT_THRESHOLD`` was calibrated for (the shipped ``face_recognizer``)."""
STORE_FILE = "visitors.db"
"""The store's file name in the state directory."""
PREFIX = "visitor-"
ROW_OVERHEAD = 256
"""Bytes counted per visitor and per embedding row on top of their payloads (SQLite's own bookkeeping)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS visitors (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    first_seen REAL    NOT NULL,
    last_seen  REAL    NOT NULL,
    visits     INTEGER NOT NULL,
    cameras    TEXT    NOT NULL,
    crop       BLOB,
    crop_value REAL    NOT NULL DEFAULT 0,
    bytes      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS visitors_last_seen ON visitors (last_seen);
CREATE TABLE IF NOT EXISTS embeddings (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    visitor INTEGER NOT NULL REFERENCES visitors (id) ON DELETE CASCADE,
    vector  BLOB    NOT NULL,
    created REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS embeddings_visitor ON embeddings (visitor);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_ID = re.compile(r"^(?:visitor-)?([1-9][0-9]{0,17})$")


class VisitorError(EdgecamError):
    """The visitor store cannot be opened or used, or a visitor id that is not in it (names the file / id)."""


@dataclass(frozen=True)
class Visitor:
    """One remembered unknown face."""

    number: int
    first_seen: float  # seconds since the epoch
    last_seen: float
    visits: int
    cameras: list[str]
    embeddings: int  # visit centroids kept
    crop_bytes: int  # size of the best crop (JPEG), 0 without one
    bytes: int  # what the visitor counts against ``max_bytes``

    @property
    def id(self) -> str:
        """``visitor-<number>``."""
        return f"{PREFIX}{self.number}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (``id`` first)."""
        return {"id": self.id, "visits": self.visits, "first_seen": self.first_seen, "last_seen": self.last_seen,
                "cameras": self.cameras, "embeddings": self.embeddings, "crop_bytes": self.crop_bytes,
                "bytes": self.bytes}


@dataclass(frozen=True)
class Sighting:
    """What recording a visit did: the visitor (after the visit), whether it is new, the match similarity."""

    visitor: Visitor
    new: bool
    similarity: float | None  # best similarity to a stored visitor (None: the store was empty)


def parse_id(ref: str) -> int:
    """The number of ``visitor-17`` (or ``17``); VisitorError for anything else."""
    m = _ID.match(str(ref).strip())
    if m is None:
        raise VisitorError(f"'{ref}' is not a visitor id (want visitor-<number>, e.g. visitor-17)")
    return int(m.group(1))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def visit_centroid(embeddings: np.ndarray) -> np.ndarray:
    """The unit mean (D,) of a visit's unit embeddings (K, D)."""
    e = l2_normalize(np.asarray(embeddings, np.float32).reshape(len(embeddings), -1))
    return l2_normalize(e.mean(0))


def best_match(centroid: np.ndarray, stored: np.ndarray, owners: np.ndarray) -> tuple[int | None, float | None]:
    """The visitor (number) whose stored centroid (N, D) is closest to ``centroid`` (D,), and that similarity;
    ``(None, None)`` when nothing is stored. ``owners`` (N,) holds the visitor of each stored row."""
    if len(stored) == 0:
        return None, None
    sims = stored @ centroid
    k = int(np.argmax(sims))
    return int(owners[k]), float(sims[k])


class VisitorStore:
    """The bounded, persistent visitor store (see the module docstring); every method is thread-safe.

    Args:
        path: The SQLite file (created with its folder when missing).
        model_sha: sha256 of the recognizer model whose embeddings go in (None: open whatever model made it, to
            list, show, name or forget; ``record`` then needs a store that has one).
        dim: Embedding size (with ``model_sha``).
        threshold: Similarity at which a visit is the same visitor.
        max_visitors: Most visitors kept; beyond it the ones seen longest ago go.
        max_bytes: Most bytes (crops + embeddings + ``ROW_OVERHEAD`` per row) kept, the same way.
        retention_days: Visitors not seen for this long are deleted (None: kept until evicted or forgotten).
        embeddings_per_visitor: Visit centroids kept per visitor (the newest).
        fsync: ``synchronous=FULL`` (survives power loss) instead of ``NORMAL`` (survives crashes).
        clock: Wall-clock time source (seconds since the epoch).

    Raises:
        VisitorError: The file cannot be opened, is not a visitor store, or holds another model's embeddings.
    """

    def __init__(self, path: Path, model_sha: str | None = None, dim: int | None = None, threshold: float = 0.5,
                 max_visitors: int = 1000, max_bytes: int = 64 << 20, retention_days: float | None = None,
                 embeddings_per_visitor: int = 16, fsync: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        if max_visitors < 1 or max_bytes < 1 or embeddings_per_visitor < 1:
            raise ValueError("max_visitors, max_bytes and embeddings_per_visitor must be >= 1")
        self.path, self.threshold, self.clock = Path(path), float(threshold), clock
        self.max_visitors, self.max_bytes, self.per_visitor = max_visitors, max_bytes, embeddings_per_visitor
        self.retention_s = None if retention_days is None else float(retention_days) * 86400.0
        self._lock = threading.Lock()
        self._db = self._open(self.path, fsync)
        self._version = -1  # PRAGMA data_version of the cached embeddings (-1: reload)
        self._stored = np.zeros((0, 0), np.float32)  # (N, D) visit centroids of every visitor
        self._owners = np.zeros(0, np.int64)  # (N,) their visitor numbers
        self._seqs = np.zeros(0, np.int64)  # (N,) their rows
        self._closed_stats: dict[str, int] | None = None
        try:
            self.model_sha, self.dim = self._check_model(model_sha, dim)
            self.evicted = int(self._meta("evicted") or 0)
            self.expire()
        except BaseException:
            self._db.close()
            raise

    # -------------------------------------------------------------------------------------- opening

    @staticmethod
    def _open(path: Path, fsync: bool, timeout: float = 10.0) -> sqlite3.Connection:
        """Open (or create) the database like the outbox does (``statedb.open_state_db``); deleted content is
        overwritten and freed pages given back."""
        def setup(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA secure_delete=ON")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)
            db.execute("SELECT id, first_seen, last_seen, visits, cameras, crop, crop_value, bytes "
                       "FROM visitors LIMIT 0")
            db.execute("SELECT seq, visitor, vector, created FROM embeddings LIMIT 0")

        try:  # auto_vacuum only takes effect on a new file, before the WAL switch
            return open_state_db(path, fsync, setup, first=("PRAGMA auto_vacuum=INCREMENTAL",), timeout=timeout)
        except (sqlite3.Error, OSError) as exc:
            raise VisitorError(f"{path}: cannot open the visitor store: {exc}") from exc

    def _check_model(self, model_sha: str | None, dim: int | None) -> tuple[str | None, int | None]:
        """The model the store's embeddings belong to; recorded on first use, refused when another one."""
        with self._tx():
            have_sha, have_dim = self._meta("model_sha"), self._meta("dim")
            if model_sha is None:
                return have_sha, int(have_dim) if have_dim else None
            if have_sha is None or not self._count():
                self._set_meta("model_sha", model_sha)
                self._set_meta("dim", str(int(dim or 0)))
                return model_sha, dim
        if have_sha != model_sha:
            raise VisitorError(f"{self.path}: visitors recorded with another recognizer model (sha256 "
                               f"{have_sha[:12]}…, this one {model_sha[:12]}…): forget them with 'edgecam visitors "
                               "forget --all' (or name them first with the model that made them)")
        return model_sha, dim

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One write transaction under the lock: committed on success, rolled back on error."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise VisitorError(f"{self.path}: cannot write the visitor store: {exc}") from exc
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._version = -1  # the cached embeddings may hold what was rolled back
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?",
                         (key, value, value))

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM visitors").fetchone()[0])

    # -------------------------------------------------------------------------------------- matching

    def _refresh(self) -> None:
        """Reload the stored centroids when another connection changed the file (``PRAGMA data_version``; this
        connection's own writes keep the cache up to date as they go). Caller holds the lock."""
        version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        if version == self._version:
            return
        rows = self._db.execute("SELECT seq, visitor, vector FROM embeddings ORDER BY seq").fetchall()
        dim = self.dim or (len(rows[0][2]) // 4 if rows else 0)
        self._stored = np.frombuffer(b"".join(bytes(v) for *_, v in rows), np.float32).reshape(len(rows), dim)
        self._owners = np.array([int(o) for _, o, _ in rows], np.int64)
        self._seqs = np.array([int(q) for q, *_ in rows], np.int64)
        self._version = version

    def _cache_keep(self, keep: np.ndarray) -> None:
        """Keep only the cached rows where ``keep`` (N,) is true."""
        self._stored, self._owners, self._seqs = self._stored[keep], self._owners[keep], self._seqs[keep]

    def match(self, embeddings: np.ndarray) -> tuple[Visitor | None, float | None]:
        """The visitor a visit (K, D unit embeddings) would update, or None and the best similarity; no write."""
        centroid = visit_centroid(embeddings)
        with self._lock:
            self._refresh()
            number, sim = best_match(centroid, self._stored, self._owners)
            if number is None or sim is None or sim < self.threshold:
                return None, sim
            return self._get(number), sim

    def record(self, embeddings: np.ndarray, camera: str, crop: bytes | None = None, crop_value: float = 0.0,
               now: float | None = None) -> Sighting:
        """Record one visit: update the closest visitor at or above the threshold, else create one.

        Args:
            embeddings: (K, D) unit embeddings of the visit's good-quality crops (K >= 1).
            camera: Camera that saw it.
            crop: JPEG of the visit's best face; kept when ``crop_value`` beats the visitor's best so far.
            crop_value: How good ``crop`` is (the tracker's snapshot value: score x size x sharpness).
            now: Time of the visit (default: the clock).

        Raises:
            VisitorError: No model recorded for this store, wrong embedding size, or the file cannot be written.
        """
        if self.dim is None or self.model_sha is None:
            raise VisitorError(f"{self.path}: opened without a recognizer model: cannot record visits")
        emb = np.atleast_2d(np.asarray(embeddings, np.float32))
        if emb.ndim != 2 or emb.shape[0] < 1 or emb.shape[1] != self.dim:
            raise VisitorError(f"embeddings {np.shape(embeddings)}: want (K >= 1, {self.dim})")
        centroid, now = visit_centroid(emb), self.clock() if now is None else float(now)
        try:
            with self._tx():
                self._expire(now)
                self._refresh()
                number, sim = best_match(centroid, self._stored, self._owners)
                new = number is None or sim is None or sim < self.threshold
                number = self._insert(now, camera) if new else number
                assert number is not None
                self._add_visit(number, centroid, camera, crop, crop_value, now, new)
                self._evict(keep=number)
                visitor = self._get(number)
        except sqlite3.Error as exc:
            raise VisitorError(f"{self.path}: cannot record a visit: {exc}") from exc
        logger.info("%s: %s (visit %d, similarity %s)", visitor.id, "new visitor" if new else "seen again",
                    visitor.visits, "-" if sim is None else f"{sim:.3f}")
        return Sighting(visitor, new, None if sim is None else round(sim, 4))

    def _insert(self, now: float, camera: str) -> int:
        cur = self._db.execute("INSERT INTO visitors (first_seen, last_seen, visits, cameras) VALUES (?, ?, 0, ?)",
                               (now, now, json.dumps([camera])))
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def _add_visit(self, number: int, centroid: np.ndarray, camera: str, crop: bytes | None, crop_value: float,
                   now: float, new: bool) -> None:
        """One more visit of ``number``: its centroid (the oldest beyond the cap go), count, cameras, crop, bytes."""
        vec = centroid.astype(np.float32).reshape(1, -1)
        cur = self._db.execute("INSERT INTO embeddings (visitor, vector, created) VALUES (?, ?, ?)",
                               (number, vec.tobytes(), now))
        assert cur.lastrowid is not None
        old = [int(r[0]) for r in self._db.execute("SELECT seq FROM embeddings WHERE visitor = ? ORDER BY seq DESC "
                                                   "LIMIT -1 OFFSET ?", (number, self.per_visitor))]
        self._db.executemany("DELETE FROM embeddings WHERE seq = ?", [(q,) for q in old])
        if self._version != -1:  # keep the cache as the file: the new row in, the trimmed ones out
            stored = self._stored if len(self._stored) else np.zeros((0, vec.shape[1]), np.float32)
            self._stored = np.concatenate([stored, vec])
            self._owners = np.append(self._owners, number)
            self._seqs = np.append(self._seqs, int(cur.lastrowid))
            self._cache_keep(~np.isin(self._seqs, old))
        cameras, best = self._db.execute("SELECT cameras, crop_value FROM visitors WHERE id = ?",
                                         (number,)).fetchone()
        cams = json.loads(cameras)
        cams = cams if camera in cams else [*cams, camera]
        self._db.execute("UPDATE visitors SET last_seen = MAX(last_seen, ?), visits = visits + 1, cameras = ? "
                         "WHERE id = ?", (now, json.dumps(cams), number))
        if crop is not None and (new or crop_value > best):
            self._db.execute("UPDATE visitors SET crop = ?, crop_value = ? WHERE id = ?", (crop, crop_value, number))
        n, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(vector)), 0) FROM embeddings "
                                   "WHERE visitor = ?", (number,)).fetchone()
        self._db.execute("UPDATE visitors SET bytes = ? + COALESCE(LENGTH(crop), 0) WHERE id = ?",
                         (int(size) + (int(n) + 1) * ROW_OVERHEAD, number))

    def _evict(self, keep: int) -> None:
        """Delete the visitors seen longest ago while over ``max_visitors`` or ``max_bytes`` (never ``keep``)."""
        count, total = self._db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM visitors").fetchone()
        gone = []
        for number, size in self._db.execute("SELECT id, bytes FROM visitors WHERE id != ? ORDER BY last_seen, id",
                                             (keep,)).fetchall():
            if count <= self.max_visitors and total <= self.max_bytes:
                break
            gone.append(int(number))
            count, total = count - 1, total - int(size)
        if gone:
            self._delete(gone)
            self.evicted += len(gone)
            self._set_meta("evicted", str(self.evicted))
            logger.info("visitor store full: %d visitor(s) seen longest ago deleted (%s)", len(gone),
                        ", ".join(f"{PREFIX}{n}" for n in gone))

    # -------------------------------------------------------------------------------------- reading

    def _get(self, number: int) -> Visitor:
        row = self._db.execute(
            "SELECT v.id, v.first_seen, v.last_seen, v.visits, v.cameras, COALESCE(LENGTH(v.crop), 0), v.bytes, "
            "(SELECT COUNT(*) FROM embeddings e WHERE e.visitor = v.id) FROM visitors v WHERE v.id = ?",
            (number,)).fetchone()
        if row is None:
            raise VisitorError(f"{self.path}: no {PREFIX}{number} (forgotten, expired, or never seen)")
        n, first, last, visits, cams, crop, size, emb = row
        return Visitor(int(n), float(first), float(last), int(visits), list(json.loads(cams)), int(emb), int(crop),
                       int(size))

    def get(self, ref: str | int) -> Visitor:
        """A visitor by id (``visitor-17``, ``17``); VisitorError naming it when it is not in the store."""
        with self._lock:
            return self._get(ref if isinstance(ref, int) else parse_id(ref))

    def visitors(self) -> list[Visitor]:
        """Every visitor, the most recently seen first."""
        with self._lock:
            ids = [int(r[0]) for r in self._db.execute("SELECT id FROM visitors ORDER BY last_seen DESC, id DESC")]
            return [self._get(n) for n in ids]

    def crop(self, ref: str | int) -> bytes | None:
        """The visitor's best crop (JPEG), None without one."""
        v = self.get(ref)
        with self._lock:
            row = self._db.execute("SELECT crop FROM visitors WHERE id = ?", (v.number,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def embeddings(self, ref: str | int) -> np.ndarray:
        """The visitor's stored visit centroids (M, D), oldest first."""
        v = self.get(ref)
        with self._lock:
            rows = self._db.execute("SELECT vector FROM embeddings WHERE visitor = ? ORDER BY seq",
                                    (v.number,)).fetchall()
        return np.frombuffer(b"".join(bytes(r[0]) for r in rows), np.float32).reshape(len(rows), -1).copy()

    def offer_crop(self, ref: str | int, crop: bytes, value: float) -> bool:
        """Keep ``crop`` as the visitor's best when ``value`` beats the one it has; whether it did."""
        number = ref if isinstance(ref, int) else parse_id(ref)
        with self._tx():
            cur = self._db.execute("UPDATE visitors SET bytes = bytes - COALESCE(LENGTH(crop), 0) + ?, crop = ?, "
                                   "crop_value = ? WHERE id = ? AND crop_value < ?",
                                   (len(crop), crop, value, number, value))
        return cur.rowcount > 0

    def stats(self) -> dict[str, int]:
        """Visitors, embeddings and bytes stored; visitors evicted for room since the file was created (after
        ``close``: the figures at closing)."""
        if self._closed_stats is not None:
            return dict(self._closed_stats)
        with self._lock:
            count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM visitors").fetchone()
            emb = self._db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        return {"visitors": int(count), "embeddings": int(emb), "bytes": int(size), "evicted": self.evicted}

    # -------------------------------------------------------------------------------------- deleting

    def forget(self, refs: list[str | int]) -> list[Visitor]:
        """Delete visitors (rows, embeddings and crops, overwritten on disk); the ones deleted. VisitorError
        naming the first id that is not in the store (nothing is deleted then)."""
        numbers = [r if isinstance(r, int) else parse_id(r) for r in refs]
        with self._tx():
            gone = [self._get(n) for n in dict.fromkeys(numbers)]
            self._delete([v.number for v in gone])
        self._compact()
        return gone

    def forget_all(self) -> int:
        """Delete every visitor; how many there were (an empty store takes the next model that opens it)."""
        with self._tx():
            n = self._count()
            self._db.execute("DELETE FROM embeddings")
            self._db.execute("DELETE FROM visitors")
            self._cache_keep(np.zeros(len(self._owners), bool))
        self._compact()
        return n

    def expire(self, now: float | None = None) -> int:
        """Delete the visitors not seen for ``retention_days``; how many."""
        if self.retention_s is None:
            return 0
        with self._tx():
            n = self._expire(self.clock() if now is None else now)
        if n:
            self._compact()
        return n

    def _expire(self, now: float) -> int:
        if self.retention_s is None:
            return 0
        old = [int(r[0]) for r in self._db.execute("SELECT id FROM visitors WHERE last_seen < ?",
                                                   (now - self.retention_s,))]
        if old:
            self._delete(old)
            logger.info("%d visitor(s) not seen for %.0f days forgotten (%s)", len(old), self.retention_s / 86400,
                        ", ".join(f"{PREFIX}{n}" for n in old))
        return len(old)

    def _delete(self, numbers: list[int]) -> None:
        """Delete visitors and their embeddings (caller holds a transaction)."""
        self._db.executemany("DELETE FROM embeddings WHERE visitor = ?", [(n,) for n in numbers])
        self._db.executemany("DELETE FROM visitors WHERE id = ?", [(n,) for n in numbers])
        self._cache_keep(~np.isin(self._owners, numbers))

    def _compact(self) -> None:
        """After a deletion: give freed pages back and empty the WAL, so deleted faces are not left on disk."""
        with self._lock:
            try:
                self._db.execute("PRAGMA incremental_vacuum")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                logger.warning("visitor store %s: compacting after a deletion failed: %s", self.path, exc)

    def close(self) -> None:
        """Checkpoint and close the database; safe to call twice."""
        try:
            closing = self.stats() if self._closed_stats is None else None
        except sqlite3.Error:
            closing = None
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._db.close()
            except sqlite3.ProgrammingError:
                pass  # already closed
            except sqlite3.Error as exc:
                logger.warning("visitor store %s: close failed: %s", self.path, exc)
            self._closed_stats = self._closed_stats or closing or {"visitors": 0, "embeddings": 0, "bytes": 0,
                                                                      "evicted": self.evicted}


def name_visitor(store: VisitorStore, ref: str | int, name: str, gallery: Any, gallery_path: Path | None) -> Visitor:
    """Give a visitor a name: its visit centroids join ``gallery`` (an ``edgecam.recognize.Gallery``; appended when
    the person is enrolled already), the gallery is saved to ``gallery_path`` (None: in memory only), then the
    visitor is deleted from the store. The visitor as it was.

    Raises:
        VisitorError: No such visitor, or the gallery belongs to another recognizer model.
        GalleryError: A name that cannot be a person (see ``edgecam.recognize.check_person_name``).
    """
    visitor = store.get(ref)
    if store.model_sha is not None and gallery.model_sha != store.model_sha:
        where = gallery_path or "the gallery"
        raise VisitorError(f"{where}: enrolled with another recognizer model than the visitors in {store.path}")
    gallery.add(name, store.embeddings(visitor.number))
    if gallery_path is not None:
        gallery.save(gallery_path)
    store.forget([visitor.number])
    logger.info("%s named %s: %d embeddings moved into %s", visitor.id, name, visitor.embeddings,
                gallery_path or "the gallery")
    return visitor


class Visitors:
    """The daemon's visitor stage, the tracker's ``VisitorHook``: records an unknown track as a visit.

    A confirmed track is recorded once, as soon as its identity vote says ``unknown`` with all ``max_votes`` votes
    in (while the person is still in view), or when it ends unknown with fewer; either way with at least
    ``min_crops`` recognized crops. When the track ends, a better best crop than the one recorded replaces the
    visitor's. A store that cannot be written is logged; the track goes on without a visitor.
    """

    def __init__(self, store: VisitorStore, camera: str, min_crops: int = 2, max_votes: int = 10,
                 jpeg_quality: int = 85) -> None:
        self.store, self.camera = store, camera
        self.min_crops, self.max_votes, self.jpeg_quality = min_crops, max_votes, jpeg_quality
        self._recorded: dict[str, float] = {}  # track id -> crop value recorded with the visit

    @classmethod
    def from_config(cls, cfg: Any, recognizer: Any) -> Visitors:
        """The stage of a validated ``edgecam.config.Config`` and its identity recognizer (store in
        ``state_dir``)."""
        v = cfg.visitors
        store = VisitorStore(Path(cfg.state_dir) / STORE_FILE, recognizer.model_sha, recognizer.dim,
                             threshold_for(v.threshold, recognizer), v.max_visitors, v.max_bytes, v.retention_days,
                             v.embeddings_per_visitor, v.fsync)
        max_votes = cfg.recognizer.max_votes if cfg.recognizer is not None else 10
        return cls(store, cfg.camera.name, v.min_crops, max_votes, cfg.snapshot.jpeg_quality)

    def __call__(self, track: Any, final: bool) -> bool:
        if track.visitor is not None:
            if final:
                self._better_crop(track)
            return False
        if track.identity[1] != "unknown" or len(track.embeddings) < self.min_crops or track.id in self._recorded:
            return False
        if not final and len(track.votes) < self.max_votes:
            return False
        self._recorded[track.id] = track.best_value  # tried once, whatever happens
        try:
            seen = self.store.record(np.stack(track.embeddings), self.camera, self._jpeg(track), track.best_value)
        except VisitorError:
            logger.exception("track %s: recording the visit failed", track.id)
            return False
        finally:
            if final:  # the track is gone: nothing to remember about it
                self._recorded.pop(track.id, None)
        track.visitor, track.visits = seen.visitor.id, seen.visitor.visits
        return True

    def _better_crop(self, track: Any) -> None:
        recorded = self._recorded.pop(track.id, None)
        if recorded is None or track.best_value <= recorded:
            return
        jpeg = self._jpeg(track)
        try:
            if jpeg is not None:
                self.store.offer_crop(track.visitor, jpeg, track.best_value)
        except VisitorError:
            logger.warning("%s: keeping the better crop of track %s failed", track.visitor, track.id, exc_info=True)

    def _jpeg(self, track: Any) -> bytes | None:
        if track.best_image is None:
            return None
        import cv2

        ok, buf = cv2.imencode(".jpg", track.best_image, [cv2.IMWRITE_JPEG_QUALITY, int(self.jpeg_quality)])
        return buf.tobytes() if ok else None

    def close(self) -> None:
        self.store.close()


def threshold_for(configured: float | None, recognizer: Any) -> float:
    """The visitor threshold: the config's, else the recognizer model's ``output.thresholds.visitor``, else
    ``DEFAULT_THRESHOLD``."""
    if configured is not None:
        return float(configured)
    manifest = getattr(recognizer, "manifest", None)
    value = ((manifest.output if manifest is not None else {}).get("thresholds") or {}).get("visitor")
    if value is not None:
        return float(value)
    if getattr(recognizer, "model_sha", DEFAULT_THRESHOLD_MODEL) != DEFAULT_THRESHOLD_MODEL:
        logger.warning("visitors: threshold %.3f was calibrated for another recognizer model; measure one for this "
                       "model (training/recognizer/visitors_eval.py) and set visitors.threshold", DEFAULT_THRESHOLD)
    return DEFAULT_THRESHOLD
