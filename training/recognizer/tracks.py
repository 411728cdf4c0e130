"""Identity over a track: pseudo-tracks of real photos of one person through the daemon's per-frame pipeline.

A pseudo-track is a person walking up to the camera, made of real photos: frame k shows one of the person's
photos (a different photo every ``frames_per_photo`` frames: pose, light and expression change), scaled so the
face box side grows geometrically from ``start_px`` to ``end_px`` (never above the photo's own size), centred on
a grey ``frame_w`` x ``frame_h`` frame; the first ``degraded`` frames are also blurred (Gaussian sigma falling
from ``blur`` towards 0) and JPEG-compressed at quality ``jpeg`` (far, moving, low-resolution).

Each frame goes through ``edgecam.pipeline.Pipeline`` (the daemon's own code: detector -> tracker.assign ->
align -> quality gate -> recognizer while the track wants votes -> tracker.update; motion gate off, config
defaults otherwise), and its events are scored per track:

- a genuine track (an enrolled person): ``right`` when the last event names the person and no event ever named
  anyone else, ``wrong`` when an event named someone else, else ``not_named``; ``right_once`` when ``right`` and
  no event said ``unknown`` before the name came (a door automation would have announced a stranger first);
- a stranger track: ``wrong`` when an event named anyone, ``unknown`` when the last event says unknown,
  ``uncertain`` otherwise;
- ``no_event``: the track was never confirmed (counted apart, in neither).

``replay_votes`` re-scores the same detections and recognitions under another voting rule (``count_rule``: the
tracker's rule before votes were quality-weighted, i.e. the first ``max_votes`` crops that pass the gate, one vote
each, ``unknown`` before any), mirroring the tracker's event rule; with the tracker's own rule (``runtime_rule``)
it reproduces the pipeline's events, which ``run_tracks`` checks.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from edgecam.config import Config, MotionConfig, RecognizerConfig, TrackerConfig
from edgecam.crops import Quality, QualityGate, align
from edgecam.detect import FaceDetector
from edgecam.pipeline import Pipeline
from edgecam.recognize import EmbeddingRecognizer
from edgecam.sources import Frame
from edgecam.track import Vote, vote, vote_slot, vote_weight
from training.recognizer.stills import central_index


@dataclass(frozen=True)
class TrackConfig:
    """How pseudo-tracks are made."""

    frames: int = 16  # frames per track (the daemon keeps recognizer.max_votes = 10 votes: the weightiest)
    frames_per_photo: int = 4  # consecutive frames showing the same photo
    start_px: float = 28.0  # face box side in the first frame (the quality gate's default minimum is 24)
    end_px: float = 112.0  # ... in the last frame (at most the photo's own face size)
    degraded: int = 6  # first frames blurred and JPEG-compressed
    blur: float = 1.5  # Gaussian sigma of the first frame, falling linearly to 0 at frame ``degraded``
    jpeg: int = 40  # JPEG quality of the degraded frames
    frame_w: int = 320
    frame_h: int = 240
    fps: float = 5.0  # frame timestamps (detector runs per second)


@dataclass
class TrackSpec:
    """One pseudo-track: whose photos, whether that person is enrolled, and the photos (BGR) with face sizes."""

    person: str
    enrolled: bool
    kind: str  # "genuine" | a stranger set name
    photos: list[np.ndarray]
    sides: list[float]  # face box side in each photo


def make_frames(spec: TrackSpec, cfg: TrackConfig) -> list[np.ndarray]:
    """The track's frames (BGR, ``frame_h`` x ``frame_w`` or larger when a photo is)."""
    px = cfg.start_px * (cfg.end_px / cfg.start_px) ** (np.arange(cfg.frames) / max(cfg.frames - 1, 1))
    frames = []
    for k in range(cfg.frames):
        j = (k // cfg.frames_per_photo) % len(spec.photos)
        photo, f = spec.photos[j], min(1.0, px[k] / max(spec.sides[j], 1.0))
        img = cv2.resize(photo, (max(1, round(photo.shape[1] * f)), max(1, round(photo.shape[0] * f))),
                         interpolation=cv2.INTER_AREA) if f < 1 else photo
        if k < cfg.degraded:
            sigma = cfg.blur * (1 - k / cfg.degraded)
            img = cv2.GaussianBlur(img, (0, 0), sigma) if sigma > 0 else img
            img = np.asarray(cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg])[1],
                                          cv2.IMREAD_COLOR))
        h, w = max(cfg.frame_h, img.shape[0]), max(cfg.frame_w, img.shape[1])
        frame = np.full((h, w, 3), 128, np.uint8)
        y, x = (h - img.shape[0]) // 2, (w - img.shape[1]) // 2
        frame[y:y + img.shape[0], x:x + img.shape[1]] = img
        frames.append(frame)
    return frames


