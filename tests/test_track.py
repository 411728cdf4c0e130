"""Tracker: IoU association, confirmation, ageing, identity vote, best snapshot, event lifecycle and schema."""

from __future__ import annotations

import numpy as np
import pytest

from edgecam.config import SnapshotConfig, TrackerConfig
from edgecam.crops import Quality
from edgecam.sources import Frame
from edgecam.track import (
    Observation,
    Tracker,
    Vote,
    centre_distance,
    greedy_match,
    iou_matrix,
    vote,
    vote_similarity,
)

IMG = np.zeros((240, 320, 3), np.uint8)
EVENT_KEYS = {"type", "id", "seq", "camera", "label", "identity", "status", "scores", "box", "start", "end",
              "timestamp", "frame", "frames", "snapshot"}


def frame(i: int) -> Frame:
    return Frame(i, i * 0.1, IMG)


def box(x: float, y: float = 50, s: float = 40, score: float = 0.9) -> np.ndarray:
    return np.array([x, y, x + s, y + s, score], np.float32)


def quality(size: float = 40, sharp: float = 100, ok: bool = True) -> Quality:
    return Quality(size, sharp, 0.0, ok, "" if ok else "blurred")


def make(**kw: object) -> Tracker:
    return Tracker(TrackerConfig(**{"min_hits": 3, "max_age": 2, "update_interval_s": 0.0, **kw}),
                   SnapshotConfig(), camera="cam", run_id="run")


def step(t: Tracker, i: int, boxes: list[np.ndarray], votes: list[Vote | None] | None = None,
         qualities: list[Quality] | None = None) -> list[dict]:
    arr = np.array(boxes, np.float32).reshape(-1, 5)
    tracks = t.assign(arr, i, i * 0.1)
    obs = [Observation(tr, b, np.zeros((4, 2), np.float32), (qualities or [quality()] * len(boxes))[k],
                       (votes or [None] * len(boxes))[k]) for k, (tr, b) in enumerate(zip(tracks, arr, strict=True))]
    return [e.payload for e in t.update(frame(i), obs)]


def test_iou_matrix_and_greedy_match() -> None:
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    b = np.array([[21, 21, 31, 31], [0, 0, 10, 10], [100, 100, 110, 110]], np.float32)
    iou = iou_matrix(a, b)
    assert iou.shape == (2, 3) and iou[0, 1] == pytest.approx(1.0) and iou[0, 2] == 0
    assert sorted(greedy_match(iou, 0.3)) == [(0, 1), (1, 0)]
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)


def test_new_after_min_hits_then_end_after_max_age() -> None:
    t = make()
    assert step(t, 0, [box(10)]) == [] and step(t, 1, [box(12)]) == []
    [new] = step(t, 2, [box(14)])
    assert new["type"] == "new" and new["seq"] == 0 and set(new) == EVENT_KEYS
    assert new["start"] == 0.0 and new["end"] is None and new["frames"]["hits"] == 3
    assert step(t, 3, []) == []
    [end] = step(t, 4, [])
    assert end["type"] == "end" and end["id"] == new["id"] and end["seq"] == 1
    assert end["end"] == pytest.approx(0.2) and end["box"] == [14.0, 50.0, 54.0, 90.0]
    assert t.tracks == []


def test_unconfirmed_track_ends_silently() -> None:
    t = make()
    step(t, 0, [box(10)])
    assert step(t, 1, []) == [] and step(t, 2, []) == [] and t.tracks == []


def test_two_faces_keep_their_ids_while_moving() -> None:
    t = make()
    events = []
    for i in range(6):
        events += step(t, i, [box(10 + 4 * i), box(200 - 4 * i)])
    news = [e for e in events if e["type"] == "new"]
    assert len(news) == 2 and news[0]["id"] != news[1]["id"]
    assert {e["id"] for e in events} == {news[0]["id"], news[1]["id"]}
    assert len(t.tracks) == 2


def test_constant_velocity_keeps_a_fast_face() -> None:
    t = make(iou_threshold=0.3)
    xs = [10, 20, 45, 70, 95]  # from the 3rd step, 25 px per step on a 40 px face: IoU with the last box 0.23
    assert iou_matrix(box(45)[None], box(20)[None])[0, 0] < 0.3
    for i, x in enumerate(xs):
        step(t, i, [box(x)])
    assert len(t.tracks) == 1 and t.tracks[0].hits == 5


