"""Frame sources: Pi CSI camera (picamera2), OpenCV VideoCapture (USB index, RTSP/HTTP URL, file), replay.

Every source yields ``Frame(index, timestamp, bgr)``. Sources are small subclasses registered under the ``type``
key of the config's ``camera.source`` section.

Live sources (``picamera2``, ``opencv``) read in a background thread into a one-slot buffer (a slow consumer
gets the newest frame; older ones are counted as dropped). A read error, an end of stream or a frame of the
wrong shape is counted; errors and ends reopen the camera with exponential backoff. A camera that delivers
nothing for ``stall_timeout_s`` is declared stalled: its reader thread is abandoned (a blocked driver call
cannot be interrupted) and a fresh one reopens the device. ``next()`` returns ``None`` while no frame
arrives, so the daemon's watchdog stops being fed and systemd restarts a daemon whose camera stays wedged.

The replay source reads a file synchronously, frame by frame, with timestamps taken from the file
(seconds from its start), either as fast as possible or paced at real time. Two replays of the same file
yield the same frames with the same timestamps.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import cv2
import numpy as np

from edgecam import EdgecamError

if TYPE_CHECKING:
    from edgecam.config import (
        LiveSourceConfig,
        OpenCVSourceConfig,
        PiCamera2SourceConfig,
        ReplaySourceConfig,
        SourceConfig,
    )

logger = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 40_000_000
"""Largest image ``read_image`` accepts (40 MP; an 8K frame is 33 MP)."""


TRUNCATED_FRACTION = 0.9
"""A replay that decodes fewer than this fraction of the frames its file announces is reported as truncated."""


class SourceError(EdgecamError):
    """A source that cannot be opened or read (names the device or file)."""


class EndOfStream(Exception):
    """The source has no more frames (replay reached the end of its file)."""


@dataclass(frozen=True)
class Frame:
    """One camera frame: running ``index`` from 0, ``timestamp`` in seconds, ``bgr`` uint8 (H, W, 3)."""

    index: int
    timestamp: float
    bgr: np.ndarray


@dataclass
class SourceStats:
    """Counters a source keeps; published in the daemon's stats."""

    frames: int = 0
    dropped: int = 0  # live: frames replaced in the buffer before the consumer took them
    bad_frames: int = 0  # wrong shape or dtype, skipped
    errors: int = 0  # read errors and unexpected ends
    reopens: int = 0
    stalls: int = 0
    last_error: str = ""


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to BGR uint8; SourceError naming the file when it is missing, empty or unusable."""
    if not path.is_file():
        raise SourceError(f"{path}: no such image file")
    data = np.fromfile(str(path), np.uint8)
    if data.size == 0:
        raise SourceError(f"{path}: empty file")
    try:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as e:  # a codec that is compiled in but switched off (OpenEXR), or one that fails
        raise SourceError(f"{path}: not an image OpenCV can decode ({str(e.err).split('.')[0]})") from None
    if bgr is None:
        raise SourceError(f"{path}: not an image OpenCV can decode")
    return check_image(bgr, str(path))


def check_image(bgr: np.ndarray, name: str) -> np.ndarray:
    """``bgr`` as (H, W, 3) uint8, or SourceError naming ``name`` when it is empty or too large."""
    h, w = bgr.shape[:2]
    if h == 0 or w == 0:
        raise SourceError(f"{name}: zero-size image ({w}x{h})")
    if h * w > MAX_IMAGE_PIXELS:
        raise SourceError(f"{name}: image {w}x{h} is larger than {MAX_IMAGE_PIXELS // 1_000_000} megapixels")
    return bgr


def to_bgr(image: Any) -> np.ndarray | None:
    """A driver's frame as contiguous BGR uint8 (H, W, 3), or None when its shape or dtype is unusable.

    Accepts grey (H, W), (H, W, 1), BGR (H, W, 3) and 4-channel XBGR/BGRA (H, W, 4, the 4th dropped).
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.size == 0:
        return None
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[:, :, :3])
    return None


class Source(ABC):
    """A stream of frames. ``open()``, then ``next(timeout)`` until EndOfStream, then ``close()``."""

    type: ClassVar[str]

    def __init__(self) -> None:
        self.stats = SourceStats()

    @abstractmethod
    def open(self) -> None:
        """Open the device or file; SourceError when it cannot be opened at all."""

    @abstractmethod
    def next(self, timeout: float) -> Frame | None:
        """The next frame, None when none arrived within ``timeout`` s; EndOfStream when there are no more."""

    @abstractmethod
    def close(self) -> None:
        """Release the device or file; safe to call twice."""

    @property
    def description(self) -> str:
        """What this source reads, for logs and errors (credentials in URLs masked by the log filter)."""
        return self.type


SOURCES: dict[str, type[Source]] = {}


