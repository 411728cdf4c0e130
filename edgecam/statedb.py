"""The SQLite files edgecam keeps in its state directory (the outbox, the visitor store): opened one way."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def open_state_db(path: Path, fsync: bool, setup: Callable[[sqlite3.Connection], None],
                  first: Sequence[str] = (), timeout: float = 10.0) -> sqlite3.Connection:
    """Open (or create) a database in WAL mode at sync level FULL (``fsync``) or NORMAL, autocommit, with a busy
    timeout; ``first`` statements run before the WAL switch (pragmas that only a new file takes), ``setup`` after
    it (schema, checks).

    Processes that create the same new database at once (cameras sharing a state directory) can get 'database is
    locked' from the WAL switch or the schema without SQLite's busy timeout applying: such an open is retried
    until ``timeout``.

    Raises:
        sqlite3.Error, OSError: the file cannot be opened or ``setup`` fails (not a lock), or the lock outlasts
            ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        db = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(path), timeout=timeout, check_same_thread=False, isolation_level=None)
            for statement in first:
                db.execute(statement)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            setup(db)
            return db
        except (sqlite3.Error, OSError) as exc:
            if db is not None:
                db.close()
            locked = isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
            if not locked or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
