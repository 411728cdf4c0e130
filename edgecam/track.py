"""Tracker: faces across frames, identity voted per track, the event lifecycle and the best snapshot.

Used in two steps per frame on which the detector ran:

1. ``assign(boxes)`` matches the detections to live tracks (greedy, highest IoU first, against each track's
   constant-velocity prediction; then a detection that overlaps no track continues the nearest unmatched track
   within ``match_distance`` face widths, so a face missed for a few frames keeps its id) and opens a tentative
   track for each detection left;
2. the caller measures crop quality and recognizes the crops of tracks that ``want_vote()``, then passes
   ``Observation``s to ``update(frame, observations)``, which returns the events.

Identity is voted over the track (``vote``): each recognizer result weighs ``vote_weight`` of its crop's quality
(face size and sharpness; a far or blurred early frame counts little), a name needs at least half the weight, and
a track keeps its ``max_votes`` weightiest votes (a better crop replaces the weakest one kept). While a track's
votes weigh less than ``vote_min_weight`` (none yet included: a track is often confirmed before any crop passed
the quality gate) its status is ``uncertain``, pending, not ``unknown``: an enrolled person is not announced as
a stranger first. Without a recognizer every track is ``unknown`` at once.

A track is confirmed (event ``new``) after ``min_hits`` detections of which ``confirm_hits`` scored at least
``confirm_score`` (a face with confidence: lamps, flames and torsos that the detector scores just above its
threshold never become events), and ends (event ``end``) after ``max_age`` detector runs without one. An
``update`` is sent when the voted identity changes, or when the best snapshot improved and
``update_interval_s`` has passed since the track's last event. Frames on which the detector did not run (the
motion gate saw a still scene) do not age tracks. The best snapshot is the observation with
the largest detector score x face size x crop sharpness. ``flush()`` ends every track (end of a replay,
daemon stop).

With visitors enabled (``edgecam.visitors``) the daemon sets ``Tracker.visitors``: a confirmed track is offered
to it at each observation and when it ends; once it is recorded as a visit (an ``update`` event says so) every
event of the track carries ``visitor`` and ``visits`` (null before, and for tracks that are not visits).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgecam.crops import Quality, snapshot_crop

if TYPE_CHECKING:
    from edgecam.config import SnapshotConfig, TrackerConfig
    from edgecam.sources import Frame

logger = logging.getLogger(__name__)

MAX_PREDICT_RUNS = 4
"""A missed track's box is extrapolated this many detector runs at most (beyond, the guess is worse than none)."""


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4+) with every box in ``b`` (M, 4+), x1,y1,x2,y2 -> (N, M)."""
    a, b = np.asarray(a, np.float64)[:, :4], np.asarray(b, np.float64)[:, :4]
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def centre_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance between the centres of every box in ``a`` (N, 4+) and ``b`` (M, 4+), in widths of ``b`` -> (N, M).

    The width of a ``b`` box is the mean of its sides; a pair whose sizes differ by more than 2x is ``inf``.
    """
    a, b = np.asarray(a, np.float64)[:, :4], np.asarray(b, np.float64)[:, :4]
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    ca, cb = (a[:, :2] + a[:, 2:]) / 2, (b[:, :2] + b[:, 2:]) / 2
    sa = np.maximum((a[:, 2:] - a[:, :2]).mean(-1), 1e-6)
    sb = np.maximum((b[:, 2:] - b[:, :2]).mean(-1), 1e-6)
    dist = np.linalg.norm(ca[:, None] - cb[None], axis=-1) / sb[None]
    ratio = sa[:, None] / sb[None]
    return np.where((ratio <= 2.0) & (ratio >= 0.5), dist, np.inf)


