"""Per-frame processing: motion gate -> detector -> aligned crops + quality gate -> recognizer -> tracker.

``Pipeline.process(frame)`` runs the stages on one frame and returns the tracker's events; it owns no threads
and does no I/O, and it times every stage. The daemon (``edgecam.app``) and ``edgecam bench`` both drive it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edgecam.config import Config
from edgecam.crops import Quality, QualityGate, align
from edgecam.motion import MotionGate
from edgecam.sources import Frame
from edgecam.track import Event, Observation, Tracker, Vote, vote_weight

logger = logging.getLogger(__name__)

STAGES = ("source", "motion", "detect", "crops", "recognize", "track", "publish")
"""Stages timed per frame; ``source`` is the decode (replay) or the wait for a frame (live)."""


class Detector(Protocol):
    """What the pipeline needs of a face detector (``edgecam.detect.FaceDetector``)."""

    def __call__(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


class Recognizer(Protocol):
    """What the pipeline needs of a recognizer (``edgecam.recognize.make_recognizer``)."""

    input_size: tuple[int, int]

    def __call__(self, crops: list[np.ndarray]) -> list[Any]: ...

    def close(self) -> None: ...


@dataclass
class StageTimer:
    """Seconds spent per stage and how many times each ran."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0
            self.calls[stage] += 1

    def ms_per_call(self) -> dict[str, float]:
        """Mean milliseconds per call of each stage that ran."""
        return {s: round(1000 * self.seconds[s] / self.calls[s], 3) for s in STAGES if self.calls[s]}

    def ms_per_frame(self, frames: int) -> dict[str, float]:
        """Milliseconds per frame (stage total / all frames) of each stage that ran."""
        return {s: round(1000 * self.seconds[s] / max(1, frames), 3) for s in STAGES if self.calls[s]}


@dataclass
class PipelineCounts:
    """What the pipeline did, for stats and bench."""

    frames: int = 0
    detector_runs: int = 0
    faces: int = 0
    crops_passed: int = 0  # passed the quality gate
    crops_recognized: int = 0
    frame_pixels: int = 0
    recognizer_pixels: int = 0
    events: int = 0
    errors: int = 0


def identity_vote(result: Any, weight: float = 1.0) -> Vote:
    """A recognizer ``Identity(name, status, score)`` as a tracker vote of ``weight`` (``track.vote_weight``)."""
    return Vote(str(result.name), str(result.status), float(result.score), weight)


