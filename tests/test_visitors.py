"""Visitors: the store on its own (matching, stable ids, restart, retention, forget on disk, bounds, model, SIGKILL)
and as the tracker's hook."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edgecam.config import SnapshotConfig, TrackerConfig
from edgecam.crops import Quality
from edgecam.sources import Frame
from edgecam.track import Observation, Tracker, Vote
from edgecam.visitors import VisitorError, Visitors, VisitorStore, parse_id, visit_centroid

DIM = 16
SHA = "a" * 64


def person(seed: int) -> np.ndarray:
    """A random unit direction: one 'person'."""
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def visit(seed: int, k: int = 4, noise: float = 0.15, rng_seed: int = 0) -> np.ndarray:
    """(k, DIM) unit embeddings of one visit of person ``seed`` (noisy views)."""
    rng = np.random.default_rng(1000 * seed + rng_seed + 7)
    e = person(seed)[None] + noise * rng.normal(size=(k, DIM)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def store(path: Path, **kw: object) -> VisitorStore:
    args: dict = {"model_sha": SHA, "dim": DIM, "threshold": 0.6, "fsync": False, **kw}
    return VisitorStore(path, **args)


def test_same_face_same_id_other_face_new_id_never_reused(tmp_path: Path) -> None:
    s = store(tmp_path / "v.db", clock=Clock())
    a1 = s.record(visit(1), "door", b"jpeg-a1", 1.0)
    a2 = s.record(visit(1, rng_seed=1), "garden", b"jpeg-a2", 5.0)
    b1 = s.record(visit(2), "door")
    assert a1.new and a1.similarity is None and a1.visitor.id == "visitor-1" and a1.visitor.visits == 1
    assert not a2.new and a2.visitor.id == "visitor-1" and a2.visitor.visits == 2 and a2.similarity > 0.6
    assert a2.visitor.cameras == ["door", "garden"] and a2.visitor.embeddings == 2
    assert s.crop("visitor-1") == b"jpeg-a2"  # the better crop replaced the first
    s.record(visit(1, rng_seed=2), "door", b"worse", 0.5)
    assert s.crop(1) == b"jpeg-a2" and s.get("visitor-1").visits == 3
    assert b1.new and b1.visitor.id == "visitor-2" and b1.similarity < 0.6
    assert [v.id for v in s.visitors()] == ["visitor-2", "visitor-1"]  # the most recently seen first
    match, sim = s.match(visit(2, rng_seed=5))
    assert match is not None and match.id == "visitor-2" and sim is not None and sim >= 0.6
    assert s.match(visit(3))[0] is None
    s.forget(["visitor-2"])
    assert s.record(visit(2, rng_seed=3), "door").visitor.id == "visitor-3"  # numbers are never reused
    s.close()
    s.close()


def test_restart_keeps_visitors_embeddings_and_crops(tmp_path: Path) -> None:
    s = store(tmp_path / "v.db")
    for p in (1, 2, 3):
        s.record(visit(p), "door", f"crop-{p}".encode(), 1.0)
    s.record(visit(2, rng_seed=9), "door")
    before = [v.as_dict() for v in s.visitors()]
    emb = s.embeddings("visitor-2")
    s.close()
    assert s.stats()["visitors"] == 3  # the figures at closing
    again = store(tmp_path / "v.db")
    assert [v.as_dict() for v in again.visitors()] == before
    assert np.array_equal(again.embeddings("visitor-2"), emb) and emb.shape == (2, DIM)
    assert again.crop("visitor-3") == b"crop-3"
    seen = again.record(visit(3, rng_seed=4), "door")
    assert seen.visitor.id == "visitor-3" and seen.visitor.visits == 2
    assert again.record(visit(4), "door").visitor.id == "visitor-4"
    again.close()


def test_retention_forgets_visitors_not_seen_for_that_long(tmp_path: Path) -> None:
    clock = Clock()
    s = store(tmp_path / "v.db", retention_days=7, clock=clock)
    s.record(visit(1), "door", b"old-face-crop", 1.0)
    clock.t += 3 * 86400
    s.record(visit(2), "door", b"newer-face-crop", 1.0)
    clock.t += 5 * 86400  # visitor-1 last seen 8 days ago, visitor-2 5 days ago
    assert s.expire() == 1
    assert [v.id for v in s.visitors()] == ["visitor-2"]
    with pytest.raises(VisitorError, match="no visitor-1"):
        s.get("visitor-1")
    # a visit updates last_seen: visitor-2 seen again now is kept past its first week
    s.record(visit(2, rng_seed=1), "door")
    clock.t += 6 * 86400
    s.close()
    # expiry also runs when the store opens (a daemon that was down for weeks)
    clock.t += 2 * 86400
    again = store(tmp_path / "v.db", retention_days=7, clock=clock)
    assert again.visitors() == []
    again.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("v.db"))
    assert b"old-face-crop" not in raw and b"newer-face-crop" not in raw


def test_visit_expires_old_visitors_first(tmp_path: Path) -> None:
    clock = Clock()
    s = store(tmp_path / "v.db", retention_days=1, clock=clock)
    s.record(visit(1), "door")
    clock.t += 2 * 86400
    # the old visitor is gone before matching: the same person comes back as a new visitor
    assert s.record(visit(1, rng_seed=1), "door").visitor.id == "visitor-2"
    assert [v.id for v in s.visitors()] == ["visitor-2"]
    s.close()


def test_forget_deletes_rows_embeddings_and_crops_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    s = store(path)
    crop = b"\xff\xd8JPEG-of-visitor-one" + bytes(range(256)) * 40  # spills onto overflow pages
    s.record(visit(1), "door", crop, 1.0)
    s.record(visit(2), "door", b"\xff\xd8JPEG-of-visitor-two", 1.0)
    vec = s.embeddings("visitor-1")[0].tobytes()

    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("v.db"))

    assert b"JPEG-of-visitor-one" in on_disk() and vec in on_disk()  # the check below can fail
    gone = s.forget(["visitor-1"])
    assert [v.id for v in gone] == ["visitor-1"] and [v.id for v in s.visitors()] == ["visitor-2"]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM embeddings WHERE visitor = 1").fetchone()[0] == 0
    raw = on_disk()
    assert b"JPEG-of-visitor-one" not in raw and vec not in raw and b"JPEG-of-visitor-two" in raw
    with pytest.raises(VisitorError, match="no visitor-1"):
        s.forget(["visitor-2", "visitor-1"])  # all or nothing
    assert [v.id for v in s.visitors()] == ["visitor-2"]
    assert s.forget_all() == 1 and s.visitors() == []
    s.close()
    assert b"JPEG-of-visitor-two" not in on_disk()


def test_bounded_in_visitors_and_bytes_oldest_seen_go_first(tmp_path: Path) -> None:
    clock = Clock()
    s = store(tmp_path / "v.db", max_visitors=3, clock=clock)
    for p in range(1, 5):
        clock.t += 10
        s.record(visit(p), "door")
    clock.t += 10
    s.record(visit(2, rng_seed=1), "door")  # visitor-2 seen again: now visitor-3 is the oldest
    clock.t += 10
    s.record(visit(5), "door")
    assert sorted(v.id for v in s.visitors()) == ["visitor-2", "visitor-4", "visitor-5"]
    assert s.stats()["evicted"] == 2
    s.close()
    big = b"x" * 5000
    b = store(tmp_path / "b.db", max_bytes=12_000, clock=clock)
    for p in range(1, 4):
        clock.t += 10
        b.record(visit(p), "door", big, 1.0)
    st = b.stats()
    assert st["visitors"] == 2 and st["bytes"] <= 12_000 and [v.id for v in b.visitors()] == ["visitor-3", "visitor-2"]
    b.close()
    assert store(tmp_path / "b.db", max_bytes=12_000).stats()["evicted"] == 1  # the count survives a restart


def test_embeddings_per_visitor_keeps_the_newest(tmp_path: Path) -> None:
    s = store(tmp_path / "v.db", embeddings_per_visitor=3)
    for k in range(5):
        s.record(visit(1, rng_seed=k), "door")
    v = s.get("visitor-1")
    assert v.visits == 5 and v.embeddings == 3
    last = visit_centroid(visit(1, rng_seed=4))
    assert np.allclose(s.embeddings(1)[-1], last, atol=1e-6)
    s.close()


def test_another_model_is_refused_an_empty_store_adopts_it(tmp_path: Path) -> None:
    s = store(tmp_path / "v.db")
    s.record(visit(1), "door")
    s.close()
    with pytest.raises(VisitorError, match="another recognizer model"):
        VisitorStore(tmp_path / "v.db", model_sha="b" * 64, dim=DIM)
    anyone = VisitorStore(tmp_path / "v.db")  # the CLI: list / forget whatever made it
    assert anyone.model_sha == SHA and anyone.dim == DIM and len(anyone.visitors()) == 1
    anyone.forget_all()
    anyone.close()
    other = VisitorStore(tmp_path / "v.db", model_sha="b" * 64, dim=8, fsync=False)
    assert other.record(np.eye(8, dtype=np.float32)[:2], "door").visitor.id == "visitor-2"
    with pytest.raises(VisitorError, match="want"):
        other.record(np.ones((2, DIM), np.float32), "door")
    other.close()
    with pytest.raises(VisitorError, match="without a recognizer model"):
        VisitorStore(tmp_path / "new.db").record(visit(1), "door")


def test_ids_and_bad_files(tmp_path: Path) -> None:
    assert parse_id("visitor-17") == 17 and parse_id(" 17 ") == 17
    for bad in ("visitor-0", "alice", "visitor-", "visitor-1x", ""):
        with pytest.raises(VisitorError, match="not a visitor id"):
            parse_id(bad)
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(VisitorError, match="junk.db: cannot open the visitor store"):
        VisitorStore(tmp_path / "junk.db")


def test_two_stores_on_one_file_see_each_other(tmp_path: Path) -> None:
    """Two cameras (or the CLI and the daemon) share the file: a visit or a forget by one is seen by the other."""
    a, b = store(tmp_path / "v.db"), store(tmp_path / "v.db")
    a.record(visit(1), "door")
    seen = b.record(visit(1, rng_seed=1), "garden")
    assert seen.visitor.id == "visitor-1" and seen.visitor.cameras == ["door", "garden"]
    a.forget(["visitor-1"])
    assert b.match(visit(1, rng_seed=2))[0] is None
    a.close()
    b.close()


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from edgecam.visitors import VisitorStore
    s = VisitorStore(sys.argv[1], model_sha="a" * 64, dim=16, threshold=0.99, fsync=True)
    rng = np.random.default_rng(0)
    while True:
        e = rng.normal(size=(3, 16)).astype(np.float32)
        seen = s.record(e / np.linalg.norm(e, axis=1, keepdims=True), "door", b"crop" * 500, 1.0)
        print(seen.visitor.number, flush=True)
""")