def register_source(cls: type[Source]) -> type[Source]:
    """Class decorator: make a Source subclass available under its ``type`` key."""
    SOURCES[cls.type] = cls
    return cls


def make_source(cfg: SourceConfig) -> Source:
    """The Source for a ``camera.source`` config section, chosen by its ``type``."""
    try:
        cls = SOURCES[cfg.type]
    except KeyError:
        raise SourceError(f"camera.source.type '{cfg.type}' is not one of {sorted(SOURCES)}") from None
    return cls.from_config(cfg)  # type: ignore[attr-defined, no-any-return]


# ---------------------------------------------------------------------------------------------- live


class Backend(ABC):
    """One opened camera device: ``read()`` a raw frame (None when the device has none), ``close()``."""

    @abstractmethod
    def read(self) -> Any:
        """A raw frame (any array), or None at end of stream / when the device returned nothing."""

    @abstractmethod
    def close(self) -> None:
        """Release the device."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff between reopen attempts: ``initial_s`` doubling up to ``max_s``."""

    initial_s: float = 0.5
    max_s: float = 30.0

    @classmethod
    def from_config(cls, cfg: LiveSourceConfig) -> Backoff:
        """The backoff of a live ``camera.source`` section."""
        return cls(cfg.reconnect_initial_s, cfg.reconnect_max_s)

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (1, 2, ...)."""
        return float(min(self.max_s, self.initial_s * 2 ** max(0, failures - 1)))


class LiveSource(Source):
    """A camera read in a background thread, reopened with backoff on errors, ends and stalls."""

    def __init__(self, stall_timeout_s: float, backoff: Backoff) -> None:
        super().__init__()
        self.stall_timeout_s = stall_timeout_s
        self.backoff = backoff
        self._cond = threading.Condition()
        self._latest: tuple[float, np.ndarray] | None = None
        self._generation = 0
        self._closed = threading.Event()
        self._index = 0
        self._last_frame_at = 0.0
        self._failures = 0  # consecutive failed opens / reads / stalls since the last frame: the backoff step
        self._backoff_until = 0.0  # monotonic time the reader waits for before its next open (no stall till then)
        self._thread: threading.Thread | None = None

    @abstractmethod
    def open_backend(self) -> Backend:
        """Open the device; raise on failure (the reader thread retries with backoff)."""

    def open(self) -> None:
        """Start the reader thread; the first open happens there, so a missing camera is retried, not fatal."""
        self._closed.clear()
        self._last_frame_at = time.monotonic()
        self._start_reader()

    def _start_reader(self) -> None:
        with self._cond:
            self._generation += 1
            gen = self._generation
        self._thread = threading.Thread(target=self._reader, args=(gen,), name=f"source-{gen}", daemon=True)
        self._thread.start()

    def _current(self, gen: int) -> bool:
        return gen == self._generation and not self._closed.is_set()

    def _reader(self, gen: int) -> None:
        """Open, read until failure, close, back off; the failure count lives on the source, so the backoff keeps
        growing across stall restarts (a camera that is away) and restarts only once a frame arrives."""
        while self._current(gen):
            backend = self._try_open(gen)
            if backend is None:
                if self._current(gen):
                    self._failed()
                continue
            failed = self._read_until_failure(gen, backend)
            _close_quietly(backend)
            if self._current(gen):
                if failed:
                    self._failed()
                self.stats.reopens += 1

    def _failed(self) -> None:
        """One more failure: the next open waits ``backoff.delay(failures)`` (no stall is declared meanwhile)."""
        self._failures += 1
        self._backoff_until = time.monotonic() + self.backoff.delay(self._failures)

    def _try_open(self, gen: int) -> Backend | None:
        delay = self._backoff_until - time.monotonic()
        if self._failures and delay > 0:
            logger.warning("%s: reopening in %.1f s (attempt %d)", self.description, delay, self._failures + 1)
            if self._closed.wait(delay) or not self._current(gen):
                return None
        try:
            return self.open_backend()
        except Exception as e:  # drivers raise anything; count it and back off
            self._record_error(f"open failed: {e}")
            return None

    def _read_until_failure(self, gen: int, backend: Backend) -> int:
        """Read frames into the buffer until an error or end; returns the failure count to back off with."""
        while self._current(gen):
            try:
                raw = backend.read()
            except Exception as e:  # driver read errors
                self._record_error(f"read failed: {e}")
                return 1
            if raw is None:
                self._record_error("no frame (end of stream or device returned nothing)")
                return 1
            bgr = to_bgr(raw)
            if bgr is None:
                self.stats.bad_frames += 1
                logger.warning("%s: skipped a frame of shape %s dtype %s", self.description,
                               getattr(raw, "shape", None), getattr(raw, "dtype", type(raw).__name__))
                continue
            self._put(gen, bgr)
        return 0

    def _record_error(self, message: str) -> None:
        self.stats.errors += 1
        self.stats.last_error = message
        logger.warning("%s: %s", self.description, message)

    def _put(self, gen: int, bgr: np.ndarray) -> None:
        with self._cond:
            if gen != self._generation:
                return
            if self._latest is not None:
                self.stats.dropped += 1
            self._failures = 0
            self._latest = (time.time(), bgr)
            self._cond.notify()

    def next(self, timeout: float) -> Frame | None:
        """The newest frame, None when none arrived within ``timeout``; a stall restarts the reader."""
        with self._cond:
            if self._latest is None:
                self._cond.wait(timeout)
            item, self._latest = self._latest, None
        now = time.monotonic()
        if item is None:
            if now - self._last_frame_at > self.stall_timeout_s and now >= self._backoff_until:
                self._on_stall(now)  # not while the reader waits to reopen a camera that is away
            return None
        self._last_frame_at = now
        frame = Frame(self._index, item[0], item[1])
        self._index += 1
        self.stats.frames += 1
        return frame

    def _on_stall(self, now: float) -> None:
        self.stats.stalls += 1
        logger.warning("%s: no frame for %.1f s, reopening", self.description, now - self._last_frame_at)
        self._last_frame_at = now
        self._failed()
        self._start_reader()

    def close(self) -> None:
        """Stop the reader thread (it closes its device); safe to call twice."""
        self._closed.set()
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None


def _close_quietly(backend: Backend) -> None:
    try:
        backend.close()
    except Exception:  # a device that fails to close is already gone
        logger.debug("backend close failed", exc_info=True)


class CaptureBackend(Backend):
    """An opened ``cv2.VideoCapture``."""

    def __init__(self, cap: Any) -> None:
        self.cap = cap

    def read(self) -> Any:
        ok, frame = self.cap.read()
        return frame if ok else None

    def close(self) -> None:
        self.cap.release()


@register_source
class OpenCVSource(LiveSource):
    """OpenCV VideoCapture: a USB camera index, an RTSP/HTTP URL or a file (a file that ends is reopened)."""

    type = "opencv"

    def __init__(self, device: int | str, width: int | None = None, height: int | None = None,
                 fps: float | None = None, stall_timeout_s: float = 5.0, backoff: Backoff | None = None) -> None:
        super().__init__(stall_timeout_s, backoff or Backoff())
        self.device, self.width, self.height, self.fps = device, width, height, fps

    @classmethod
    def from_config(cls, cfg: OpenCVSourceConfig) -> OpenCVSource:
        """Build from a ``camera.source`` section with ``type: opencv``."""
        return cls(cfg.device, cfg.width, cfg.height, cfg.fps, cfg.stall_timeout_s, Backoff.from_config(cfg))

    @property
    def description(self) -> str:
        return f"opencv:{self.device}"

    def open_backend(self) -> Backend:
        timeout_ms = int(self.stall_timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        cap = cv2.VideoCapture(self.device, cv2.CAP_ANY, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.description}: VideoCapture cannot open it")
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, self.width), (cv2.CAP_PROP_FRAME_HEIGHT, self.height),
                            (cv2.CAP_PROP_FPS, self.fps)):
            if value:
                cap.set(prop, float(value))
        logger.info("%s: opened", self.description)
        return CaptureBackend(cap)


class PiCamera2Backend(Backend):
    """A started ``Picamera2`` camera."""

    def __init__(self, cam: Any) -> None:
        self.cam = cam

    def read(self) -> Any:
        return self.cam.capture_array("main")

    def close(self) -> None:
        try:
            self.cam.stop()
        finally:
            self.cam.close()


def import_picamera2() -> Any:
    """The ``picamera2.Picamera2`` class, imported only when a Pi camera is used."""
    try:
        from picamera2 import Picamera2
    except ImportError as e:
        raise SourceError(
            f"camera.source.type 'picamera2' needs the picamera2 package ({e}): on Raspberry Pi OS run "
            "'sudo apt install python3-picamera2' and create the venv with --system-site-packages") from None
    return Picamera2


@register_source
class PiCamera2Source(LiveSource):
    """A Raspberry Pi CSI camera through picamera2 (``RGB888`` format, which is BGR order in memory)."""

    type = "picamera2"

    def __init__(self, camera_num: int = 0, width: int = 1280, height: int = 720, fps: float | None = None,
                 stall_timeout_s: float = 5.0, backoff: Backoff | None = None) -> None:
        super().__init__(stall_timeout_s, backoff or Backoff())
        self.camera_num, self.width, self.height, self.fps = camera_num, width, height, fps

    @classmethod
    def from_config(cls, cfg: PiCamera2SourceConfig) -> PiCamera2Source:
        """Build from a ``camera.source`` section with ``type: picamera2``."""
        return cls(cfg.camera_num, cfg.width, cfg.height, cfg.fps, cfg.stall_timeout_s, Backoff.from_config(cfg))

    @property
    def description(self) -> str:
        return f"picamera2:{self.camera_num}"

    def open(self) -> None:
        """Import picamera2 first (a missing package is a config error, not a camera fault), then start."""
        import_picamera2()
        super().open()

    def open_backend(self) -> Backend:
        picamera2 = import_picamera2()
        cam = picamera2(self.camera_num)
        try:
            controls = {"FrameRate": float(self.fps)} if self.fps else {}
            config = cam.create_video_configuration(
                main={"size": (self.width, self.height), "format": "RGB888"}, controls=controls)
            cam.configure(config)
            cam.start()
        except Exception:
            cam.close()
            raise
        logger.info("%s: started %dx%d", self.description, self.width, self.height)
        return PiCamera2Backend(cam)


# ---------------------------------------------------------------------------------------------- replay


@register_source
class ReplaySource(Source):
    """A recorded file, read frame by frame with its own timestamps; ``speed`` ``max`` or ``realtime``."""

    type = "replay"

    def __init__(self, path: Path, speed: str = "max", max_frames: int = 0) -> None:
        super().__init__()
        if speed not in ("max", "realtime"):
            raise SourceError(f"replay speed '{speed}' is not one of max, realtime")
        self.path, self.speed, self.max_frames = Path(path), speed, max_frames
        self._cap: Any = None
        self._index = 0
        self._fps = 0.0
        self._announced = 0  # frame count in the file's header (0: unknown)
        self._first: tuple[np.ndarray, float] | None = None  # decoded by open(), returned by the first next()
        self._pace: tuple[float, float] | None = None  # (wall clock, file time) of the first frame

    @classmethod
    def from_config(cls, cfg: ReplaySourceConfig) -> ReplaySource:
        """Build from a ``camera.source`` section with ``type: replay``."""
        return cls(cfg.path, cfg.speed)

    @property
    def description(self) -> str:
        return f"replay:{self.path}"

    @property
    def frames_total(self) -> int:
        """Frames this replay will deliver as far as the file's header tells (0: unknown; after ``open()``)."""
        if self.max_frames:
            return min(self.max_frames, self._announced) if self._announced else self.max_frames
        return self._announced

    def open(self) -> None:
        """Open the file; SourceError when it is missing or not a video OpenCV can read."""
        if not self.path.is_file():
            raise SourceError(f"{self.path}: no such video file")
        if self.path.stat().st_size == 0:
            raise SourceError(f"{self.path}: empty file")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.path}: not a video OpenCV can read")
        self._cap, self._index, self._pace = cap, 0, None
        self._fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._announced = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        try:  # decode the first frame now: a file that opens but cannot be played fails before any output
            self._first = self._decode()
        except SourceError:
            self.close()
            raise
        if self._first is None:
            self.close()
            raise SourceError(f"{self.path}: no frame could be decoded (not a video, or truncated)")

    def _decode(self) -> tuple[np.ndarray, float] | None:
        """The next frame as checked BGR and its timestamp; None when the decoder has no more."""
        ok, raw = self._cap.read()
        if not ok:
            return None
        bgr = to_bgr(raw)
        if bgr is None:
            raise SourceError(f"{self.path}: frame {self._index} has unsupported shape/dtype")
        return check_image(bgr, str(self.path)), self._timestamp()

    def next(self, timeout: float = 0.0) -> Frame | None:
        """The next frame of the file (``timeout`` unused: a file never stalls); EndOfStream at the end."""
        if self._cap is None:
            raise SourceError(f"{self.path}: not open")
        if self.max_frames and self._index >= self.max_frames:
            raise EndOfStream
        item, self._first = self._first or self._decode(), None
        if item is None:
            if self._index < TRUNCATED_FRACTION * self._announced:
                raise SourceError(f"{self.path}: truncated or corrupt: decoding stopped after {self._index} of the "
                                  f"{self._announced} frames the file announces")
            raise EndOfStream
        frame = Frame(self._index, item[1], item[0])
        self._index += 1
        self.stats.frames += 1
        if self.speed == "realtime":
            self._wait_for(frame.timestamp)
        return frame

    def _timestamp(self) -> float:
        """Seconds from the start of the file: the decoder's position, or index / fps when it has none."""
        ms = float(self._cap.get(cv2.CAP_PROP_POS_MSEC))
        if ms > 0 or self._index == 0:
            return round(ms / 1000.0, 6)
        return round(self._index / self._fps, 6) if self._fps > 0 else float(self._index)

    def _wait_for(self, ts: float) -> None:
        if self._pace is None:
            self._pace = (time.monotonic(), ts)
        delay = self._pace[0] + (ts - self._pace[1]) - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def close(self) -> None:
        """Release the file; safe to call twice."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None
