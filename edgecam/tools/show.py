"""Show what the pipeline saw: ``edgecam replay VIDEO --annotate OUT.mp4 --report OUT.html``.

``Show`` rides along with the daemon (``edgecam.app.App``): it is one of its outputs (``write(event)`` for
every event, ``close()`` when the app stops) and sees every processed frame (``frame(frame, pipeline,
events)``). ``Annotator`` writes the video with each face drawn: box (colour by the track's voted status,
grey while the track is tentative), the 4 landmarks, ``#track identity score`` and the quality-gate verdict;
a confirmed track that the detector did not see on a frame (the motion gate skipped it, or a short miss) is
drawn thin at its last box. A status line (frame, time, whether the detector ran) sits in a band above the
picture, so it never covers a face; the latest events are listed at the bottom. ``.webm`` is VP8 (every
browser plays it; every OpenCV wheel writes it), ``.mp4`` H.264 when the OpenCV build has an encoder for it
(the PyPI wheels do not: then mp4v, which browsers do not play, with a warning), ``.avi`` Motion JPEG.
``Report`` writes one HTML page: the stats, the annotated video when there is one, a timeline of the tracks
with their events (inline SVG), and per track the best crop (enlarged when tiny) and the whole frame it came
from (JPEG files in ``OUT_files/`` next to the page) and its events.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgecam import EdgecamError
from edgecam.pipeline import STAGES, Pipeline
from edgecam.sources import Frame
from edgecam.track import Event, Observation, Track

logger = logging.getLogger(__name__)

VIDEO_CODECS = {".webm": ("VP80", "VP90"), ".mp4": ("avc1", "mp4v"), ".avi": ("MJPG",)}
"""Annotated video containers and the OpenCV fourccs tried in order (the first this OpenCV build can write wins).
Browsers play ``.webm`` (VP8/VP9) and H.264 ``.mp4``; the PyPI OpenCV wheels have no H.264 encoder."""
BROWSER_FOURCCS = {"VP80", "VP90", "avc1"}

STATUS_COLORS = {"known": (80, 200, 60), "uncertain": (0, 210, 255), "unknown": (0, 140, 255)}  # BGR
TENTATIVE_COLOR = (160, 160, 160)
LANDMARK_COLORS = ((255, 120, 0), (255, 120, 0), (0, 0, 255), (200, 0, 200))  # eyes, nose, mouth (BGR)
EVENT_HOLD_S = 1.5  # an event stays listed on the video this long
FONT = cv2.FONT_HERSHEY_SIMPLEX
CROP_MIN_PX = 96  # the report shows a best crop at least this tall (tiny faces enlarged)
FRAME_MAX_PX = 640  # the report's full-frame snapshot, longer side at most


def short_id(track_id: str) -> str:
    """``3f9c2a1b-00002`` -> ``#2`` (the run prefix is the same for every track of a replay)."""
    tail = track_id.rsplit("-", 1)[-1]
    return f"#{int(tail)}" if tail.isdigit() else f"#{tail}"


# ---------------------------------------------------------------------------------------------- drawing


def _text(img: np.ndarray, text: str, org: tuple[int, int], color: tuple[int, int, int], scale: float) -> None:
    """Text with a dark background box, its top-left corner at ``org`` (clipped into the image)."""
    th = max(1, round(scale * 2))
    (w, h), base = cv2.getTextSize(text, FONT, scale, th)
    x = int(min(max(0, org[0]), max(0, img.shape[1] - w - 2)))
    y = int(min(max(0, org[1]), max(0, img.shape[0] - h - base - 2)))
    cv2.rectangle(img, (x, y), (x + w + 2, y + h + base + 2), (0, 0, 0), -1)
    cv2.putText(img, text, (x + 1, y + h + 1), FONT, scale, color, th, cv2.LINE_AA)


