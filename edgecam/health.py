"""The daemon's health: systemd readiness and watchdog, the status line, and the periodic stats.

READY once the first frame arrives (models are loaded by then; a broker that is away is not waited for),
WATCHDOG only while frames flow (a wedged camera gets the service restarted), STATUS and the stats message
every ``stats_interval_s``: to MQTT when there is a publisher, to the log otherwise.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from edgecam import EdgecamError, notify

if TYPE_CHECKING:
    from edgecam.outputs import EventPublisher
    from edgecam.pipeline import Pipeline
    from edgecam.sources import Frame, Source

logger = logging.getLogger(__name__)


class Health:
    """Reports on one running daemon.

    Args:
        camera: The camera name (READY's message).
        stats_interval_s: Seconds between two stats reports.
        pipeline, source: What the figures come from.
        publisher: Where stats go (None: the log); its status adds the broker figures.
        now: ``time.monotonic()`` when the worker started.
    """

    def __init__(self, camera: str, stats_interval_s: float, pipeline: Pipeline, source: Source,
                 publisher: EventPublisher | None, now: float) -> None:
        self.camera, self.stats_interval_s = camera, stats_interval_s
        self.pipeline, self.source, self.publisher = pipeline, source, publisher
        self.ready = False
        self.t_start = self._t_stats = now
        self.t_end = self._t_ping = 0.0
        self._frames_at_stats = 0
        self.visitors: Any = None  # the visitor store (visitors enabled): its figures go in the stats

    def tick(self, frame: Frame | None, now: float) -> None:
        """After each read: READY on the first frame, WATCHDOG while frames flow, stats when it is time."""
        if frame is not None:
            if not self.ready:
                self.ready = True
                notify.ready(f"camera {self.camera} up")
                logger.info("ready: first frame from %s", self.source.description)
            interval = notify.watchdog_interval()
            if interval and now - self._t_ping >= interval / 2:
                notify.watchdog()
                self._t_ping = now
        if now - self._t_stats >= self.stats_interval_s:
            self.report(now)

    def report(self, now: float) -> None:
        """The stats (with fps since the last report) to MQTT or the log, and systemd's STATUS line."""
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
        out = self.pipeline.stats((self.t_end or time.monotonic()) - self.t_start)
        s = self.source.stats
        out["source"] = {"frames": s.frames, "dropped": s.dropped, "bad_frames": s.bad_frames,
                         "errors": s.errors, "reopens": s.reopens, "stalls": s.stalls}
        if self.publisher is not None:
            st = self.publisher.status()
            out.update(queue_depth=st.get("queued", 0), dropped_events=st.get("dropped", 0),
                       broker_connected=bool(st.get("connected")), broker_ever_connected=bool(st.get("ever_connected")),
                       broker_error=st.get("last_error"), latency_ms=st.get("latency_ms"))
        if self.visitors is not None:
            try:
                out["visitors"] = self.visitors.stats()
            except EdgecamError as e:
                logger.warning("visitor store figures: %s", e)
        return out
