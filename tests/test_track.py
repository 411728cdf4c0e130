"""Tracker: IoU association, confirmation, ageing, identity vote, best snapshot, event lifecycle and schema."""

from __future__ import annotations

from pathlib import Path

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
    vote_weight,
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


# ---------------------------------------------------------------------------------------------- issue 11: votes


def test_vote_weight_from_crop_quality() -> None:
    assert Vote("a", "known", 0.9).weight == 1.0  # a vote counts 1 unless the pipeline says otherwise
    assert vote_weight(quality(size=100, sharp=500)) == 1.0  # large and sharp: full weight, never more
    assert vote_weight(quality(size=32, sharp=50)) == pytest.approx(0.25 * 0.5)  # (32/64)^2 x 50/100
    assert vote_weight(quality(size=32, sharp=50), full_size_px=32, full_sharpness=25) == 1.0


def test_vote_sums_weights_and_a_name_needs_half_of_them() -> None:
    alice, nobody = Vote("alice", "known", 0.7, weight=1.0), Vote("unknown", "unknown", 0.2, weight=0.1)
    assert vote([nobody] * 3 + [alice]) == ("alice", "known", 0.769)  # 3 far blurred crops lose to 1 good one
    assert vote([nobody] * 3 + [Vote("alice", "known", 0.7)], min_weight=0.0)[1] == "known"
    half = [Vote("alice", "known", 0.7, weight=0.5), Vote("bob", "known", 0.9, weight=0.3),
            Vote("", "uncertain", 0.5, weight=0.2)]
    assert vote(half) == ("alice", "known", 0.5)  # exactly half the weight
    assert vote([*half[:2], Vote("", "uncertain", 0.5, weight=0.21)])[:2] == ("alice", "uncertain")
    assert vote([Vote("b", "known", 0.9, weight=0.4), Vote("a", "known", 0.5, weight=0.6)])[0] == "a"  # not by count


def test_votes_under_min_weight_are_pending_not_unknown() -> None:
    light = [Vote("unknown", "unknown", 0.2, weight=0.3)] * 3
    assert vote([], min_weight=1.0) == ("unknown", "uncertain", 0.0)  # nothing voted yet: pending
    assert vote(light, min_weight=1.0) == ("unknown", "uncertain", 1.0)  # 0.9 in all: still pending
    assert vote([*light, Vote("unknown", "unknown", 0.2, weight=0.1)], min_weight=1.0)[:2] == ("unknown", "unknown")
    assert vote([Vote("alice", "known", 0.7, weight=0.5)], min_weight=1.0)[:2] == ("alice", "uncertain")
    assert vote([]) == ("unknown", "unknown", 0.0)  # min_weight 0 (no recognizer): unknown at once


def recognizing(**kw: object) -> Tracker:
    return Tracker(TrackerConfig(**{"min_hits": 3, "max_age": 2, "update_interval_s": 100.0, **kw}),
                   SnapshotConfig(), camera="cam", run_id="run", recognizing=True, max_votes=4)


def test_enrolled_person_confirmed_before_a_good_crop_is_pending_then_named() -> None:
    from edgecam.outputs import MqttEvents

    t = recognizing()
    far = Vote("unknown", "unknown", 0.3, weight=0.05)  # small blurred early crops: the stranger verdict
    good = Vote("alice", "known", 0.8, weight=1.0)
    events = []
    for i, v in enumerate([None, None, far, far, good, good]):  # confirmed at frame 2, first good crop at 4
        events += step(t, i, [box(10)], votes=[v])
    events += [e.payload for e in t.flush(frame(6))]
    said = [(e["type"], e["identity"], e["status"]) for e in events]
    assert said == [("new", "unknown", "uncertain"), ("update", "alice", "known"), ("end", "alice", "known")]
    assert events[0]["frames"]["votes"] == 1 and events[0]["frames"]["vote_weight"] == 0.05
    ha = MqttEvents(None, 90, recognizer_runs=True)  # type: ignore[arg-type]
    recognitions = [ha.recognition(e) for e in events]
    assert [r["event_type"] if r else None for r in recognitions] == [None, "recognized", None]  # no "unknown face"


def test_without_a_recognizer_a_track_is_unknown_from_its_first_event() -> None:
    t = make()  # recognizing False: the daemon runs no recognizer
    [new] = [e for i in range(3) for e in step(t, i, [box(10)])]
    assert (new["identity"], new["status"]) == ("unknown", "unknown")
    pending = recognizing()
    [new] = [e for i in range(3) for e in step(pending, i, [box(10)])]
    assert (new["identity"], new["status"], new["frames"]["votes"]) == ("unknown", "uncertain", 0)


def test_a_stranger_is_unknown_once_the_votes_weigh_enough() -> None:
    t = recognizing()
    nobody = Vote("unknown", "unknown", 0.3, weight=0.3)
    events = [e for i in range(5) for e in step(t, i, [box(10)], votes=[nobody])]
    assert [(e["type"], e["status"]) for e in events] == [("new", "uncertain"), ("update", "unknown")]
    assert events[1]["frames"]["vote_weight"] == pytest.approx(1.2)  # the 4th vote decided


def test_a_pending_track_is_not_recorded_as_a_visitor(tmp_path: Path) -> None:
    from edgecam.visitors import Visitors, VisitorStore

    store = VisitorStore(tmp_path / "v.db", model_sha="m", dim=4, threshold=0.6, fsync=False)
    t = recognizing()
    t.visitors = Visitors(store, "cam", min_crops=2, max_votes=4)
    light = Vote("unknown", "unknown", 0.3, weight=0.2)
    emb = np.array([1, 0, 0, 0], np.float32)
    for i in range(4):  # 4 votes (max_votes) in, 0.8 in all: pending, not a stranger
        arr = box(10)[None]
        [tr] = t.assign(arr, i, i * 0.1)
        t.update(frame(i), [Observation(tr, arr[0], np.zeros((4, 2), np.float32), quality(), light, emb)])
    assert t.tracks[0].identity[1] == "uncertain"
    [end] = [e.payload for e in t.flush(frame(4))]
    assert end["status"] == "uncertain" and end["visitor"] is None and store.visitors() == []
    store.close()