def draw_face(img: np.ndarray, ob: Observation, scale: float) -> None:
    """One detection: box, landmarks, ``#track identity score``, and the quality verdict when it failed."""
    t = ob.track
    name, status, share = t.identity
    color = STATUS_COLORS.get(status, TENTATIVE_COLOR) if t.confirmed else TENTATIVE_COLOR
    x1, y1, x2, y2 = (int(round(float(v))) for v in ob.box[:4])
    cv2.rectangle(img, (x1, y1), (x2, y2), color, 2 if t.confirmed else 1, cv2.LINE_AA)
    r = max(2, round(2 * scale))
    for (x, y), c in zip(ob.landmarks, LANDMARK_COLORS, strict=True):
        cv2.circle(img, (int(round(float(x))), int(round(float(y)))), r, c, -1, cv2.LINE_AA)
    who = f"{name} {share:.2f}" if status == "known" else status if t.confirmed else "?"
    label = f"{short_id(t.id)} {who} det {float(ob.box[4]):.2f}"
    _text(img, label, (x1, y1 - round(18 * scale)), color, 0.45 * scale)
    if ob.quality is not None and not ob.quality.ok:
        _text(img, f"crop: {ob.quality.reason}", (x1, y2 + 2), TENTATIVE_COLOR, 0.4 * scale)


def draw_held(img: np.ndarray, track: Track, scale: float) -> None:
    """A confirmed track the detector did not see on this frame: a thin box at its last place, ``(held)``."""
    name, status, _ = track.identity
    color = STATUS_COLORS.get(status, TENTATIVE_COLOR)
    x1, y1, x2, y2 = (int(round(float(v))) for v in track.box[:4])
    cv2.rectangle(img, (x1, y1), (x2, y2), color, 1, cv2.LINE_AA)
    who_ = name if status == "known" else status
    _text(img, f"{short_id(track.id)} {who_} (held)", (x1, y1 - round(18 * scale)), color, 0.45 * scale)


def status_band(scale: float) -> int:
    """Height in pixels of the band above the picture that holds the status line (even, for the codecs)."""
    return 2 * round(11 * scale) + 2


def draw_status(img: np.ndarray, frame: Frame, detected: bool, faces: int, scale: float) -> None:
    """The status line in the band at the top: frame, time, whether the detector ran (motion gate), faces."""
    state = f"detector ran, {faces} face(s)" if detected else "no motion: detector skipped"
    _text(img, f"frame {frame.index}  t={frame.timestamp:.2f}s  {state}", (4, 2), (255, 255, 255), 0.45 * scale)


def draw_events(img: np.ndarray, recent: list[tuple[float, str]], scale: float) -> None:
    """The latest events, newest at the bottom left."""
    line = round(20 * scale)
    for i, (_, text) in enumerate(recent[-4:][::-1]):
        _text(img, text, (4, img.shape[0] - (i + 1) * line - 4), (255, 255, 255), 0.45 * scale)


def event_line(payload: dict[str, Any]) -> str:
    """``NEW #2 alice``, ``UPDATE #3 bob? (uncertain)`` or ``END #4 unknown`` for one event payload."""
    return f"{payload['type'].upper()} {short_id(payload['id'])} {who(payload)}"


def who(payload: dict[str, Any]) -> str:
    """An event's identity in words: ``alice``, ``bob? (uncertain)`` or ``unknown``."""
    status, name = payload["status"], payload["identity"]
    return str(name) if status == "known" else f"{name}? (uncertain)" if status == "uncertain" else "unknown"


def identity_text(payload: dict[str, Any]) -> str:
    """``alice (3 of 4 votes)``, ``bob? (uncertain) (2 of 4 votes)``, ``unknown (5 of 5 votes)`` or, when the
    recognizer never voted, ``unknown (not recognized)``."""
    votes = int(payload.get("frames", {}).get("votes", 0))
    if not votes:
        return f"{who(payload)} (not recognized)"
    share = float(payload.get("scores", {}).get("identity", 0.0))
    return f"{who(payload)} ({round(share * votes)} of {votes} votes)"