@pytest.mark.slow
def test_sigkill_keeps_every_committed_visit(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout is not None
    acked: list[int] = []
    deadline = time.monotonic() + 30
    while len(acked) < 40 and time.monotonic() < deadline:
        acked.append(int(proc.stdout.readline()))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    s = VisitorStore(path)
    numbers = {v.number for v in s.visitors()}
    assert set(acked) <= numbers and len(numbers) <= len(acked) + 1  # at most one committed before its print
    s.close()


def test_cached_embeddings_stay_equal_to_the_file(tmp_path: Path) -> None:
    """Matching uses an in-memory copy kept up to date write by write: after visits, trims, evictions and forgets
    it equals what a fresh open reads."""
    clock = Clock()
    s = store(tmp_path / "v.db", max_visitors=6, embeddings_per_visitor=2, clock=clock)
    rng = np.random.default_rng(3)
    for k in range(60):
        clock.t += 1
        s.record(visit(int(rng.integers(1, 10)), rng_seed=k), "door")
        if k % 17 == 16:
            s.forget([s.visitors()[-1].id])
    fresh = store(tmp_path / "v.db")
    s.match(visit(1))
    fresh.match(visit(1))
    assert np.array_equal(s._seqs, fresh._seqs) and np.array_equal(s._owners, fresh._owners)
    assert np.array_equal(s._stored, fresh._stored) and len(s._seqs) == sum(v.embeddings for v in s.visitors())
    s.close()
    fresh.close()


# ------------------------------------------------------------------------------------------ the tracker's hook


def run_track(tracker: Tracker, start: int, emb: np.ndarray, status: str = "unknown", name: str = "unknown",
              frames: int = 8) -> list[dict]:
    """One face in view for ``frames`` detector runs (a recognition per run while ``emb`` lasts), then gone."""
    img = np.full((240, 320, 3), 90, np.uint8)
    events = []
    for k in range(frames + tracker.cfg.max_age):
        i = start + k
        boxes = np.array([[100 + k, 80, 160 + k, 140, 0.9]], np.float32) if k < frames else np.zeros((0, 5))
        tracks = tracker.assign(boxes, i, i * 0.2)
        obs = []
        for tr, b in zip(tracks, boxes, strict=True):
            e = emb[k] if k < len(emb) else None
            obs.append(Observation(tr, b, np.zeros((4, 2), np.float32), Quality(60, 100 + k, 0.0, True, ""),
                                   Vote(name, status, 0.2) if e is not None else None, e))
        events += [e.payload for e in tracker.update(Frame(i, i * 0.2, img), obs)]
    return events


def test_unknown_tracks_become_visits_events_carry_the_visitor(tmp_path: Path) -> None:
    s = store(tmp_path / "v.db")
    tracker = Tracker(TrackerConfig(min_hits=2, confirm_hits=1, max_age=2), SnapshotConfig(), "door", "run")
    tracker.visitors = Visitors(s, "door", min_crops=2, max_votes=4)
    first = run_track(tracker, 0, visit(1, k=6))
    # recorded once the 4 votes were in (the person still in view): an update says so, later events repeat it
    said = [(e["type"], e["visitor"], e["visits"]) for e in first]
    assert said[0] == ("new", None, None) and ("update", "visitor-1", 1) in said and said[-1] == ("end", "visitor-1", 1)
    k = said.index(("update", "visitor-1", 1))
    assert first[k]["frames"]["votes"] == 4 and all(v == "visitor-1" for _, v, _ in said[k:])
    again = run_track(tracker, 100, visit(1, k=6, rng_seed=1))
    assert again[-1]["visitor"] == "visitor-1" and again[-1]["visits"] == 2
    # a track that ends unknown with fewer votes than max_votes (but min_crops) is recorded as it ends
    short = run_track(tracker, 200, visit(2, k=3), frames=3)
    assert [e["visitor"] for e in short] == [None] * (len(short) - 1) + ["visitor-2"] and short[-1]["type"] == "end"
    # too few recognized crops, or a known person: no visitor
    assert run_track(tracker, 300, visit(3, k=1))[-1]["visitor"] is None
    known = run_track(tracker, 400, visit(4, k=6), status="known", name="alice")
    assert all(e["visitor"] is None and "visits" in e for e in known)
    assert [v.id for v in s.visitors()] == ["visitor-2", "visitor-1"] and s.get("visitor-1").visits == 2
    assert s.crop("visitor-1") is not None and s.get("visitor-1").cameras == ["door"]
    assert tracker.visitors._recorded == {}  # nothing kept about tracks that ended
    s.close()


def test_without_visitors_events_have_no_visitor_keys() -> None:
    tracker = Tracker(TrackerConfig(min_hits=2, confirm_hits=1, max_age=2), SnapshotConfig(), "door", "run")
    events = run_track(tracker, 0, visit(1, k=6))
    assert events and all("visitor" not in e and "visits" not in e for e in events)


def test_a_store_that_cannot_be_written_leaves_the_track_without_a_visitor(tmp_path: Path) -> None:
    s = store(tmp_path / "v.db")
    tracker = Tracker(TrackerConfig(min_hits=2, confirm_hits=1, max_age=2), SnapshotConfig(), "door", "run")
    tracker.visitors = Visitors(s, "door", min_crops=2, max_votes=4)
    s._db.execute("PRAGMA query_only=ON")  # every write fails from here on
    events = run_track(tracker, 0, visit(1, k=6))
    assert events[-1]["type"] == "end" and events[-1]["visitor"] is None
    s._db.execute("PRAGMA query_only=OFF")
    s.close()