def greedy_match(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, col) taken in order of decreasing IoU, each row and column at most once, IoU >= threshold."""
    pairs: list[tuple[int, int]] = []
    if iou.size == 0:
        return pairs
    used_r, used_c = set(), set()
    order = np.argsort(-iou, axis=None, kind="stable")
    for r, c in zip(*np.unravel_index(order, iou.shape), strict=True):
        if iou[r, c] < threshold:
            break
        if r not in used_r and c not in used_c:
            pairs.append((int(r), int(c)))
            used_r.add(r)
            used_c.add(c)
    return pairs


@dataclass(frozen=True)
class Vote:
    """One recognizer result for a crop of the track, and how much it counts (``vote_weight``)."""

    name: str
    status: str  # known | unknown | uncertain
    score: float
    weight: float = 1.0


def vote_weight(quality: Quality, full_size_px: float = 64.0, full_sharpness: float = 100.0) -> float:
    """How much a crop's recognizer result counts in the track's vote: min(1, size / ``full_size_px``)^2 x
    min(1, sharpness / ``full_sharpness``), 1 for a large sharp face (a far or blurred face counts little)."""
    return float(min(1.0, quality.size / full_size_px) ** 2 * min(1.0, quality.sharpness / full_sharpness))


def vote(votes: list[Vote], min_weight: float = 0.0) -> tuple[str, str, float]:
    """(identity, status, confidence) from a track's votes, each counting its ``weight``.

    Known names and ``unknown`` are tallied (``uncertain`` results count only in the total); the label with the
    most weight wins (ties: higher summed score). A name is ``known`` when it holds at least half of the total
    weight, else ``uncertain``. Confidence is the winner's share of the weight. While the votes weigh less than
    ``min_weight`` in all (none included), no verdict: ``uncertain`` (pending) with the leading label. No
    decisive vote: ``unknown`` and ``uncertain``; no votes (and ``min_weight`` 0): ``unknown``.
    """
    tally: dict[str, tuple[float, float]] = {}
    for v in votes:
        label = v.name if v.status == "known" else "unknown" if v.status == "unknown" else None
        if label is not None:
            w, s = tally.get(label, (0.0, 0.0))
            tally[label] = (w + v.weight, s + v.score)
    total = sum(v.weight for v in votes)
    pending = total < min_weight - 1e-9  # float sums: 0.3 + 0.3 + 0.3 + 0.1 reaches 1
    if not tally:
        return "unknown", "uncertain" if votes or pending else "unknown", 0.0
    winner = max(tally, key=lambda k: (tally[k][0], tally[k][1]))
    share = round(tally[winner][0] / total, 3) if total > 0 else 0.0
    if pending:
        return winner, "uncertain", share
    if winner == "unknown":
        return "unknown", "unknown", share
    return winner, "known" if share >= 0.5 else "uncertain", share


def vote_similarity(votes: list[Vote], identity: str) -> float | None:
    """The match similarity behind a voted identity: the mean score of the votes that named it (``unknown``:
    of the unknown votes, i.e. how close the face came to anyone enrolled); all votes when none did; None
    without votes (no recognizer)."""
    backing = [v.score for v in votes if (v.status == "known" and v.name == identity)
               or (identity == "unknown" and v.status == "unknown")]
    scores = backing or [v.score for v in votes]
    return round(float(np.mean(scores)), 4) if scores else None


@dataclass(frozen=True)
class Event:
    """An event to publish: the JSON-ready ``payload`` and, when the best snapshot changed, its BGR ``image``."""

    payload: dict[str, Any]
    image: np.ndarray | None = None

    @property
    def kind(self) -> str:
        """``new``, ``update`` or ``end``."""
        return str(self.payload["type"])


@dataclass
class Observation:
    """A detection assigned to a track, with what the pipeline measured on it."""

    track: Track
    box: np.ndarray  # (5,) x1,y1,x2,y2,score in frame pixels
    landmarks: np.ndarray  # (4, 2) x,y
    quality: Quality | None = None
    vote: Vote | None = None
    embedding: np.ndarray | None = None  # (D,) the recognized crop's unit embedding (identity recognizer)


@dataclass
class Track:
    """One face followed across frames."""

    id: str
    box: np.ndarray  # (5,) x1,y1,x2,y2,score: the latest detection
    first_frame: int
    first_ts: float
    last_frame: int
    last_ts: float
    hits: int = 1
    confident_hits: int = 0  # detections scoring at least tracker.confirm_score
    misses: int = 0
    confirmed: bool = False
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # box change per detector run
    max_score: float = 0.0
    votes: list[Vote] = field(default_factory=list)
    identity: tuple[str, str, float] = ("unknown", "unknown", 0.0)
    best_value: float = 0.0
    best: dict[str, Any] = field(default_factory=dict)  # frame, timestamp, box, score, quality of the best crop
    best_image: np.ndarray | None = None  # BGR snapshot of the best crop
    best_changed: bool = False
    seq: int = 0  # events sent so far
    last_event_ts: float = 0.0
    embeddings: list[np.ndarray] = field(default_factory=list)  # (D,) of the recognized crops, for visitors
    visitor: str | None = None  # visitor id once the track was recorded as a visit (``edgecam.visitors``)
    visits: int | None = None  # that visitor's visits, this one included

    def predicted(self) -> np.ndarray:
        """Where the box should be at the next detector run (constant velocity, through up to 4 misses)."""
        return self.box[:4] + self.velocity * min(self.misses + 1, MAX_PREDICT_RUNS)

    def want_vote(self, max_votes: int, weight: float = 1.0) -> bool:
        """Whether a new recognizer result of ``weight`` for this track would count: fewer than ``max_votes`` votes
        are kept, or it outweighs the weakest one kept (which it replaces, see ``keep_vote``)."""
        return vote_slot(self.votes, weight, max_votes) is not None

    def keep_vote(self, v: Vote, max_votes: int | None, embedding: np.ndarray | None = None) -> None:
        """Add a vote (and its crop's embedding); with ``max_votes`` kept already, it replaces the weakest kept
        vote if it outweighs it (the closest, sharpest frames decide, not the first ones), else it is dropped."""
        j = vote_slot(self.votes, v.weight, max_votes)
        if j is None:
            return
        if j == len(self.votes):
            self.votes.append(v)
            if embedding is not None:
                self.embeddings.append(embedding)
            return
        self.votes[j] = v
        if embedding is not None and len(self.embeddings) == len(self.votes):  # kept side by side with the votes
            self.embeddings[j] = embedding
        elif embedding is not None:
            self.embeddings.append(embedding)


def vote_slot(votes: Sequence[Vote], weight: float, max_votes: int | None) -> int | None:
    """Where a new vote of ``weight`` goes among the kept ``votes``: ``len(votes)`` (appended) while fewer than
    ``max_votes`` (None: no limit) are kept, else the weakest kept vote's index if it outweighs it (replaced),
    else None (dropped)."""
    if max_votes is None or len(votes) < max_votes:
        return len(votes)
    j = min(range(len(votes)), key=lambda i: votes[i].weight, default=None)
    return j if j is not None and weight > votes[j].weight else None


class VisitorHook(Protocol):
    """Records an unknown track as a visit (``edgecam.visitors.Visitors``): sets ``track.visitor`` and ``visits``
    and returns True when it did; ``final`` when the track is ending."""

    def __call__(self, track: Track, final: bool) -> bool: ...


class Tracker:
    """IoU tracker owning the event lifecycle (see the module docstring)."""

    def __init__(self, cfg: TrackerConfig, snapshot: SnapshotConfig, camera: str, run_id: str | None = None,
                 recognizing: bool = False, max_votes: int | None = None) -> None:
        """``recognizing``: a recognizer votes on the crops (a track is ``uncertain``, pending, until its votes weigh
        ``cfg.vote_min_weight``; without one every track is ``unknown`` at once); ``max_votes``: votes kept per
        track (None: all)."""
        self.cfg, self.snapshot_cfg, self.camera = cfg, snapshot, camera
        self.max_votes = max_votes
        self.min_weight = cfg.vote_min_weight if recognizing else 0.0
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.tracks: list[Track] = []
        self._next = 0
        self.confirmed_total = 0  # tracks that became events (``new``) so far
        self.visitors: VisitorHook | None = None  # set by the daemon when visitors are enabled

    # ------------------------------------------------------------------------------------------ step 1

    def assign(self, boxes: np.ndarray, frame_index: int, timestamp: float) -> list[Track]:
        """The track of each detection in ``boxes`` (N, 5) x1,y1,x2,y2,score; new tentative tracks as needed."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 5)
        predicted = np.array([t.predicted() for t in self.tracks]).reshape(-1, 4)
        pairs = greedy_match(iou_matrix(boxes, predicted), self.cfg.iou_threshold)
        pairs += self._match_near(boxes, predicted, pairs)
        assigned: list[Track | None] = [None] * len(boxes)
        for d, t in pairs:
            assigned[d] = self.tracks[t]
        for d in range(len(boxes)):
            if assigned[d] is None:
                assigned[d] = self._open(boxes[d], frame_index, timestamp)
        return [t for t in assigned if t is not None]

    def _match_near(self, boxes: np.ndarray, predicted: np.ndarray,
                    pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """(detection, confirmed track) pairs by centre distance among those IoU left unmatched, nearest first.

        Only confirmed tracks: a face that was an event keeps its id through a miss; tentative tracks (a
        flicker) are not stitched together into something that looks confirmed.
        """
        if self.cfg.match_distance <= 0:
            return []
        free_d = [d for d in range(len(boxes)) if d not in {p[0] for p in pairs}]
        free_t = [t for t in range(len(self.tracks)) if t not in {p[1] for p in pairs} and self.tracks[t].confirmed]
        if not free_d or not free_t:
            return []
        dist = centre_distance(boxes[free_d], predicted[free_t])
        closeness = np.where(dist <= self.cfg.match_distance, 1.0 / (1.0 + dist), 0.0)
        return [(free_d[d], free_t[t]) for d, t in greedy_match(closeness, 1e-9)]

    def _open(self, box: np.ndarray, frame_index: int, timestamp: float) -> Track:
        track = Track(f"{self.run_id}-{self._next:05d}", box.copy(), frame_index, timestamp, frame_index, timestamp,
                      hits=0, max_score=float(box[4]))
        self._next += 1
        self.tracks.append(track)
        return track

    # ------------------------------------------------------------------------------------------ step 2

    def update(self, frame: Frame, observations: list[Observation]) -> list[Event]:
        """Apply this frame's observations, age the unmatched tracks; the events in order."""
        events: list[Event] = []
        seen = set()
        for ob in observations:
            seen.add(id(ob.track))
            events.extend(self._observe(frame, ob))
        for track in list(self.tracks):
            if id(track) not in seen:
                events.extend(self._miss(track, frame))
        return events

    def _observe(self, frame: Frame, ob: Observation) -> list[Event]:
        t = ob.track
        if t.hits:
            t.velocity = 0.5 * t.velocity + 0.5 * (ob.box[:4] - t.box[:4]) / max(1, t.misses + 1)
        t.box, t.hits, t.misses = ob.box.astype(np.float32).copy(), t.hits + 1, 0
        t.confident_hits += float(ob.box[4]) >= self.cfg.confirm_score
        t.last_frame, t.last_ts, t.max_score = frame.index, frame.timestamp, max(t.max_score, float(ob.box[4]))
        self._offer_best(t, frame, ob)
        if ob.vote is not None:
            t.keep_vote(ob.vote, self.max_votes, ob.embedding)
        elif ob.embedding is not None:
            t.embeddings.append(ob.embedding)
        previous, t.identity = t.identity, vote(t.votes, self.min_weight)
        if not t.confirmed:
            if t.hits < self.cfg.min_hits or t.confident_hits < self.cfg.confirm_hits:
                return []
            t.confirmed = True
            self.confirmed_total += 1
            self._visit(t, final=False)
            return [self._event("new", t, frame)]
        if self._visit(t, final=False) or t.identity[:2] != previous[:2]:
            return [self._event("update", t, frame)]
        if t.best_changed and frame.timestamp - t.last_event_ts >= self.cfg.update_interval_s:
            return [self._event("update", t, frame)]
        return []

    def _offer_best(self, t: Track, frame: Frame, ob: Observation) -> None:
        if ob.quality is None:
            return
        value = float(ob.box[4]) * ob.quality.size * ob.quality.sharpness * (2.0 if ob.quality.ok else 1.0)
        if value <= t.best_value:
            return
        s = self.snapshot_cfg
        t.best_value, t.best_changed = value, True
        t.best_image = snapshot_crop(frame.bgr, ob.box, s.margin, s.max_size)
        t.best = {"frame": frame.index, "timestamp": frame.timestamp, "box": _box(ob.box),
                  "score": round(float(ob.box[4]), 4), "quality": ob.quality.as_dict()}

    def _miss(self, track: Track, frame: Frame) -> list[Event]:
        track.misses += 1
        if track.misses < self.cfg.max_age:
            return []
        self.tracks.remove(track)
        if not track.confirmed:
            return []
        self._visit(track, final=True)
        return [self._event("end", track, frame)]

    def flush(self, frame: Frame) -> list[Event]:
        """End every track (stream ended or daemon stopping); ``end`` events for the confirmed ones."""
        ended = []
        for t in self.tracks:
            if t.confirmed:
                self._visit(t, final=True)
                ended.append(self._event("end", t, frame))
        self.tracks = []
        return ended

    # ------------------------------------------------------------------------------------------ events

    def _event(self, kind: str, t: Track, frame: Frame) -> Event:
        name, status, confidence = t.identity
        event = {
            "type": kind, "id": t.id, "seq": t.seq, "camera": self.camera, "label": self.cfg.label,
            "identity": name, "status": status,
            "scores": {"detection": round(float(t.box[4]), 4), "detection_max": round(t.max_score, 4),
                       "identity": confidence, "similarity": vote_similarity(t.votes, name)},
            "box": _box(t.box), "start": t.first_ts, "end": t.last_ts if kind == "end" else None,
            "timestamp": frame.timestamp, "frame": frame.index,
            "frames": {"first": t.first_frame, "last": t.last_frame, "hits": t.hits, "votes": len(t.votes),
                       "vote_weight": round(sum(v.weight for v in t.votes), 3)},
            "snapshot": dict(t.best) if t.best else None,
        }
        if self.visitors is not None:
            event.update(visitor=t.visitor, visits=t.visits)
        image = t.best_image if t.best_changed else None
        t.seq += 1
        t.last_event_ts, t.best_changed = frame.timestamp, False
        return Event(event, image)

    def _visit(self, t: Track, final: bool) -> bool:
        """Offer a confirmed track to the visitor hook; True when it was recorded as a visit just now."""
        return self.visitors is not None and self.visitors(t, final)

    @property
    def opened_total(self) -> int:
        """Tracks opened so far, tentative ones included."""
        return self._next

    def in_view(self) -> list[Track]:
        """Confirmed tracks currently followed."""
        return [t for t in self.tracks if t.confirmed]


def _box(box: np.ndarray) -> list[float]:
    return [round(float(v), 1) for v in box[:4]]