class Annotator:
    """Writes ``path`` (``.webm``, ``.mp4`` or ``.avi``): every processed frame with its faces and events drawn.

    Args:
        path: output video; its folder must exist.
        fps: frame rate written into the file (the source's).
    """

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps = Path(path), fps if fps > 0 else 25.0
        if self.path.suffix.lower() not in VIDEO_CODECS:
            raise EdgecamError(f"--annotate {self.path}: want a .webm (VP8, plays in browsers), .mp4 or .avi file name")
        _check_folder(self.path, "--annotate")
        self.writer: Any = None
        self.fourcc = ""
        self.frames = 0
        self.recent: list[tuple[float, str]] = []

    def frame(self, frame: Frame, observations: list[Observation], events: list[Event], detected: bool,
              held: list[Track] | None = None) -> None:
        """Draw and write one frame; ``held``: confirmed tracks not seen on it (drawn thin at their last box)."""
        img = frame.bgr
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        scale = max(0.8, img.shape[0] / 360)
        band = status_band(scale)
        canvas = np.zeros((img.shape[0] + band, img.shape[1], 3), np.uint8)
        canvas[band:] = img
        pic = canvas[band:]  # a view: drawing on it draws on the canvas
        for track in held or []:
            draw_held(pic, track, scale)
        for ob in observations:
            draw_face(pic, ob, scale)
        draw_status(canvas[:band], frame, detected, len(observations), scale)
        self.recent = [(t, s) for t, s in self.recent if frame.timestamp - t < EVENT_HOLD_S]
        self.recent += [(frame.timestamp, event_line(e.payload)) for e in events]
        draw_events(pic, self.recent, scale)
        self._write(canvas)

    def _write(self, img: np.ndarray) -> None:
        if self.writer is None:
            self.writer, self.fourcc = _open_writer(self.path, self.fps, (img.shape[1], img.shape[0]))
        self.writer.write(img)
        self.frames += 1

    def close(self) -> None:
        """Finish the file."""
        if self.writer is not None:
            self.writer.release()
            self.writer = None


def _open_writer(path: Path, fps: float, size: tuple[int, int]) -> tuple[Any, str]:
    """A ``cv2.VideoWriter`` with the first fourcc of ``path``'s container this OpenCV build writes."""
    for fourcc in VIDEO_CODECS[path.suffix.lower()]:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, size)
        if writer.isOpened():
            if path.suffix.lower() == ".mp4" and fourcc not in BROWSER_FOURCCS:
                logger.warning("--annotate %s: this OpenCV build has no H.264 encoder, so the file is %s, which "
                               "browsers do not play; name it .webm for a video that plays in a browser", path, fourcc)
            return writer, fourcc
        writer.release()
    raise EdgecamError(f"--annotate {path}: OpenCV cannot write this video file "
                       f"(tried {', '.join(VIDEO_CODECS[path.suffix.lower()])})")


