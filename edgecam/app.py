"""The daemon: a source feeding the per-frame ``Pipeline``, its events going to MQTT or JSON lines.

``App`` has a flat, reversible start sequence and one worker thread that reads frames, runs the pipeline and
sends the events to the outputs (``edgecam.outputs``); between frames it applies the MQTT commands
(``edgecam.commands``), and ``edgecam.health`` feeds the systemd watchdog while frames flow and reports stats.
``edgecam run`` and ``edgecam replay`` both go through ``App``; only the source differs. With visitors enabled the
tracker records unknown tracks in the visitor store (``edgecam.visitors``); the worker reloads a gallery file that
another process changed and expires old visitors.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from edgecam import EdgecamError, notify
from edgecam.commands import Commands
from edgecam.config import Config, ReplaySourceConfig
from edgecam.health import Health
from edgecam.mqtt.topics import DETECTION_STATE, FACES_STATE
from edgecam.outputs import EventOutput, EventPublisher, FrameView, JsonLines, MqttEvents, ProgressView
from edgecam.pipeline import Detector, Pipeline, Recognizer, enrolled_people, load_detector, load_recognizer
from edgecam.sources import EndOfStream, Frame, Source, make_source
from edgecam.track import Event

if TYPE_CHECKING:
    from edgecam.visitors import Visitors

__all__ = ["App", "replay", "run_app", "run_daemon"]

logger = logging.getLogger(__name__)

GALLERY_CHECK_S = 2.0
"""Seconds between two looks at the gallery file (a person named or enrolled by another process)."""
EXPIRE_EVERY_S = 3600.0
"""Seconds between two retention passes over the visitor store (visits also expire old visitors)."""


# ---------------------------------------------------------------------------------------------- the daemon


class App:
    """The daemon: ``start()`` runs a flat list of init/start steps, ``stop()`` undoes them in reverse.

    Its parts: ``Pipeline`` (the stages), ``MqttEvents`` (what goes to the publisher), ``Commands`` (MQTT
    commands, applied in the worker thread), ``Health`` (systemd readiness and watchdog, stats).

    Args:
        cfg: The validated config.
        source: Frame source (default: built from ``cfg.camera.source``).
        publisher: An ``EventPublisher`` (default: an ``edgecam.mqtt.publish.Publisher`` built from ``cfg.mqtt``
            when set, started and stopped here; one passed in is started and stopped by the caller).
        events_path: Also write events as JSON lines to this file.
        stdout: Where events go as JSON lines when there is no broker (default ``sys.stdout``).
        detector, recognizer: Preloaded models (default: loaded from ``cfg``; owned, and closed, by the caller).
        show: A ``FrameView`` (``edgecam.tools.show.Show``: annotated video, report): an output, and called for
            every frame.
        progress: A ``ProgressView`` (``edgecam.progress.Progress``): called for every frame, closed when the
            worker ends.
    """

    def __init__(self, cfg: Config, source: Source | None = None, publisher: EventPublisher | None = None,
                 events_path: Path | None = None, stdout: IO[str] | None = None, detector: Detector | None = None,
                 recognizer: Recognizer | None = None, show: FrameView | None = None,
                 progress: ProgressView | None = None) -> None:
        self.cfg, self.source, self.publisher, self.show, self.progress = cfg, source, publisher, show, progress
        self.detector, self.recognizer = detector, recognizer
        self.events_path, self._stdout = events_path, stdout
        self.outputs: list[EventOutput] = []
        self.pipeline: Pipeline | None = None
        self.mqtt: MqttEvents | None = None
        self.commands: Commands | None = None
        self.health: Health | None = None
        self.error: BaseException | None = None
        self._cleanup: list[tuple[str, Callable[[], None]]] = []
        self._stop = threading.Event()
        self._done = threading.Event()
        self._worker: threading.Thread | None = None
        self.visitors: Visitors | None = None
        self._next_gallery_check = self._next_expire = 0.0

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bring the daemon up; on failure, undo what was done and re-raise."""
        steps = (self.init_state_dir, self.init_source, self.init_models, self.init_pipeline, self.init_visitors,
                 self.init_outputs, self.init_publisher, self.start_worker)
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

    def stats(self) -> dict[str, Any]:
        """Pipeline, source and publisher figures as one JSON-ready dict (once started)."""
        assert self.health is not None
        return self.health.stats()

    def init_state_dir(self) -> None:
        """Create the state folder (outbox and visitors live there) when a broker is configured or visitors are on."""
        if self.cfg.mqtt is None and self.publisher is None and not self.cfg.visitors.enabled:
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

    def init_pipeline(self) -> None:
        """The per-frame stages."""
        assert self.detector is not None
        self.pipeline = Pipeline(self.cfg, self.detector, self.recognizer)

    def init_visitors(self) -> None:
        """The visitor store in ``state_dir`` (``visitors.enabled``): the tracker records unknown tracks in it."""
        if not self.cfg.visitors.enabled:
            return
        assert self.pipeline is not None
        from edgecam.visitors import Visitors

        self.visitors = stage = Visitors.from_config(self.cfg, self.recognizer)
        self._cleanup.append(("visitors", stage.close))
        self.pipeline.tracker.visitors = stage
        logger.info("visitors: %d remembered in %s (threshold %.3f)", len(stage.store.visitors()),
                    stage.store.path, stage.store.threshold)

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
        """Start the MQTT publisher (returns at once; a broker that is away is buffered for, not waited on),
        announce the enrolled people and the first states; its commands go to the worker."""
        if self.publisher is None and self.cfg.mqtt is not None:
            from edgecam.mqtt.publish import Publisher

            publisher = Publisher(self.cfg.mqtt, self.cfg.camera.name, self.cfg.state_dir)
            publisher.start()
            self._cleanup.append(("publisher", publisher.stop))
            self.publisher = publisher
        if self.publisher is None:
            return
        assert self.pipeline is not None and self.detector is not None
        self.mqtt = mqtt = MqttEvents(self.publisher, self.cfg.snapshot.jpeg_quality, self.recognizer is not None)
        self.commands = Commands(self.cfg, self.pipeline, self.detector, self.recognizer, mqtt, self._end_tracks)
        if self.visitors is not None:
            mqtt.visitors = self.commands.visitors = self.visitors.store
        self.publisher.on_command(self.commands.put)
        mqtt.announce(enrolled_people(self.recognizer))
        mqtt.set_state(DETECTION_STATE, bool(self.cfg.detector.enabled))
        mqtt.set_state(FACES_STATE, 0)

    def start_worker(self) -> None:
        """Start the frame loop thread."""
        assert self.source is not None and self.pipeline is not None
        self.health = Health(self.cfg.camera.name, self.cfg.stats_interval_s, self.pipeline, self.source,
                             self.publisher, time.monotonic())
        self.health.visitors = self.visitors.store if self.visitors is not None else None
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
        assert self.source is not None and self.pipeline is not None and self.health is not None
        frame: Frame | None = None
        try:
            while not self._stop.is_set():
                if self.commands is not None:
                    self.commands.run(frame)
                self._housekeeping(time.monotonic())
                with self.pipeline.timer("source"):
                    got = self.source.next(timeout=0.5)
                if got is not None:
                    frame = got
                    self._handle(frame, time.monotonic())
                self.health.tick(got, time.monotonic())
        except EndOfStream:
            logger.info("%s: end of stream after %d frames", self.source.description, self.pipeline.counts.frames)
        except Exception as e:  # a source that cannot go on (bad file), an output that broke: the caller reports it
            self.error = e
            logger.debug("worker stopped by an error", exc_info=True)
        finally:
            self._finish(frame)

    def _finish(self, frame: Frame | None) -> None:
        """End the open tracks (their ``end`` events go out) and mark the worker done, whatever fails."""
        assert self.pipeline is not None and self.health is not None
        try:
            if frame is not None:
                self._end_tracks(frame)
                self._publish_states()
        except Exception as e:  # an output that broke while flushing
            self.error = self.error or e
            logger.debug("ending the open tracks failed", exc_info=True)
        finally:
            self.health.t_end = time.monotonic()
            if self.progress is not None:
                self.progress.close(self.pipeline)
            self._done.set()

    def _housekeeping(self, now: float) -> None:
        """Read a gallery file that another process changed (``edgecam visitors name``, ``enroll``), announce the
        people it holds; forget the visitors past their retention."""
        rcfg, rec = self.cfg.recognizer, self.recognizer
        if now >= self._next_gallery_check and rcfg is not None and rcfg.gallery is not None:
            self._next_gallery_check = now + GALLERY_CHECK_S
            reload = getattr(rec, "reload_gallery", None)
            if reload is not None and reload(rcfg.gallery) and self.mqtt is not None:
                self.mqtt.announce(enrolled_people(rec))
        if now >= self._next_expire and self.visitors is not None:
            self._next_expire = now + EXPIRE_EVERY_S
            self.visitors.store.expire()

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

    def _end_tracks(self, frame: Frame) -> None:
        """End every open track at ``frame`` and send the ``end`` events."""
        assert self.pipeline is not None
        self._emit(self.pipeline.finish(frame), time.monotonic())

    def _emit(self, events: list[Event], arrived: float) -> None:
        """Send events to every output: MQTT event (on disk first) + snapshot, then JSON lines."""
        if not events:
            return
        assert self.pipeline is not None
        with self.pipeline.timer("publish"):
            for event in events:
                if self.mqtt is not None:
                    self._publish(event, arrived)
                for out in self.outputs:  # after the outbox: a line written here is never lost to a crash
                    out.write(event)

    def _publish(self, event: Event, arrived: float) -> None:
        """Queue one event (and its snapshot) for MQTT; a failure (outbox unwritable) is logged and counted."""
        assert self.mqtt is not None
        try:
            self.mqtt.publish(event, arrived)
        except Exception:
            self._count_error("event %s seq %s: publishing failed", event.payload["id"], event.payload["seq"])

    def _publish_states(self) -> None:
        """Faces in view and each enrolled person's presence, published when they change."""
        if self.mqtt is not None and self.pipeline is not None:
            self.mqtt.publish_states(self.pipeline.tracker.in_view())

    def _count_error(self, message: str, *args: Any) -> None:
        """Count an error and log it with its traceback (the first 5, then every 100th)."""
        assert self.pipeline is not None
        self.pipeline.counts.errors += 1
        n = self.pipeline.counts.errors
        if n <= 5 or n % 100 == 0:
            logger.exception("%s (%d errors so far)", message % args, n)


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
           stdout: IO[str] | None = None, show: FrameView | None = None, progress: bool = False) -> dict[str, Any]:
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
