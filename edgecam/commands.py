"""MQTT commands, applied in the daemon's worker thread: detection on/off, a snapshot now, enroll a face, name or
forget a visitor.

The publisher validates a command on its network thread and ``put``\\ s it here; the worker calls ``run``
between frames, so a command never races the pipeline. One handler per command (``HANDLERS``).
"""

from __future__ import annotations

import json
import logging
import queue
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from edgecam import EdgecamError
from edgecam.crops import QualityGate, snapshot_crop
from edgecam.pipeline import Detector, Pipeline, Recognizer, enrolled_people

if TYPE_CHECKING:
    from edgecam.config import Config
    from edgecam.outputs import MqttEvents
    from edgecam.sources import Frame
    from edgecam.visitors import VisitorStore

logger = logging.getLogger(__name__)


class Commands:
    """The command handlers of one daemon.

    Args:
        cfg: The daemon's config (recognizer gallery, snapshot size).
        pipeline: Its per-frame stages (detection switch, tracks in view).
        detector, recognizer: Its models (enroll).
        mqtt: Where snapshots, states and the new people go.
        end_tracks: Ends the open tracks at a frame and sends their ``end`` events (detection switched off).
    """

    def __init__(self, cfg: Config, pipeline: Pipeline, detector: Detector, recognizer: Recognizer | None,
                 mqtt: MqttEvents, end_tracks: Callable[[Frame], None]) -> None:
        self.cfg, self.pipeline, self.detector, self.recognizer = cfg, pipeline, detector, recognizer
        self.mqtt, self.end_tracks = mqtt, end_tracks
        self._queue: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self.visitors: VisitorStore | None = None  # the visitor store, when visitors are enabled
        self.handlers: dict[str, Callable[[bytes, Frame | None], None]] = {
            "detection": self.detection, "snapshot": self.snapshot, "enroll": self.enroll, "visitor": self.visitor}

    def put(self, command: str, payload: bytes) -> None:
        """Queue a validated command (any thread: the publisher calls this from its network thread)."""
        self._queue.put((command, payload))

    def run(self, frame: Frame | None) -> None:
        """Apply the queued commands (worker thread); ``frame`` is the newest one (None before the first)."""
        while True:
            try:
                command, payload = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                self.apply(command, payload, frame)
            except Exception:
                logger.exception("command %s failed", command)

    def apply(self, command: str, payload: bytes, frame: Frame | None) -> None:
        """Apply one command now."""
        handler = self.handlers.get(command)
        if handler is None:
            logger.warning("command %s is not supported by this daemon; ignored", command)
        else:
            handler(payload, frame)

    def detection(self, payload: bytes, frame: Frame | None) -> None:
        """``ON`` / ``OFF``: switching off ends the open tracks (their ``end`` events go out)."""
        enabled = payload.strip().upper() == b"ON"
        if not enabled and self.pipeline.detection_enabled and frame is not None:
            self.end_tracks(frame)
        self.pipeline.detection_enabled = enabled
        self.mqtt.detection_echoed(enabled)  # the publisher echoes the new state itself
        logger.info("detection switched %s", "on" if enabled else "off")

    def snapshot(self, payload: bytes, frame: Frame | None) -> None:
        """Publish a snapshot now: the best crop of the newest face in view, else the frame."""
        if frame is None:
            logger.warning("snapshot: no frame yet; ignored")
            return
        self.mqtt.snapshot(snapshot_now(frame, self.pipeline, self.cfg.snapshot.max_size))

    def enroll(self, payload: bytes, frame: Frame | None) -> None:
        """Add the main face of ``frame`` to the gallery as the person named (``set/enroll``, off by default)."""
        from edgecam.recognize import (
            ENROLL_MAX_YAW,
            ENROLL_MIN_FACE_PX,
            ENROLL_MIN_SHARPNESS,
            EmbeddingRecognizer,
            enroll_crop,
        )

        name = payload.decode("utf-8")
        if frame is None:
            logger.warning("enroll %s: no frame yet; ignored", name)
            return
        rec, rcfg = self.recognizer, self.cfg.recognizer
        if not isinstance(rec, EmbeddingRecognizer) or rcfg is None or rcfg.gallery is None:
            logger.warning("enroll %s: needs an identity recognizer with a gallery; ignored", name)
            return
        gate = QualityGate(ENROLL_MIN_FACE_PX, ENROLL_MIN_SHARPNESS, ENROLL_MAX_YAW)
        crop, reason = enroll_crop(self.detector, rec.input_size, frame.bgr, gate)
        if crop is None:
            logger.warning("enroll %s: frame %d refused: %s", name, frame.index, reason)
            return
        rec.gallery.add(name, rec.embed([crop]))
        rec.gallery.save(rcfg.gallery)
        self.mqtt.announce(enrolled_people(rec))
        logger.info("enrolled %s from frame %d into %s", name, frame.index, rcfg.gallery)


    def visitor(self, payload: bytes, frame: Frame | None) -> None:
        """``{"visitor": "visitor-17", "name": "Alice"}``: the visitor's embeddings join the gallery (Alice is known
        from the next recognition on); ``{"visitor": ..., "forget": true}``: deleted (``set/visitor``, off by
        default)."""
        from edgecam.recognize import EmbeddingRecognizer
        from edgecam.visitors import name_visitor

        cmd = json.loads(payload)
        if self.visitors is None:
            logger.warning("visitor %s: visitors are not enabled; ignored", cmd["visitor"])
            return
        rec, rcfg = self.recognizer, self.cfg.recognizer
        try:
            if cmd.get("forget"):
                gone = self.visitors.forget([cmd["visitor"]])[0]
                logger.info("forgot %s (%d visits)", gone.id, gone.visits)
                return
            if not isinstance(rec, EmbeddingRecognizer) or rcfg is None or rcfg.gallery is None:
                logger.warning("visitor %s: naming needs recognizer.gallery (a gallery file); ignored",
                               cmd["visitor"])
                return
            v = name_visitor(self.visitors, cmd["visitor"], cmd["name"], rec.gallery, rcfg.gallery)
        except EdgecamError as e:
            logger.warning("visitor command %s: %s; ignored", cmd["visitor"], e)
            return
        self.mqtt.announce(enrolled_people(rec))
        logger.info("%s named %s (%d embeddings into %s)", v.id, cmd["name"], v.embeddings, rcfg.gallery)


def snapshot_now(frame: Frame, pipeline: Pipeline, max_size: int) -> np.ndarray:
    """The best crop of the newest face in view, else the whole frame (longer side at most 640 or ``max_size``)."""
    tracks = [t for t in pipeline.tracker.in_view() if t.best_image is not None]
    if tracks:
        image = max(tracks, key=lambda t: t.last_frame).best_image
        assert image is not None
        return image
    full = np.array([0, 0, frame.bgr.shape[1], frame.bgr.shape[0]], np.float32)
    return snapshot_crop(frame.bgr, full, 0.0, max(640, max_size))