def _key(a: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest()


class RecordingDetector:
    """The detector with a cache by frame content (passes over the same frames run it once)."""

    def __init__(self, det: FaceDetector) -> None:
        self.det, self.seen = det, 0
        self.cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = _key(bgr)
        if k not in self.cache:
            self.cache[k] = self.det(bgr)
            self.seen += 1
        return self.cache[k]

    def close(self) -> None:
        pass


class CachedRecognizer(EmbeddingRecognizer):
    """The runtime identity recognizer with embeddings cached by crop content (thresholds and gallery set by
    the caller); not registered as a recognizer kind."""

    kind = ""

    def __init__(self, rec: EmbeddingRecognizer, cache: dict[bytes, np.ndarray]) -> None:
        self.__dict__.update(rec.__dict__)  # the loaded session, gallery and thresholds, shared
        self.cache = cache  # crop key -> embedding, shared by the passes of one model

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        keys = [_key(c) for c in crops]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if todo:
            for i, e in zip(todo, super().embed([crops[i] for i in todo]), strict=True):
                self.cache[keys[i]] = e
        return np.stack([self.cache[k] for k in keys]) if keys else np.zeros((0, self.dim), np.float32)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------- the daemon's path


def daemon_config() -> Config:
    """The daemon's default config with the motion gate off (every pseudo-frame is a detector run)."""
    return Config(motion=MotionConfig(enabled=False), recognizer=RecognizerConfig())


def run_pipeline(frames: list[np.ndarray], det: RecordingDetector, rec: EmbeddingRecognizer, cfg: Config,
                 fps: float) -> tuple[list[dict[str, Any]], str]:
    """One track's frames through a fresh ``Pipeline``: the event payloads of the tracks that held the face
    nearest the frame centre (the person; a bystander in a photo has tracks of their own), and the id of the last
    such track."""
    pipe = Pipeline(cfg, det, rec, run_id="pseudo")
    events, ids, last = [], set(), ""
    for k, bgr in enumerate(frames):
        events += [e.payload for e in pipe.process(Frame(k, k / fps, bgr))]
        obs = pipe.last_observations
        if obs:
            j = central_index(np.array([o.box for o in obs]), bgr.shape)
            last = obs[j].track.id
            ids.add(last)
    events += [e.payload for e in pipe.finish(Frame(len(frames), len(frames) / fps, frames[-1]))]
    return [e for e in events if e["id"] in ids], last


def outcome(events: list[dict[str, Any]], person: str, enrolled: bool, last_id: str | None = None) -> str:
    """A track's verdict from its events (see the module docstring); the final identity is that of the last event
    of track ``last_id`` (default: the last event)."""
    if not events:
        return "no_event"
    named = [e["identity"] for e in events if e["status"] == "known"]
    last = next((e for e in reversed(events) if e.get("id") == last_id), events[-1])
    if enrolled:
        if any(n != person for n in named):
            return "wrong"
        if last["status"] == "known" and last["identity"] == person:
            first = next(i for i, e in enumerate(events) if e["status"] == "known")
            return "right" if any(e["status"] == "unknown" for e in events[:first]) else "right_once"
        return "not_named"
    if named:
        return "wrong"
    return "unknown" if last["status"] == "unknown" else "uncertain"


def sequence(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (identity, status) a track published, in order, repeats dropped (snapshot-only updates)."""
    out: list[tuple[str, str]] = []
    for e in events:
        if not out or out[-1] != (e["identity"], e["status"]):
            out.append((e["identity"], e["status"]))
    return out


def rates(verdicts: list[str], enrolled: bool) -> dict[str, float | int]:
    """Per-track rates of the verdicts (``right`` includes ``right_once``), over tracks with an event."""
    n = sum(v != "no_event" for v in verdicts)
    share = (lambda k: round(sum(v in k for v in verdicts) / n, 4) if n else float("nan"))  # noqa: E731
    out: dict[str, float | int] = {"tracks": len(verdicts), "no_event": sum(v == "no_event" for v in verdicts)}
    if enrolled:
        out.update(named_right=share(("right", "right_once")), named_right_once=share(("right_once",)),
                   named_wrong=share(("wrong",)), not_named=share(("not_named",)))
    else:
        out.update(named_wrong=share(("wrong",)), unknown=share(("unknown",)), uncertain=share(("uncertain",)))
    return out


# ------------------------------------------------------------------------------ votes, recorded and replayed


@dataclass
class FrameRecord:
    """The central face of one frame as the pipeline saw it: detector score, quality and the recognizer's answer
    (``vote`` is set for every crop that passes the gate, whether or not the runtime would have asked)."""

    score: float
    quality: Quality
    vote: Vote | None = None


@dataclass
class Recorded:
    """One track's frames as records (None: no face detected)."""

    spec_index: int
    frames: list[FrameRecord | None] = field(default_factory=list)


def record(frames: list[np.ndarray], det: RecordingDetector, rec: EmbeddingRecognizer, gate: QualityGate,
           index: int, tracker: TrackerConfig) -> Recorded:
    """Records of the central face of each frame, with a vote (weighted as the pipeline weighs it) for every crop
    that passes the quality gate."""
    out = Recorded(index)
    for bgr in frames:
        boxes, lms = det(bgr)
        if len(boxes) == 0:
            out.frames.append(None)
            continue
        k = central_index(boxes, bgr.shape)
        crop = align(bgr, lms[k], rec.input_size)
        q = gate(crop, boxes[k], lms[k])
        r = FrameRecord(float(boxes[k][4]), q)
        if q.ok:
            ident = rec([crop])[0]
            r.vote = Vote(ident.name, ident.status, ident.score,
                          vote_weight(q, tracker.vote_full_size_px, tracker.vote_full_sharpness))
        out.frames.append(r)
    return out


VoteRule = Callable[[list[Vote]], tuple[str, str, float]]


def runtime_rule(cfg: Config) -> VoteRule:
    """``edgecam.track.vote`` as the daemon's tracker calls it: weighted votes, pending until ``vote_min_weight``."""
    return lambda votes: vote(votes, cfg.tracker.vote_min_weight)


def count_rule(votes: list[Vote]) -> tuple[str, str, float]:
    """The tracker's rule before votes were weighted: every vote counts 1, a verdict from the first vote on."""
    return vote([dataclasses.replace(v, weight=1.0) for v in votes])


def replay_votes(rec: Recorded, cfg: Config, rule: VoteRule, best_votes: bool) -> list[dict[str, Any]]:
    """The events (type, identity, status) of one recorded track under a voting rule, by the tracker's event
    rule: ``new`` once confirmed, ``update`` when the voted (identity, status) changes, ``end`` at the end.

    ``best_votes`` True: the runtime's budget (the weightiest ``max_votes`` votes: a crop that outweighs the weakest
    vote kept replaces it); False: the first ``max_votes`` crops that pass the gate (the budget before).
    """
    t, max_votes = cfg.tracker, cfg.recognizer.max_votes if cfg.recognizer else 0
    votes: list[Vote] = []
    hits = confident = 0
    confirmed, identity = False, ("unknown", "unknown", 0.0)
    events: list[dict[str, Any]] = []
    for r in rec.frames:
        if r is None:
            continue
        hits, confident = hits + 1, confident + (r.score >= t.confirm_score)
        if r.vote is not None:
            j = vote_slot(votes, r.vote.weight, max_votes) if best_votes else \
                (len(votes) if len(votes) < max_votes else None)
            if j == len(votes):
                votes.append(r.vote)
            elif j is not None:
                votes[j] = r.vote
        previous, identity = identity, rule(votes)
        if not confirmed:
            if hits >= t.min_hits and confident >= t.confirm_hits:
                confirmed = True
                events.append({"type": "new", "identity": identity[0], "status": identity[1]})
        elif identity[:2] != previous[:2]:
            events.append({"type": "update", "identity": identity[0], "status": identity[1]})
    if confirmed:
        events.append({"type": "end", "identity": identity[0], "status": identity[1]})
    return events


def run_tracks(specs: list[TrackSpec], det: FaceDetector, recs: dict[str, EmbeddingRecognizer],
               cfg: TrackConfig, subsets: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """Every spec through the pipeline with each recognizer (``subsets``: the spec indices a recognizer runs on,
    default all), and the same detections and recognitions under the rule before (``count_rule``). Returns the
    figures."""
    dcfg, gate = daemon_config(), QualityGate.from_config(daemon_config().crops)
    rdet = RecordingDetector(det)
    result: dict[str, Any] = {}
    caches: dict[str, dict[bytes, np.ndarray]] = {}
    for name, rec in recs.items():
        idx = (subsets or {}).get(name, list(range(len(specs))))
        cached = CachedRecognizer(rec, caches.setdefault(str(rec.manifest.data["sha256"]), {}))
        verdicts: dict[str, dict[str, list[str]]] = {"runtime": {}, "count": {}, "replayed": {}}
        agree = 0
        for i in tqdm(idx, desc=f"tracks {name}", mininterval=5):
            s = specs[i]
            frames = make_frames(s, cfg)
            events, last_id = run_pipeline(frames, rdet, cached, dcfg, cfg.fps)
            recd = record(frames, rdet, cached, gate, i, dcfg.tracker)
            same = replay_votes(recd, dcfg, runtime_rule(dcfg), best_votes=True)
            before = replay_votes(recd, dcfg, count_rule, best_votes=False)
            agree += sequence(events) == sequence(same)
            for key, evs, last in (("runtime", events, last_id), ("count", before, None), ("replayed", same, None)):
                verdicts[key].setdefault(s.kind, []).append(outcome(evs, s.person, s.enrolled, last))
        result[name] = {rule: {kind: rates(v, kind == "genuine") for kind, v in per.items()}
                        for rule, per in verdicts.items() if rule != "replayed"}
        result[name]["replay_matches_pipeline"] = round(agree / max(len(idx), 1), 4)
    result["detector_frames"] = rdet.seen
    return result