class Pipeline:
    """Per-frame processing; call ``process(frame)`` for every frame and ``finish(frame)`` at the end."""

    def __init__(self, cfg: Config, detector: Detector, recognizer: Recognizer | None = None,
                 run_id: str | None = None) -> None:
        self.cfg, self.detector, self.recognizer = cfg, detector, recognizer
        self.motion = MotionGate(cfg.motion)
        self.quality = QualityGate.from_config(cfg.crops)
        w, h = recognizer.input_size if recognizer is not None else (112, 112)
        self.crop_size = (int(w), int(h))
        self.max_votes = cfg.recognizer.max_votes if cfg.recognizer is not None else 0
        self.tracker = Tracker(cfg.tracker, cfg.snapshot, cfg.camera.name, run_id,
                               recognizing=recognizer is not None, max_votes=self.max_votes)
        self.detection_enabled = cfg.detector.enabled
        self.timer = StageTimer()
        self.counts = PipelineCounts()
        self.last_observations: list[Observation] = []  # the detections of the last frame (for edgecam.tools.show)

    def process(self, frame: Frame) -> list[Event]:
        """Run the stages on one frame; the events it produced."""
        self.counts.frames += 1
        self.counts.frame_pixels += frame.bgr.shape[0] * frame.bgr.shape[1]
        self.last_observations = []
        with self.timer("motion"):
            gate = self.motion(frame.bgr)
        if not gate.run or not self.detection_enabled:
            return []
        with self.timer("detect"):
            boxes, landmarks = self.detector(frame.bgr)
        self.counts.detector_runs += 1
        self.counts.faces += len(boxes)
        with self.timer("track"):
            tracks = self.tracker.assign(boxes, frame.index, frame.timestamp)
        with self.timer("crops"):
            observations, crops = self._measure(frame, boxes, landmarks, tracks)
        self.last_observations = observations
        if crops:
            with self.timer("recognize"):
                self._recognize(observations, crops)
        with self.timer("track"):
            events = self.tracker.update(frame, observations)
        self.counts.events += len(events)
        return events

    def _measure(self, frame: Frame, boxes: np.ndarray, landmarks: np.ndarray,
                 tracks: list[Any]) -> tuple[list[Observation], dict[int, tuple[np.ndarray, float]]]:
        """Aligned crop and quality of every detection; the crops to recognize and their vote weights, by
        observation index."""
        observations, wanted = [], {}
        for i, (box, lm, track) in enumerate(zip(boxes, landmarks, tracks, strict=True)):
            crop = align(frame.bgr, lm, self.crop_size)
            quality = self.quality(crop, box, lm)
            observations.append(Observation(track, box, lm, quality))
            self.counts.crops_passed += quality.ok
            if quality.ok and self.recognizer is not None:
                weight = self._weight(quality)
                if track.want_vote(self.max_votes, weight):
                    wanted[i] = crop, weight
        return observations, wanted

    def _recognize(self, observations: list[Observation], crops: dict[int, tuple[np.ndarray, float]]) -> None:
        assert self.recognizer is not None
        results = self.recognizer([crop for crop, _ in crops.values()])
        for (i, (_, weight)), result in zip(crops.items(), results, strict=True):
            observations[i].vote = identity_vote(result, weight)
            observations[i].embedding = getattr(result, "embedding", None)
        self.counts.crops_recognized += len(crops)
        self.counts.recognizer_pixels += len(crops) * self.crop_size[0] * self.crop_size[1]

    def _weight(self, quality: Quality) -> float:
        """How much a crop of this quality counts in its track's identity vote."""
        t = self.cfg.tracker
        return vote_weight(quality, t.vote_full_size_px, t.vote_full_sharpness)

    def finish(self, frame: Frame) -> list[Event]:
        """End every open track (end of stream, detection switched off, daemon stopping)."""
        events = self.tracker.flush(frame)
        self.counts.events += len(events)
        return events

    def stats(self, elapsed_s: float, skipped: int | None = None) -> dict[str, Any]:
        """Counters and per-stage timings as a JSON-ready dict."""
        c = self.counts
        return {
            "frames": c.frames, "fps": round(c.frames / elapsed_s, 2) if elapsed_s > 0 else 0.0,
            "frames_skipped_motion": self.motion.stats.skipped if skipped is None else skipped,
            "detector_runs": c.detector_runs, "faces": c.faces, "crops_passed_quality": c.crops_passed,
            "crops_recognized": c.crops_recognized,
            "recognizer_pixel_fraction": round(c.recognizer_pixels / c.frame_pixels, 6) if c.frame_pixels else 0.0,
            "events": c.events, "errors": c.errors, "tracks_in_view": len(self.tracker.in_view()),
            "tracks": self.tracker.confirmed_total, "tracks_unconfirmed": self.tracker.opened_total
            - self.tracker.confirmed_total,
            "stage_ms": self.timer.ms_per_call(), "stage_ms_per_frame": self.timer.ms_per_frame(c.frames),
            "ms_per_face": {"crops": _per(self.timer.seconds["crops"], c.faces),
                            "recognize": _per(self.timer.seconds["recognize"], c.crops_recognized)},
        }


def _per(seconds: float, n: int) -> float | None:
    """Milliseconds per item, None without items."""
    return round(1000 * seconds / n, 3) if n else None


def load_detector(cfg: Config) -> Detector:
    """The face detector named in ``cfg.detector``, warmed up."""
    from edgecam.detect import FaceDetector

    d = cfg.detector
    return FaceDetector(d.model, score_threshold=d.score_threshold, nms_threshold=d.nms_threshold,
                        threads=d.threads, providers=d.providers, max_side=d.max_side)


def load_recognizer(cfg: Config) -> Recognizer | None:
    """The recognizer of ``cfg.recognizer``, or None when the section is absent."""
    if cfg.recognizer is None:
        return None
    from edgecam.recognize import make_recognizer

    r = cfg.recognizer
    return make_recognizer(r.type, r.model, gallery=r.gallery, threads=r.threads,  # type: ignore[no-any-return]
                           threshold=r.threshold)


def enrolled_people(recognizer: Recognizer | None) -> list[str]:
    """Names the recognizer can report (gallery people or classifier labels)."""
    names = getattr(recognizer, "names", None) or getattr(recognizer, "labels", None) or []
    return sorted({str(n) for n in names})