def test_identity_vote_and_update_event() -> None:
    t = make()
    alice, nobody = Vote("alice", "known", 0.8), Vote("unknown", "unknown", 0.2)
    events = []
    for i, v in enumerate([nobody, alice, alice, nobody, nobody, nobody]):
        events += step(t, i, [box(10)], votes=[v])
    kinds = [(e["type"], e["identity"], e["status"]) for e in events]
    assert kinds == [("new", "alice", "known"), ("update", "unknown", "unknown")]
    assert events[0]["scores"]["identity"] == pytest.approx(0.667)  # the vote share ...
    assert events[0]["scores"]["similarity"] == pytest.approx(0.8)  # ... and how well alice's votes matched
    assert events[1]["scores"]["similarity"] == pytest.approx(0.2)  # unknown: how close it came to anyone
    assert events[1]["frames"]["votes"] == 5
    assert all(e["id"] == events[0]["id"] for e in events)


def test_vote_rules() -> None:
    k = lambda n, s=0.9: Vote(n, "known", s)  # noqa: E731
    assert vote([]) == ("unknown", "unknown", 0.0)
    assert vote([k("a"), k("a"), Vote("unknown", "unknown", 0.1)]) == ("a", "known", 0.667)
    assert vote([k("a"), k("b"), Vote("", "uncertain", 0.5), Vote("", "uncertain", 0.5)])[1] == "uncertain"
    assert vote([Vote("unknown", "unknown", 0.1)] * 3 + [k("a")]) == ("unknown", "unknown", 0.75)
    assert vote([k("a", 0.5), k("b", 0.9)])[0] == "b"  # tie on count: higher summed score
    assert vote([Vote("", "uncertain", 0.5)]) == ("unknown", "uncertain", 0.0)


def test_vote_similarity() -> None:
    votes = [Vote("a", "known", 0.8), Vote("a", "known", 0.6), Vote("b", "known", 0.9),
             Vote("unknown", "unknown", 0.3), Vote("a", "uncertain", 0.45)]
    assert vote_similarity(votes, "a") == pytest.approx(0.7)  # the votes that named a, not b's or the others
    assert vote_similarity(votes, "unknown") == pytest.approx(0.3)
    assert vote_similarity([Vote("a", "uncertain", 0.45), Vote("b", "uncertain", 0.5)], "unknown") == \
        pytest.approx(0.475)  # nothing decisive: all votes
    assert vote_similarity([], "unknown") is None  # no recognizer


def test_events_without_a_recognizer_have_a_null_similarity() -> None:
    t = make()
    events = [e for i in range(3) for e in step(t, i, [box(10)])]
    assert events[0]["type"] == "new" and events[0]["scores"]["similarity"] is None


def test_identity_change_emits_update() -> None:
    t = make(update_interval_s=100.0)
    events = []
    for i in range(3):
        events += step(t, i, [box(10)], qualities=[quality(sharp=100)])
    assert [e["type"] for e in events] == ["new"] and events[0]["identity"] == "unknown"
    ev = []
    for i in range(3, 6):
        ev += step(t, i, [box(10)], votes=[Vote("bob", "known", 0.9)], qualities=[quality(sharp=1)])
    assert [(e["type"], e["identity"], e["status"]) for e in ev] == [("update", "bob", "known")]


def test_best_snapshot_by_score_size_sharpness_and_update_interval() -> None:
    t = make(update_interval_s=0.25)
    step(t, 0, [box(10)], qualities=[quality(sharp=10)])
    step(t, 1, [box(10)], qualities=[quality(sharp=50)])
    [new] = step(t, 2, [box(10)], qualities=[quality(sharp=20)])
    assert new["snapshot"]["frame"] == 1
    assert step(t, 3, [box(10)], qualities=[quality(sharp=90)]) == []  # better, but only 0.1 s since 'new'
    assert step(t, 4, [box(10)], qualities=[quality(sharp=5)]) == []
    [upd] = step(t, 5, [box(10)], qualities=[quality(sharp=5)])  # 0.3 s since 'new': the pending change goes
    assert upd["type"] == "update" and upd["snapshot"]["frame"] == 3
    assert step(t, 6, [box(10)], qualities=[quality(sharp=5)]) == []  # nothing new


