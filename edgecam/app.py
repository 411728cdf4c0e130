"""The daemon: a source feeding the per-frame ``Pipeline``, its events going to MQTT or JSON lines.

``App`` has a flat, reversible start sequence and one worker thread that reads frames, runs the pipeline,
publishes events, snapshots and states, applies MQTT commands, feeds the systemd watchdog while frames flow
and reports stats. ``edgecam run`` and ``edgecam replay`` both go through ``App``; only the source differs.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from edgecam import EdgecamError, notify
from edgecam.config import Config, ReplaySourceConfig
from edgecam.crops import QualityGate, snapshot_crop
from edgecam.mqtt.topics import DETECTION_STATE, FACES_STATE
from edgecam.pipeline import Detector, Pipeline, Recognizer, enrolled_people, load_detector, load_recognizer
from edgecam.sources import EndOfStream, Frame, Source, make_source
from edgecam.track import Event

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- outputs


def encode_jpeg(bgr: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a BGR image."""
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"cannot encode a {bgr.shape} image as JPEG")
    return buf.tobytes()


class JsonLines:
    """Events as JSON lines on a text stream (stdout, or a file opened here)."""

    def __init__(self, stream: IO[str], owned: bool = False) -> None:
        self.stream, self.owned = stream, owned

    @classmethod
    def to_file(cls, path: Path) -> JsonLines:
        """Write to ``path`` (created or truncated); EdgecamError when it cannot be opened."""
        try:
            return cls(open(path, "w", encoding="utf-8"), owned=True)  # closed in close()
        except OSError as e:
            raise EdgecamError(f"{path}: cannot write events ({e.strerror})") from None

    def write(self, event: Event) -> None:
        """Write one event's payload as a line and flush it."""
        self.stream.write(json.dumps(event.payload) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Close the file if this object opened it."""
        if self.owned:
            self.stream.close()


# ---------------------------------------------------------------------------------------------- the daemon


class App:
    """The daemon: ``start()`` runs a flat list of init/start steps, ``stop()`` undoes them in reverse.

    Args:
        cfg: The validated config.
        source: Frame source (default: built from ``cfg.camera.source``).
        publisher: An ``edgecam.mqtt.publish.Publisher``-like object (default: built from ``cfg.mqtt`` when set).
        events_path: Also write events as JSON lines to this file.
        stdout: Where events go as JSON lines when there is no broker (default ``sys.stdout``).
        detector, recognizer: Preloaded models (default: loaded from ``cfg``; owned, and closed, by the caller).
        show: An ``edgecam.tools.show.Show`` (annotated video, report): an output, and called for every frame.
        progress: An ``edgecam.progress.Progress``: called for every frame, closed when the worker ends.
    """

    def __init__(self, cfg: Config, source: Source | None = None, publisher: Any | None = None,
                 events_path: Path | None = None, stdout: IO[str] | None = None, detector: Detector | None = None,
                 recognizer: Recognizer | None = None, show: Any | None = None, progress: Any | None = None) -> None:
        self.cfg, self.source, self.publisher, self.show, self.progress = cfg, source, publisher, show, progress
        self.detector, self.recognizer = detector, recognizer
        self.events_path, self._stdout = events_path, stdout
        self.outputs: list[JsonLines] = []
        self.pipeline: Pipeline | None = None
        self.people: list[str] = []
        self.error: BaseException | None = None
        self._cleanup: list[tuple[str, Callable[[], None]]] = []
        self._stop = threading.Event()
        self._done = threading.Event()
        self._commands: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._states: dict[str, Any] = {}
        self._recognized: dict[str, str] = {}  # track id -> what was said of it on <base>/recognized
        self._t_start = self._t_stats = self._t_ping = self._t_end = 0.0
        self._frames_at_stats = 0
        self._ready = False

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bring the daemon up; on failure, undo what was done and re-raise."""
        steps = (self.init_state_dir, self.init_source, self.init_models, self.init_pipeline, self.init_outputs,
                 self.init_publisher, self.start_worker)
        try:
            for step in steps:
                step()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Undo the start steps in reverse (worker flushes its tracks, publisher flushes its outbox); idempotent."""
        if self._cleanup:
            notify.stopping()
        self._stop.set()
        while self._cleanup:
            name, undo = self._cleanup.pop()
            try:
                undo()
            except Exception:
                logger.exception("stop: %s failed", name)

    def request_stop(self) -> None:
        """Ask the worker to finish (signal handlers call this); ``stop()`` does the rest."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker finished (end of stream, stop request, fatal error); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done.wait(0.25):
            if deadline is not None and time.monotonic() > deadline:
                return False
        return True

    def init_state_dir(self) -> None:
        """Create the state folder (outbox lives there) when a broker is configured."""
        if self.cfg.mqtt is None and self.publisher is None:
            return
        try:
            self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EdgecamError(f"state_dir {self.cfg.state_dir}: cannot create it ({e.strerror})") from None

    def init_models(self) -> None:
        """Load (and warm up) the detector and the recognizer unless they were passed in."""
        if self.detector is None:
            self.detector = det = load_detector(self.cfg)
            self._cleanup.append(("detector", det.close))
        if self.recognizer is None and self.cfg.recognizer is not None:
            self.recognizer = rec = load_recognizer(self.cfg)
            if rec is not None:
                self._cleanup.append(("recognizer", rec.close))
        self.people = enrolled_people(self.recognizer)

    def init_pipeline(self) -> None:
        """The per-frame stages."""
        assert self.detector is not None
        self.pipeline = Pipeline(self.cfg, self.detector, self.recognizer)

    def init_source(self) -> None:
        """Open the camera or file (a live camera that is away is retried in the background)."""
        if self.source is None:
            self.source = make_source(self.cfg.camera.source)
        self.source.open()
        self._cleanup.append(("source", self.source.close))

    def init_outputs(self) -> None:
        """JSON lines to ``events_path`` and, without a broker, to stdout."""
        if self.events_path is not None:
            self.outputs.append(JsonLines.to_file(self.events_path))
        if self.cfg.mqtt is None and self.publisher is None:
            self.outputs.append(JsonLines(self._stdout or sys.stdout))
        if self.show is not None:
            self.outputs.append(self.show)
        self._cleanup.append(("outputs", self._close_outputs))

    def _close_outputs(self) -> None:
        for out in self.outputs:
            out.close()
        self.outputs = []

    def init_publisher(self) -> None:
        """Start the MQTT publisher (returns at once; a broker that is away is buffered for, not waited on)."""
        if self.publisher is None and self.cfg.mqtt is not None:
            from edgecam.mqtt.publish import Publisher

            self.publisher = Publisher(self.cfg.mqtt, self.cfg.camera.name, self.cfg.state_dir)
            self.publisher.start()
            self._cleanup.append(("publisher", self.publisher.stop))
        if self.publisher is None:
            return
        self.publisher.on_command(lambda command, payload: self._commands.put((command, payload)))
        self.publisher.publish_discovery(self.people)
        self._set_state(DETECTION_STATE, bool(self.cfg.detector.enabled))
        self._set_state(FACES_STATE, 0)

    def start_worker(self) -> None:
        """Start the frame loop thread."""
        self._t_start = self._t_stats = time.monotonic()
        self._worker = threading.Thread(target=self._work, name="edgecam-worker", daemon=True)
        self._worker.start()
        self._cleanup.append(("worker", self._join_worker))

    def _join_worker(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    # ------------------------------------------------------------------------------------------ worker

    def _work(self) -> None:
        """Read frames and process them until stopped or the stream ends; end open tracks on the way out."""
        assert self.source is not None and self.pipeline is not None
        frame: Frame | None = None
        try:
            while not self._stop.is_set():
                self._run_commands(frame)
                with self.pipeline.timer("source"):
                    got = self.source.next(timeout=0.5)
                if got is not None:
                    frame = got
                    self._handle(frame, time.monotonic())
                self._tick(got)
        except EndOfStream:
            logger.info("%s: end of stream after %d frames", self.source.description, self.pipeline.counts.frames)
        except Exception as e:  # a source that cannot go on (bad file), an output that broke: the caller reports it
            self.error = e
            logger.debug("worker stopped by an error", exc_info=True)
        finally:
            self._finish(frame)

    def _finish(self, frame: Frame | None) -> None:
        """End the open tracks (their ``end`` events go out) and mark the worker done, whatever fails."""
        assert self.pipeline is not None
        try:
            if frame is not None:
                self._emit(self.pipeline.finish(frame), time.monotonic())
                self._publish_states()
        except Exception as e:  # an output that broke while flushing
            self.error = self.error or e
            logger.debug("ending the open tracks failed", exc_info=True)
        finally:
            self._t_end = time.monotonic()
            if self.progress is not None:
                self.progress.close(self.pipeline)
            self._done.set()

    def _handle(self, frame: Frame, arrived: float) -> None:
        """Process one frame; an error is logged and counted, and the loop goes on."""
        assert self.pipeline is not None
        try:
            events = self.pipeline.process(frame)
        except Exception:
            self._count_error("frame %d: pipeline error", frame.index)
            return
        self._emit(events, arrived)
        self._publish_states()
        if self.show is not None:
            self.show.frame(frame, self.pipeline, events)
        if self.progress is not None:
            self.progress.frame(frame, self.pipeline)

    def _emit(self, events: list[Event], arrived: float) -> None:
        """Send events to every output: MQTT event (on disk first) + snapshot, then JSON lines."""
        if not events:
            return
        assert self.pipeline is not None
        with self.pipeline.timer("publish"):
            for event in events:
                if self.publisher is not None:
                    self._publish(event, arrived)
                for out in self.outputs:  # after the outbox: a line written here is never lost to a crash
                    out.write(event)

    def _publish(self, event: Event, arrived: float) -> None:
        """Queue one event (and its snapshot) for MQTT; a failure (outbox unwritable) is logged and counted."""
        assert self.publisher is not None and self.pipeline is not None
        try:
            self.publisher.publish_event(event.payload, frame_time=arrived)
            recognition = self._recognition(event.payload)
            if recognition is not None:
                self.publisher.publish_recognition(recognition, frame_time=arrived)
            if event.image is not None:
                self.publisher.publish_snapshot(encode_jpeg(event.image, self.cfg.snapshot.jpeg_quality))
        except Exception:
            self._count_error("event %s seq %s: publishing failed", event.payload["id"], event.payload["seq"])

    def _recognition(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """What an event says on ``<base>/recognized`` (Home Assistant's one-line automations), if anything.

        ``recognized`` the first time a track is named (again if its name changes); ``unknown`` once per track
        when nobody is recognized: the vote says unknown (or no recognizer runs), or the track ended unnamed.
        """
        track, status, name, kind = payload["id"], payload["status"], payload["identity"], payload["type"]
        said = self._recognized.pop(track, None) if kind == "end" else self._recognized.get(track)
        what = None
        if status == "known" and said != name:
            what = "recognized"
        elif said is None and (kind == "end" or status == "unknown" and (
                payload["frames"]["votes"] > 0 or self.recognizer is None)):
            what = "unknown"
        if what is None:
            return None
        if kind != "end":
            self._recognized[track] = name if what == "recognized" else "unknown"
        return {"event_type": what, "identity": name if what == "recognized" else "unknown",
                "camera": payload["camera"], "id": track, "timestamp": payload["timestamp"],
                "start": payload["start"], "scores": payload["scores"], "snapshot": payload.get("snapshot")}

    def _count_error(self, message: str, *args: Any) -> None:
        """Count an error and log it with its traceback (the first 5, then every 100th)."""
        assert self.pipeline is not None
        self.pipeline.counts.errors += 1
        n = self.pipeline.counts.errors
        if n <= 5 or n % 100 == 0:
            logger.exception("%s (%d errors so far)", message % args, n)

    def _publish_states(self) -> None:
        """Faces in view and each enrolled person's presence, published when they change."""
        if self.publisher is None or self.pipeline is None:
            return
        in_view = self.pipeline.tracker.in_view()
        self._set_state(FACES_STATE, len(in_view))
        present = {t.identity[0] for t in in_view if t.identity[1] == "known"}
        for person in self.people:
            self._set_state(person, person in present)

    def _set_state(self, name: str, value: Any) -> None:
        if self.publisher is not None and self._states.get(name) != value:
            self._states[name] = value
            self.publisher.publish_state(name, value)

    def _run_commands(self, frame: Frame | None) -> None:
        """Apply the commands received over MQTT (already validated by the publisher) in the worker thread."""
        while True:
            try:
                command, payload = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                self._command(command, payload, frame)
            except Exception:
                logger.exception("command %s failed", command)

    def _command(self, command: str, payload: bytes, frame: Frame | None) -> None:
        assert self.pipeline is not None
        if command == "detection":
            enabled = payload.strip().upper() == b"ON"
            if not enabled and self.pipeline.detection_enabled and frame is not None:
                self._emit(self.pipeline.finish(frame), time.monotonic())
            self.pipeline.detection_enabled = enabled
            self._states[DETECTION_STATE] = enabled  # the publisher echoes the new state itself
            logger.info("detection switched %s", "on" if enabled else "off")
        elif command == "snapshot" and frame is not None and self.publisher is not None:
            self.publisher.publish_snapshot(encode_jpeg(self._snapshot_now(frame), self.cfg.snapshot.jpeg_quality))
        elif command == "enroll" and frame is not None:
            self._enroll(payload.decode("utf-8"), frame)
        else:
            logger.warning("command %s is not supported by this daemon; ignored", command)

    def _enroll(self, name: str, frame: Frame) -> None:
        """Add the one face of ``frame`` to the gallery as ``name`` (MQTT ``set/enroll``, off by default)."""
        from edgecam.recognize import (
            ENROLL_MAX_YAW,
            ENROLL_MIN_FACE_PX,
            ENROLL_MIN_SHARPNESS,
            EmbeddingRecognizer,
            enroll_crop,
        )

        rec, rcfg = self.recognizer, self.cfg.recognizer
        if not isinstance(rec, EmbeddingRecognizer) or rcfg is None or rcfg.gallery is None:
            logger.warning("enroll %s: needs an identity recognizer with a gallery; ignored", name)
            return
        assert self.detector is not None
        gate = QualityGate(ENROLL_MIN_FACE_PX, ENROLL_MIN_SHARPNESS, ENROLL_MAX_YAW)
        crop, reason = enroll_crop(self.detector, rec.input_size, frame.bgr, gate)
        if crop is None:
            logger.warning("enroll %s: frame %d refused: %s", name, frame.index, reason)
            return
        rec.gallery.add(name, rec.embed([crop]))
        rec.gallery.save(rcfg.gallery)
        self.people = enrolled_people(rec)
        if self.publisher is not None:
            self.publisher.publish_discovery(self.people)
        logger.info("enrolled %s from frame %d into %s", name, frame.index, rcfg.gallery)

    def _snapshot_now(self, frame: Frame) -> np.ndarray:
        """The best crop of the newest face in view, else the whole frame (longer side at most 640)."""
        assert self.pipeline is not None
        tracks = [t for t in self.pipeline.tracker.in_view() if t.best_image is not None]
        if tracks:
            image = max(tracks, key=lambda t: t.last_frame).best_image
            assert image is not None
            return image
        full = np.array([0, 0, frame.bgr.shape[1], frame.bgr.shape[0]], np.float32)
        return snapshot_crop(frame.bgr, full, 0.0, max(640, self.cfg.snapshot.max_size))

    def _tick(self, frame: Frame | None) -> None:
        """systemd READY on the first frame, WATCHDOG only while frames flow, STATUS and stats periodically."""
        now = time.monotonic()
        if frame is not None:
            if not self._ready:
                self._ready = True
                notify.ready(f"camera {self.cfg.camera.name} up")
                logger.info("ready: first frame from %s", self.source.description if self.source else "?")
            interval = notify.watchdog_interval()
            if interval and now - self._t_ping >= interval / 2:
                notify.watchdog()
                self._t_ping = now
        if now - self._t_stats >= self.cfg.stats_interval_s:
            self._report(now)

    def _report(self, now: float) -> None:
        assert self.pipeline is not None
        stats = self.stats()
        frames = self.pipeline.counts.frames
        fps = (frames - self._frames_at_stats) / max(1e-6, now - self._t_stats)
        stats["fps"] = round(fps, 2)
        self._t_stats, self._frames_at_stats = now, frames
        broker = ""
        if self.publisher is not None:
            self.publisher.publish_stats(stats)
            st = self.publisher.status()
            broker = f", broker {'connected' if st.get('connected') else 'away'}, {st.get('queued', 0)} queued"
        else:
            logger.info("stats: %s", json.dumps(stats))
        notify.status(f"{fps:.1f} fps, {stats['tracks_in_view']} face(s) in view{broker}")

    def stats(self) -> dict[str, Any]:
        """Pipeline, source and publisher figures as one JSON-ready dict."""
        assert self.pipeline is not None
        out = self.pipeline.stats((self._t_end or time.monotonic()) - self._t_start)
        if self.source is not None:
            s = self.source.stats
            out["source"] = {"frames": s.frames, "dropped": s.dropped, "bad_frames": s.bad_frames,
                             "errors": s.errors, "reopens": s.reopens, "stalls": s.stalls}
        if self.publisher is not None:
            st = self.publisher.status()
            out.update(queue_depth=st.get("queued", 0), dropped_events=st.get("dropped", 0),
                       broker_connected=bool(st.get("connected")), broker_ever_connected=bool(st.get("ever_connected")),
                       broker_error=st.get("last_error"), latency_ms=st.get("latency_ms"))
        return out


# ---------------------------------------------------------------------------------------------- commands


@contextmanager
def stop_on_signals(app: App) -> Iterator[None]:
    """SIGTERM and SIGINT ask ``app`` to stop while inside the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, _frame: Any) -> None:
        logger.info("%s: stopping", signal.Signals(signum).name)
        app.request_stop()

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_app(app: App) -> dict[str, Any]:
    """Start ``app``, wait until its stream ends or a signal stops it, stop it; its final stats."""
    with stop_on_signals(app):
        app.start()
        try:
            app.wait()
        finally:
            app.stop()
    if app.error is not None:
        raise app.error
    return app.stats()


def replay(cfg: Config, video: Path, speed: str = "max", events_path: Path | None = None,
           stdout: IO[str] | None = None, show: Any | None = None, progress: bool = False) -> dict[str, Any]:
    """Replay ``video`` through the daemon pipeline (``edgecam replay``); the final stats.

    ``progress``: show a bar with an ETA on stderr when it is a terminal, a stats line every 10 s otherwise.
    """
    cfg = cfg.model_copy(update={"camera": cfg.camera.model_copy(
        update={"source": ReplaySourceConfig.model_construct(path=video, speed=speed)})})
    source = make_source(cfg.camera.source)
    bar = _ReplayProgress(source, video) if progress else None
    return run_app(App(cfg, source=source, events_path=events_path, stdout=stdout, show=show, progress=bar))


class _ReplayProgress:
    """A ``Progress`` created once the source is open (its frame count is known then)."""

    def __init__(self, source: Source, video: Path) -> None:
        self.source, self.video = source, video
        self.bar: Any = None

    def frame(self, frame: Frame, pipeline: Pipeline) -> None:
        if self.bar is None:
            from edgecam.progress import Progress

            self.bar = Progress(self.video.name, int(getattr(self.source, "frames_total", 0)))
        self.bar.frame(frame, pipeline)

    def close(self, pipeline: Pipeline | None = None) -> None:
        if self.bar is not None:
            self.bar.close(pipeline)


def run_daemon(cfg: Config, events_path: Path | None = None) -> int:
    """Run the camera daemon (``edgecam run``) until SIGTERM / SIGINT; exit status."""
    run_app(App(cfg, events_path=events_path))
    return 0
