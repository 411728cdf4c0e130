"""Where the daemon's results go, and the Protocols ``App`` sees them through.

- ``JsonLines``: events as JSON lines (stdout without a broker, ``--events FILE``).
- ``MqttEvents``: events, recognitions, snapshots and retained states to an ``EventPublisher``; a state goes
  out only when it changed, and each track's recognition (``<base>/recognized``) is said once, as is its visitor
  (``<base>/visitor``: "new visitor" / "visitor-17 again (4th time)", with the visitor's best crop).
- ``EventPublisher``: what the daemon needs of an MQTT publisher (``edgecam.mqtt.publish.Publisher``, or a
  fake in the tests); ``EventOutput``, ``FrameView``, ``ProgressView``: the other outputs and per-frame hooks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np

from edgecam import EdgecamError
from edgecam.mqtt.topics import DETECTION_STATE, FACES_STATE
from edgecam.track import Event, Track

if TYPE_CHECKING:
    from edgecam.pipeline import Pipeline
    from edgecam.sources import Frame
    from edgecam.visitors import VisitorStore


class EventPublisher(Protocol):
    """What ``App`` sends over MQTT (``Publisher`` has these; ``start``/``stop`` only for one ``App`` built)."""

    def publish_event(self, event: dict[str, Any], frame_time: float | None = None) -> int: ...

    def publish_recognition(self, payload: dict[str, Any], frame_time: float | None = None) -> None: ...

    def publish_snapshot(self, jpeg: bytes) -> None: ...

    def publish_state(self, name: str, value: bool | int | float | str) -> None: ...

    def publish_stats(self, stats: dict[str, Any]) -> None: ...

    def publish_discovery(self, people: list[str], visitors: bool = False) -> None: ...

    def publish_visitor(self, payload: dict[str, Any], crop: bytes | None = None,
                        frame_time: float | None = None) -> None: ...

    def on_command(self, callback: Callable[[str, bytes], None]) -> None: ...

    def status(self) -> dict[str, Any]: ...


class EventOutput(Protocol):
    """Receives every event (after the outbox has it); closed when the daemon stops."""

    def write(self, event: Event) -> None: ...

    def close(self) -> None: ...


class FrameView(EventOutput, Protocol):
    """An output that also sees every processed frame (``edgecam.tools.show.Show``)."""

    def frame(self, frame: Frame, pipeline: Pipeline, events: list[Event]) -> None: ...


class ProgressView(Protocol):
    """Called for every processed frame, closed when the worker ends (``edgecam.progress.Progress``)."""

    def frame(self, frame: Frame, pipeline: Pipeline) -> None: ...

    def close(self, pipeline: Pipeline | None = None) -> None: ...


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


class MqttEvents:
    """The daemon's side of MQTT: what an event, a frame's tracks or a command means for the publisher.

    Args:
        publisher: Where it goes.
        jpeg_quality: Of the snapshots.
        recognizer_runs: Whether a recognizer names faces (without one, every face is ``unknown`` at once).
    """

    def __init__(self, publisher: EventPublisher, jpeg_quality: int, recognizer_runs: bool) -> None:
        self.publisher, self.jpeg_quality, self.recognizer_runs = publisher, jpeg_quality, recognizer_runs
        self.people: list[str] = []
        self._states: dict[str, Any] = {}
        self._recognized: dict[str, str] = {}  # track id -> what was said of it on <base>/recognized
        self.visitors: VisitorStore | None = None  # the visitor store, when visitors are enabled
        self._visited: set[str] = set()  # track ids whose visitor was said on <base>/visitor

    def announce(self, people: list[str]) -> None:
        """The enrolled people (Home Assistant discovery, one presence state each; the visitor entities when
        visitors are enabled)."""
        self.people = list(people)
        if self.visitors is not None:
            self.publisher.publish_discovery(self.people, visitors=True)
        else:
            self.publisher.publish_discovery(self.people)

    def publish(self, event: Event, arrived: float) -> None:
        """One event (on disk first), its recognition if it says something new, and its snapshot."""
        self.publisher.publish_event(event.payload, frame_time=arrived)
        recognition = self.recognition(event.payload)
        if recognition is not None:
            self.publisher.publish_recognition(recognition, frame_time=arrived)
        visit = self.visit(event.payload)
        if visit is not None:
            self.publisher.publish_visitor(visit, self._visitor_crop(visit["visitor"]), frame_time=arrived)
        if event.image is not None:
            self.snapshot(event.image)

    def snapshot(self, bgr: np.ndarray) -> None:
        """Publish an image as the retained snapshot."""
        self.publisher.publish_snapshot(encode_jpeg(bgr, self.jpeg_quality))

    def recognition(self, payload: dict[str, Any]) -> dict[str, Any] | None:
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
                payload["frames"]["votes"] > 0 or not self.recognizer_runs)):
            what = "unknown"
        if what is None:
            return None
        if kind != "end":
            self._recognized[track] = name if what == "recognized" else "unknown"
        return {"event_type": what, "identity": name if what == "recognized" else "unknown",
                "camera": payload["camera"], "id": track, "timestamp": payload["timestamp"],
                "start": payload["start"], "scores": payload["scores"], "snapshot": payload.get("snapshot")}

    def visit(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """What an event says on ``<base>/visitor``, once per track: ``new_visitor`` or ``visitor_again`` as soon as
        the track was recorded as a visit (visitors enabled), with the visitor's dates and cameras."""
        track, visitor = payload["id"], payload.get("visitor")
        if self.visitors is None or not visitor or track in self._visited:
            if payload["type"] == "end":
                self._visited.discard(track)
            return None
        if payload["type"] != "end":
            self._visited.add(track)
        visits = int(payload["visits"])
        new = visits == 1
        out = {"event_type": "new_visitor" if new else "visitor_again", "visitor": visitor, "visits": visits,
               "message": f"new visitor {visitor}" if new else f"{visitor} again ({ordinal(visits)} time)",
               "camera": payload["camera"], "id": track, "timestamp": payload["timestamp"],
               "start": payload["start"], "snapshot": payload.get("snapshot")}
        try:
            v = self.visitors.get(visitor)
            out.update(first_seen=v.first_seen, last_seen=v.last_seen, cameras=v.cameras)
        except EdgecamError:  # forgotten in the meantime
            pass
        return out

    def _visitor_crop(self, visitor: str) -> bytes | None:
        try:
            return self.visitors.crop(visitor) if self.visitors is not None else None
        except EdgecamError:
            return None

    def publish_states(self, in_view: Iterable[Track]) -> None:
        """Faces in view and each enrolled person's presence, published when they change."""
        in_view = list(in_view)
        self.set_state(FACES_STATE, len(in_view))
        present = {t.identity[0] for t in in_view if t.identity[1] == "known"}
        for person in self.people:
            self.set_state(person, person in present)

    def set_state(self, name: str, value: bool | int | float | str) -> None:
        """Publish a retained state when it differs from what was published."""
        if self._states.get(name) != value:
            self._states[name] = value
            self.publisher.publish_state(name, value)

    def detection_echoed(self, enabled: bool) -> None:
        """The publisher echoed the detection state after its command: remember it without sending it again."""
        self._states[DETECTION_STATE] = enabled


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, 21st, ..."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