def test_event_carries_snapshot_image_only_when_changed() -> None:
    t = make()
    arr = box(10)
    for i in range(3):
        tr = t.assign(arr[None], i, i * 0.1)
        events = t.update(frame(i), [Observation(tr[0], arr, np.zeros((4, 2), np.float32), quality())])
    assert events[0].image is not None and events[0].image.ndim == 3
    tr = t.assign(arr[None], 3, 0.3)
    assert t.update(frame(3), [Observation(tr[0], arr, np.zeros((4, 2), np.float32), quality())]) == []


def test_flush_ends_confirmed_tracks() -> None:
    t = make()
    for i in range(3):
        step(t, i, [box(10)])
    step(t, 3, [box(10), box(200)])
    ended = t.flush(frame(4))
    assert [e.kind for e in ended] == ["end"] and t.tracks == []


# ---------------------------------------------------------------------------------------------- issue 10 / 12


def test_a_track_becomes_new_only_with_confident_detections() -> None:
    t = make(confirm_score=0.6, confirm_hits=2)
    events = []
    for i in range(10):  # a lamp the detector scores just above its threshold: never an event
        events += step(t, i, [box(10, score=0.55), box(200, score=0.9 if i == 4 else 0.55)])
    assert events == [] and len(t.tracks) == 2
    [new] = step(t, 10, [box(10, score=0.55), box(200, score=0.62)])  # the 2nd confident hit of the right one
    assert new["type"] == "new" and new["frames"]["hits"] == 11 and new["scores"]["detection_max"] == 0.9
    assert new["start"] == pytest.approx(0.0)  # the track's first sighting, not the moment it became confident
    off = make(confirm_score=0.0)  # gate off: min_hits alone, as before
    assert [e["type"] for i in range(3) for e in step(off, i, [box(10, score=0.51)])] == ["new"]


def test_confirm_hits_and_min_hits_both_hold() -> None:
    t = make(min_hits=4, confirm_score=0.6, confirm_hits=1)
    assert [e for i in range(3) for e in step(t, i, [box(10, score=0.99)])] == []  # confident, but 3 < min_hits
    assert [e["type"] for e in step(t, 3, [box(10, score=0.3)])] == ["new"]


def test_centre_distance_in_face_widths_and_size_gate() -> None:
    a = np.array([[0, 0, 40, 40], [100, 0, 110, 10], [0, 0, 100, 100]], np.float32)
    b = np.array([[20, 0, 60, 40]], np.float32)
    d = centre_distance(a, b)
    assert d.shape == (3, 1) and d[0, 0] == pytest.approx(0.5)
    assert np.isinf(d[1, 0]) and np.isinf(d[2, 0])  # 4x smaller / 2.5x larger: not the same face
    assert centre_distance(np.zeros((0, 4)), b).shape == (0, 1)


def test_a_face_missed_for_a_few_runs_keeps_its_id() -> None:
    t = make(max_age=12, match_distance=1.0)
    events = []
    for i in range(4):
        events += step(t, i, [box(100)])
    for i in range(4, 12):  # turned away: 8 detector runs without it
        events += step(t, i, [])
    # back 25 px to the left and a little larger: IoU with the last box 0.23 (< iou_threshold 0.3), 0.6 widths away
    back = box(75, y=55, s=44)
    assert iou_matrix(back[None], box(100)[None])[0, 0] < 0.3
    events += step(t, 12, [back]) + step(t, 13, [back])
    assert [e["type"] for e in events] == ["new"] and len(t.tracks) == 1 and t.tracks[0].hits == 6
    far = make(max_age=12, match_distance=1.0)
    for i in range(4):
        step(far, i, [box(100)])
    step(far, 4, [])
    step(far, 5, [box(180)])  # two face widths away: someone else
    assert len(far.tracks) == 2


def test_tentative_tracks_are_not_stitched_by_distance() -> None:
    t = make(max_age=12, min_hits=3, match_distance=1.0)
    step(t, 0, [box(100)])
    step(t, 1, [])
    step(t, 2, [box(125)])  # IoU 0.23 with the tentative track: a new tentative track, not a 2nd hit
    assert len(t.tracks) == 2 and all(tr.hits == 1 for tr in t.tracks)
    off = make(max_age=12, match_distance=0.0)  # IoU only: a confirmed face that jumped gets a new id
    for i in range(3):
        step(off, i, [box(100)])
    step(off, 3, [])
    step(off, 4, [box(130)])
    assert len(off.tracks) == 2
