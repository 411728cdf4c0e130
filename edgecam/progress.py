"""Replay progress on stderr: a bar with an ETA on a terminal, a plain stats line now and then otherwise.

``edgecam replay`` feeds ``Progress.frame(frame, pipeline)`` for every frame (through ``edgecam.app.App``)::

    corridor.mp4 [##########----------]  50%  38/76 frames  212 fps  ETA 0:00  3 tracks  12 events

On a terminal the line is redrawn in place (at most ``redraw_s`` apart) and ends with a newline at ``close()``.
Elsewhere (a log file, journald, a pipe) a plain line goes to the log every ``interval_s`` seconds instead.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from typing import IO, Any

logger = logging.getLogger(__name__)


def eta_text(seconds: float | None) -> str:
    """``0:42``, ``1:02:03``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Progress of a replay of ``total`` frames (0: unknown) named ``name``.

    Args:
        name: what is replayed (the file name).
        total: frames the file announces (0 when unknown: no bar, no ETA).
        stream: where the bar goes (default ``sys.stderr``).
        tty: draw a bar (default: whether ``stream`` is a terminal).
        interval_s: seconds between plain lines when not drawing a bar.
        redraw_s: least seconds between two redraws of the bar.
    """

    def __init__(self, name: str, total: int, stream: IO[str] | None = None, tty: bool | None = None,
                 interval_s: float = 10.0, redraw_s: float = 0.1) -> None:
        self.name, self.total = name, max(0, int(total))
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval_s, self.redraw_s = interval_s, redraw_s
        self.frames = 0
        self._t0 = time.monotonic()
        self._shown = float("-inf") if self.tty else self._t0  # plain lines: the first after interval_s
        self._drawn = False

    def frame(self, frame: Any, pipeline: Any) -> None:
        """A processed frame; redraws or logs when it is time."""
        self.frames = frame.index + 1
        now = time.monotonic()
        if now - self._shown >= (self.redraw_s if self.tty else self.interval_s):
            self._shown = now
            self.show(pipeline)

    def text(self, pipeline: Any, width: int = 100) -> str:
        """The progress line for ``pipeline``'s figures, at most ``width`` characters."""
        elapsed = max(1e-6, time.monotonic() - self._t0)
        fps = self.frames / elapsed
        tracks, events = pipeline.tracker.confirmed_total, pipeline.counts.events
        done = min(1.0, self.frames / self.total) if self.total else None
        eta = (self.total - self.frames) / fps if done is not None and fps > 0 else None
        count = f"{self.frames}/{self.total} frames" if self.total else f"{self.frames} frames"
        tail = f"{count}  {fps:.0f} fps  ETA {eta_text(eta)}  {tracks} tracks  {events} events"
        if done is None:
            return f"{self.name}  {tail}"[:width]
        bar_w = max(10, min(30, width - len(self.name) - len(tail) - 12))
        fill = int(round(done * bar_w))
        return f"{self.name} [{'#' * fill}{'-' * (bar_w - fill)}] {done * 100:3.0f}%  {tail}"[:width]

    def show(self, pipeline: Any) -> None:
        """Redraw the bar (terminal) or log a plain line."""
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r" + self.text(pipeline, width) + "\x1b[K")
            self.stream.flush()
            self._drawn = True
        else:
            logger.info("replay: %s", self.text(pipeline, 200))

    def close(self, pipeline: Any | None = None) -> None:
        """The last state of the bar and a newline (terminal); nothing otherwise."""
        if self.tty and pipeline is not None:
            self.show(pipeline)
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