def _check_folder(path: Path, option: str) -> None:
    if not path.parent.is_dir():
        raise EdgecamError(f"{option} {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise EdgecamError(f"{option} {path}: is a folder, want a file name")


# ---------------------------------------------------------------------------------------------- report


@dataclass
class TrackRecord:
    """What the report keeps of one track: its events and its best crop so far."""

    id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    best: np.ndarray | None = None
    image: str | None = None  # file name of the best crop, once written
    frame: np.ndarray | None = None  # the whole frame the best crop came from (downscaled, box drawn)
    frame_index: int = -1  # index of that frame (the latest snapshot's)
    frame_image: str | None = None  # its file name, once written

    @property
    def last(self) -> dict[str, Any]:
        return self.events[-1]


class Report:
    """Collects events and best crops; ``write_html(stats)`` writes the page and its images.

    Args:
        path: the ``.html`` file; the best crops go to ``<stem>_files/`` beside it.
        video: the replayed file (named on the page).
        annotated: the annotated video of the same replay, shown and linked on the page (None: none).
    """

    def __init__(self, path: Path, video: Path, annotated: Path | None = None) -> None:
        self.path, self.video, self.annotated = Path(path), Path(video), annotated
        if self.path.suffix.lower() not in (".html", ".htm"):
            raise EdgecamError(f"--report {self.path}: want a .html file name")
        _check_folder(self.path, "--report")
        self.files = self.path.with_name(self.path.stem + "_files")
        self.tracks: dict[str, TrackRecord] = {}
        self.best_frames: dict[str, tuple[int, np.ndarray]] = {}  # track id -> (index, frame) of its best crop
        self.duration = 0.0
        self.frames = 0

    def event(self, event: Event) -> None:
        """Keep an event (and its snapshot, the track's best crop so far)."""
        rec = self.tracks.setdefault(event.payload["id"], TrackRecord(event.payload["id"]))
        rec.events.append(event.payload)
        if event.image is not None:
            rec.best = event.image
            rec.frame_index = int((event.payload.get("snapshot") or {}).get("frame", -1))
            index, full = self.best_frames.get(rec.id, (-2, None))
            if index == rec.frame_index:
                rec.frame = full

    def best_frame(self, track_id: str, index: int, bgr: np.ndarray, box: np.ndarray) -> None:
        """Keep the whole frame ``index`` that a track's best crop was just taken from (downscaled, box drawn)."""
        f = min(1.0, FRAME_MAX_PX / max(bgr.shape[:2]))
        small = cv2.resize(bgr, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else bgr.copy()
        if small.ndim == 2:
            small = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
        x1, y1, x2, y2 = (int(round(float(v) * f)) for v in box[:4])
        cv2.rectangle(small, (x1, y1), (x2, y2), (0, 140, 255), 2, cv2.LINE_AA)
        self.best_frames[track_id] = (index, small)
        rec = self.tracks.get(track_id)
        if rec is not None and rec.frame_index == index:  # its event came first (same frame)
            rec.frame = small

    def forget_frames(self, alive: set[str]) -> None:
        """Drop the kept frames of tracks that ended (their events, if any, already took theirs)."""
        for track_id in [t for t in self.best_frames if t not in alive]:
            del self.best_frames[track_id]

    def seen(self, frame: Frame) -> None:
        """Note a processed frame (the timeline spans them all)."""
        self.duration, self.frames = max(self.duration, frame.timestamp), self.frames + 1

    def write_html(self, stats: dict[str, Any]) -> Path:
        """Write the best crops and the page; the page's path."""
        self.files.mkdir(exist_ok=True)
        for old in self.files.glob("[0-9][0-9][0-9]_*.jpg"):  # crops of an earlier report at the same path
            old.unlink()
        for i, rec in enumerate(self.tracks.values()):
            stem = f"{i:03d}_{re.sub(r'[^A-Za-z0-9_-]', '_', rec.id)}"
            if rec.best is not None:
                rec.image = self._write_jpeg(f"{stem}.jpg", rec.best)
            if rec.frame is not None:
                rec.frame_image = self._write_jpeg(f"{stem}_frame.jpg", rec.frame)
        self.path.write_text(self.render(stats), encoding="utf-8")
        return self.path

    def _write_jpeg(self, name: str, bgr: np.ndarray) -> str:
        if not cv2.imwrite(str(self.files / name), bgr):
            raise EdgecamError(f"--report: cannot write {self.files / name}")
        return name

    def render(self, stats: dict[str, Any]) -> str:
        """The whole page (XHTML-compatible HTML5: every element closed, attributes quoted)."""
        e = html.escape
        title = f"edgecam replay report: {self.video.name}"
        parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8" />',
                 f"<title>{e(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>", f"<h1>{e(title)}</h1>",
                 f"<p>{e(str(self.video))}: {self.frames} frames, {self.duration:.1f} s, "
                 f"{len(self.tracks)} tracks, {sum(len(t.events) for t in self.tracks.values())} events.</p>",
                 *self.video_section(),
                 "<h2>Timeline</h2>", self.timeline_svg(), "<h2>Tracks</h2>", self.tracks_table(),
                 "<h2>Events</h2>", self.events_table(), "<h2>Stats</h2>", stats_table(stats),
                 "</body>", "</html>"]
        return "\n".join(parts) + "\n"

    def timeline_svg(self, width: int = 900, row: int = 22, left: int = 190) -> str:
        """One row per track: a bar from its first to its last sighting, a tick per event."""
        span = max(self.duration, 1e-3)
        height = row * len(self.tracks) + 30

        def x(t: float) -> float:
            return round(left + (width - left - 10) * min(max(t / span, 0.0), 1.0), 1)

        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
               f'viewBox="0 0 {width} {height}" role="img" aria-label="track timeline">']
        for k in range(0, 11):
            t = span * k / 10
            out.append(f'<line x1="{x(t)}" y1="0" x2="{x(t)}" y2="{height - 18}" class="grid" />'
                       f'<text x="{x(t)}" y="{height - 4}" class="axis">{t:.1f}s</text>')
        for i, rec in enumerate(self.tracks.values()):
            out += _timeline_row(rec, i * row + 4, row, x)
        out.append("</svg>")
        return "\n".join(out)

    def video_section(self) -> list[str]:
        """The annotated video of this replay, playable on the page and linked (nothing without one)."""
        if self.annotated is None:
            return []
        e = html.escape
        rel = os.path.relpath(Path(self.annotated).resolve(), self.path.resolve().parent)
        return ["<h2>Annotated video</h2>",
                f'<video controls="controls" preload="metadata" src="{e(rel)}" class="annotated"></video>',
                f'<p><a href="{e(rel)}">{e(rel)}</a> (boxes, landmarks, track ids and events drawn)</p>']

    def tracks_table(self) -> str:
        """Per track: best crop (enlarged when tiny), the frame it came from, identity, times, counts, events."""
        rows = ['<table class="tracks"><tr><th>best crop</th><th>frame</th><th>track</th><th>identity</th>'
                "<th>seen</th><th>detections / votes</th><th>best detection</th><th>events</th></tr>"]
        for rec in self.tracks.values():
            last, e = rec.last, html.escape
            img = (f'<img src="{e(self.files.name)}/{e(rec.image)}" class="crop" alt="best crop of '
                   f'{e(short_id(rec.id))}" />' if rec.image else "-")
            full = (f'<a href="{e(self.files.name)}/{e(rec.frame_image)}"><img src="{e(self.files.name)}/'
                    f'{e(rec.frame_image)}" class="frame" alt="the frame of the best crop of '
                    f'{e(short_id(rec.id))}" /></a>' if rec.frame_image else "-")
            end = last["end"] if last["end"] is not None else last["timestamp"]
            snap = last.get("snapshot") or {}
            kinds = ", ".join(f"{ev['type']} {float(ev['timestamp']):.2f}s" for ev in rec.events)
            rows.append(f"<tr><td>{img}</td><td>{full}</td><td title=\"{e(rec.id)}\">{e(short_id(rec.id))}</td>"
                        f"<td>{e(identity_text(last))}</td>"
                        f"<td>{float(last['start']):.2f}-{float(end):.2f} s</td>"
                        f"<td>{last['frames']['hits']} / {last['frames']['votes']}</td>"
                        f"<td>{snap.get('score', '-')} (frame {snap.get('frame', '-')})</td><td>{e(kinds)}</td></tr>")
        rows.append("</table>")
        return "\n".join(rows)

    def events_table(self) -> str:
        """Every event in time order."""
        evs = sorted((ev for rec in self.tracks.values() for ev in rec.events),
                     key=lambda ev: (float(ev["timestamp"]), ev["id"], ev["seq"]))
        rows = ['<table class="events"><tr><th>time</th><th>frame</th><th>event</th><th>box</th></tr>']
        for ev in evs:
            rows.append(f"<tr><td>{float(ev['timestamp']):.2f} s</td><td>{ev['frame']}</td>"
                        f"<td>{html.escape(event_line(ev))}</td><td>{html.escape(str(ev['box']))}</td></tr>")
        rows.append("</table>")
        return "\n".join(rows)