def test_want_vote_while_a_crop_outweighs_the_weakest_kept_vote() -> None:
    t = recognizing()  # max_votes 4
    weights = [0.2, 0.9, 0.1, 0.5]
    for i, w in enumerate(weights):
        assert t.tracks == [] or t.tracks[0].want_vote(4, 0.0)  # room left: any crop counts
        step(t, i, [box(10)], votes=[Vote(f"p{i}", "known", 0.9, weight=w)])
    tr = t.tracks[0]
    assert not tr.want_vote(4, 0.1) and tr.want_vote(4, 0.11)  # must beat the weakest kept (0.1), not tie it
    step(t, 4, [box(10)], votes=[Vote("alice", "known", 0.9, weight=1.0)])
    assert [v.weight for v in tr.votes] == [0.2, 0.9, 1.0, 0.5]  # replaced the weakest, in its place
    step(t, 5, [box(10)], votes=[Vote("late", "known", 0.9, weight=0.15)])  # asked anyway: too weak to count
    assert [v.name for v in tr.votes] == ["p0", "p1", "alice", "p3"] and len(tr.votes) == 4
    unbounded = make()  # no max_votes (a tracker driven without the pipeline): every vote is kept
    for i in range(6):
        step(unbounded, i, [box(10)], votes=[Vote("a", "known", 0.9, weight=0.1)])
    assert len(unbounded.tracks[0].votes) == 6


def test_a_replaced_vote_takes_its_embedding_along() -> None:
    t = recognizing()
    arr = box(10)[None]
    for i, w in enumerate([0.5, 0.2, 0.6, 0.7, 0.9]):
        [tr] = t.assign(arr, i, i * 0.1)
        emb = np.full(4, float(i), np.float32)
        t.update(frame(i), [Observation(tr, arr[0], np.zeros((4, 2), np.float32), quality(),
                                        Vote("unknown", "unknown", 0.2, weight=w), emb)])
    tr = t.tracks[0]
    assert [v.weight for v in tr.votes] == [0.5, 0.9, 0.6, 0.7]
    assert [float(e[0]) for e in tr.embeddings] == [0.0, 4.0, 2.0, 3.0]  # visitors get the best crops' embeddings


class CentredFace:
    """A detector that finds one square face of a given side at the frame centre, frontal landmarks."""

    def __init__(self) -> None:
        self.side = 30.0

    def __call__(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s, cx, cy = self.side, bgr.shape[1] / 2, bgr.shape[0] / 2
        x, y = cx - s / 2, cy - s / 2
        lms = [[x + 0.3 * s, y + 0.4 * s], [x + 0.7 * s, y + 0.4 * s], [x + 0.5 * s, y + 0.6 * s],
               [x + 0.5 * s, y + 0.8 * s]]
        return np.array([[x, y, x + s, y + s, 0.9]], np.float32), np.array([lms], np.float32)

    def close(self) -> None:
        pass


class CountingRecognizer:
    input_size = (112, 112)

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, crops: list[np.ndarray]) -> list[object]:
        from types import SimpleNamespace

        self.calls += len(crops)
        return [SimpleNamespace(name="alice", status="known", score=0.9) for _ in crops]

    def close(self) -> None:
        pass


def test_pipeline_weighs_votes_by_quality_and_keeps_recognizing_better_crops() -> None:
    from edgecam.config import parse_config
    from edgecam.pipeline import Pipeline

    cfg = parse_config({"motion": {"enabled": False}, "tracker": {"vote_full_size_px": 80, "vote_full_sharpness": 50},
                        "recognizer": {"type": "classifier", "model": ".", "max_votes": 3}})
    det, rec = CentredFace(), CountingRecognizer()
    p = Pipeline(cfg, det, rec, run_id="t")
    img = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)  # sharp: only size matters
    events = []
    for i, side in enumerate([50, 40, 30, 30, 30, 45, 64, 80]):
        det.side = side
        events += [e.payload for e in p.process(Frame(i, i * 0.1, img))]
        if i == 2:
            [ob] = p.last_observations
            assert ob.vote is not None and ob.quality is not None and ob.quality.sharpness > 50
            assert ob.vote.weight == pytest.approx(min(1.0, ob.quality.size / 80) ** 2)  # the config's constants
    [track] = p.tracker.tracks
    assert rec.calls == 6  # 3 to fill max_votes, none for the 30 px repeats (a tie), 45, 64 and 80 px replace
    assert [round(v.weight, 2) for v in track.votes] == [0.39, 0.64, 1.0]  # the weakest gave way each time
    assert events[0]["status"] == "uncertain"  # the 50+40+30 px votes weigh 0.39+0.25+0.14: pending at new
    assert (events[-1]["identity"], events[-1]["status"]) == ("alice", "known")


def test_vote_min_weight_must_be_reachable_with_max_votes() -> None:
    from edgecam.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="vote_min_weight"):
        parse_config({"tracker": {"vote_min_weight": 5}, "recognizer": {"type": "classifier", "model": ".",
                                                                        "max_votes": 4}})
    assert parse_config({"tracker": {"vote_min_weight": 5}}).tracker.vote_min_weight == 5  # no recognizer: moot