def _timeline_row(rec: TrackRecord, y: int, row: int, x: Callable[[float], float]) -> list[str]:
    """SVG elements of one track's timeline row: label, bar (coloured by status), event ticks."""
    last = rec.last
    start, end = float(last["start"]), float(last["end"] if last["end"] is not None else last["timestamp"])
    b, g, r = STATUS_COLORS.get(last["status"], TENTATIVE_COLOR)
    label = html.escape(f"{short_id(rec.id)} {who(last)}")
    out = [f'<text x="4" y="{y + 13}" class="label">{label}</text>',
           f'<rect x="{x(start)}" y="{y + 2}" width="{max(2.0, round(x(end) - x(start), 1))}" height="{row - 8}" '
           f'fill="#{r:02x}{g:02x}{b:02x}" />']
    for ev in rec.events:
        t = float(ev["timestamp"])
        out.append(f'<line x1="{x(t)}" y1="{y}" x2="{x(t)}" y2="{y + row - 4}" class="ev-{html.escape(ev["type"])}">'
                   f"<title>{html.escape(event_line(ev))} at {t:.2f}s</title></line>")
    return out


def stats_table(stats: dict[str, Any]) -> str:
    """The replay's counters and the ms per frame of each stage."""
    e = html.escape
    keys = ("frames", "fps", "frames_skipped_motion", "detector_runs", "faces", "crops_passed_quality",
            "crops_recognized", "recognizer_pixel_fraction", "events", "errors")
    rows = ['<table class="stats"><tr><th>figure</th><th>value</th></tr>']
    rows += [f"<tr><td>{e(k)}</td><td>{e(str(stats[k]))}</td></tr>" for k in keys if k in stats]
    per_frame = stats.get("stage_ms_per_frame", {})
    rows += [f"<tr><td>{e(s)} ms/frame</td><td>{per_frame[s]}</td></tr>" for s in STAGES if s in per_frame]
    rows.append("</table>")
    rows.append(f"<details><summary>all stats (JSON)</summary><pre>{e(json.dumps(stats, indent=2))}</pre></details>")
    return "\n".join(rows)


CSS = ("body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}"
       "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:middle}"
       "img.crop{height:128px;width:auto}img.frame{max-width:320px;max-height:180px}"
       "video.annotated{max-width:100%}.grid{stroke:#ddd}.axis{font-size:10px;fill:#666;text-anchor:middle}"
       ".label{font-size:12px;fill:#222}.ev-new{stroke:#000;stroke-width:2}.ev-update{stroke:#555}"
       ".ev-end{stroke:#000;stroke-width:2;stroke-dasharray:2,2}")


# ---------------------------------------------------------------------------------------------- together


class Show:
    """The replay's annotated video and/or HTML report, fed by ``App`` (an output plus a frame hook).

    Args:
        video: the replayed file (its frame rate goes into the annotated video).
        annotate: annotated video to write, or None.
        report: HTML report to write, or None.
    """

    def __init__(self, video: Path, annotate: Path | None = None, report: Path | None = None) -> None:
        fps = _video_fps(video)
        self.annotator = Annotator(annotate, fps) if annotate is not None else None
        self.report = Report(report, video, annotate) if report is not None else None
        self._runs = 0

    def write(self, event: Event) -> None:
        """An event from the app (every one, ``end`` events of the final flush included)."""
        if self.report is not None:
            self.report.event(event)

    def frame(self, frame: Frame, pipeline: Pipeline, events: list[Event]) -> None:
        """A processed frame: draw it with what the pipeline found on it."""
        detected = pipeline.counts.detector_runs != self._runs
        self._runs = pipeline.counts.detector_runs
        observations = pipeline.last_observations if detected else []
        seen = {id(ob.track) for ob in observations}
        held = [t for t in pipeline.tracker.in_view() if id(t) not in seen]
        if self.annotator is not None:
            self.annotator.frame(frame, observations, events, detected, held)
        if self.report is not None:
            self.report.seen(frame)
            for ob in observations:
                if ob.track.best.get("frame") == frame.index:
                    self.report.best_frame(ob.track.id, frame.index, frame.bgr, ob.box)
            self.report.forget_frames({t.id for t in pipeline.tracker.tracks})

    def close(self) -> None:
        """Finish the video file (the app calls this when it stops)."""
        if self.annotator is not None:
            self.annotator.close()

    def finish(self, stats: dict[str, Any]) -> list[Path]:
        """After the replay: close the video, write the report; the files written."""
        self.close()
        out = []
        if self.annotator is not None:
            out.append(self.annotator.path)
            logger.info("annotated video: %s (%d frames)", self.annotator.path, self.annotator.frames)
        if self.report is not None:
            out.append(self.report.write_html(stats))
            logger.info("report: %s (best crops in %s)", self.report.path, self.report.files)
        return out


def _video_fps(video: Path) -> float:
    """The file's frame rate (0 when unknown or unreadable: the replay itself reports a bad file)."""
    cap = cv2.VideoCapture(str(video))
    try:
        return float(cap.get(cv2.CAP_PROP_FPS) or 0.0) if cap.isOpened() else 0.0
    finally:
        cap.release()
