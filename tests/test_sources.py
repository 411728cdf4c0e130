"""Frame sources: images, replay (timestamps from the file, determinism, pacing), OpenCV reconnect, stalls,
bad frames, and picamera2 against a fake module that follows its documented API."""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import wait_until

from edgecam.config import OpenCVSourceConfig, PiCamera2SourceConfig
from edgecam.sources import (
    Backend,
    Backoff,
    EndOfStream,
    LiveSource,
    OpenCVSource,
    PiCamera2Source,
    ReplaySource,
    SourceError,
    check_image,
    make_source,
    read_image,
    to_bgr,
)


def write_clip(path: Path, frames: int = 20, fps: float = 10.0, size: tuple[int, int] = (160, 120)) -> Path:
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert out.isOpened()
    for i in range(frames):
        img = np.full((size[1], size[0], 3), 30, np.uint8)
        cv2.rectangle(img, (5 * i, 20), (5 * i + 30, 60), (255, 255, 255), -1)
        out.write(img)
    out.release()
    return path


def drain(src: ReplaySource) -> list[Any]:
    frames = []
    while True:
        try:
            frames.append(src.next())
        except EndOfStream:
            return frames


# ---------------------------------------------------------------------------------------------- images


def test_read_image_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such image"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(SourceError, match="empty.jpg: empty file"):
        read_image(tmp_path / "empty.jpg")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(SourceError, match="text.png: not an image"):
        read_image(tmp_path / "text.png")


def test_read_image_ok(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.full((10, 20, 3), 7, np.uint8))
    img = read_image(tmp_path / "a.png")
    assert img.shape == (10, 20, 3) and img.dtype == np.uint8


def test_check_image_rejects_huge_and_empty() -> None:
    with pytest.raises(SourceError, match="8000x8000 is larger than 40 megapixels"):
        check_image(np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (8000, 8000, 3)), "big.png")
    with pytest.raises(SourceError, match="zero-size"):
        check_image(np.zeros((0, 10, 3), np.uint8), "z.png")


def test_to_bgr_formats() -> None:
    assert to_bgr(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)  # type: ignore[union-attr]
    assert to_bgr(np.zeros((4, 5, 1), np.uint8)).shape == (4, 5, 3)  # type: ignore[union-attr]
    assert to_bgr(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)  # type: ignore[union-attr]
    assert to_bgr(np.zeros((4, 5, 3), np.float32)) is None
    assert to_bgr(np.zeros((4, 5, 2), np.uint8)) is None
    assert to_bgr(None) is None and to_bgr(np.zeros((0, 5, 3), np.uint8)) is None


# ---------------------------------------------------------------------------------------------- replay


def test_replay_timestamps_come_from_the_file(tmp_path: Path) -> None:
    src = ReplaySource(write_clip(tmp_path / "c.mp4", frames=20, fps=10))
    src.open()
    frames = drain(src)
    src.close()
    assert [f.index for f in frames] == list(range(20))
    assert [f.timestamp for f in frames] == pytest.approx([i / 10 for i in range(20)])
    assert frames[0].bgr.shape == (120, 160, 3) and src.stats.frames == 20


def test_replay_is_deterministic(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4")
    runs = []
    for _ in range(2):
        src = ReplaySource(clip)
        src.open()
        runs.append(drain(src))
        src.close()
    assert [(f.index, f.timestamp) for f in runs[0]] == [(f.index, f.timestamp) for f in runs[1]]
    assert all(np.array_equal(a.bgr, b.bgr) for a, b in zip(*runs, strict=True))


def test_replay_realtime_paces_to_the_file(tmp_path: Path) -> None:
    src = ReplaySource(write_clip(tmp_path / "c.mp4", frames=6, fps=10), speed="realtime")
    src.open()
    t0 = time.monotonic()
    drain(src)
    assert 0.45 <= time.monotonic() - t0 < 2.0  # 6 frames at 10 fps: last one at 0.5 s


def test_replay_max_frames(tmp_path: Path) -> None:
    src = ReplaySource(write_clip(tmp_path / "c.mp4"), max_frames=5)
    src.open()
    assert len(drain(src)) == 5


@pytest.mark.parametrize(("content", "message"), [(None, "no such video"), (b"", "empty file"),
                                                  (b"this is not a video\n" * 10, "not a video")])
def test_replay_bad_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "bad.mp4"
    if content is not None:
        path.write_bytes(content)
    src = ReplaySource(path)
    with pytest.raises(SourceError, match=message) as info:
        src.open()
        src.next()
    assert "bad.mp4" in str(info.value)


def test_replay_bad_speed(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="speed 'fast'"):
        ReplaySource(tmp_path / "x.mp4", speed="fast")


# ---------------------------------------------------------------------------------------------- live


class ScriptedBackend(Backend):
    """Plays a script of items: an array is a frame, None is 'no frame', an Exception is raised, 'block'
    blocks until released (a wedged driver)."""

    def __init__(self, script: list[Any], release: threading.Event) -> None:
        self.script, self.release = script, release
        self.closed = False

    def read(self) -> Any:
        item = self.script.pop(0) if self.script else np.zeros((8, 8, 3), np.uint8)
        if isinstance(item, Exception):
            raise item
        if isinstance(item, str) and item == "block":
            self.release.wait(10)
            return None
        time.sleep(0.002)
        return item

    def close(self) -> None:
        self.closed = True


class FakeLive(LiveSource):
    type = "fake"

    def __init__(self, scripts: list[list[Any] | Exception], stall_timeout_s: float = 5.0) -> None:
        super().__init__(stall_timeout_s, Backoff(0.01, 0.04))
        self.scripts, self.opened = scripts, 0
        self.release = threading.Event()

    def open_backend(self) -> Backend:
        self.opened += 1
        script = self.scripts.pop(0) if self.scripts else []
        if isinstance(script, Exception):
            raise script
        return ScriptedBackend(list(script), self.release)


def collect(src: LiveSource, n: int, timeout: float = 5.0) -> list[Any]:
    frames, deadline = [], time.monotonic() + timeout
    while len(frames) < n and time.monotonic() < deadline:
        f = src.next(timeout=0.1)
        if f is not None:
            frames.append(f)
    return frames


def test_backoff_doubles_to_max() -> None:
    b = Backoff(0.5, 4.0)
    assert [b.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_live_reopens_after_errors_and_ends_with_backoff() -> None:
    frame = np.zeros((8, 8, 3), np.uint8)
    src = FakeLive([OSError("no device"), [frame, RuntimeError("usb reset")], [frame, None], [frame] * 3])
    src.open()
    try:
        frames = collect(src, 4)
    finally:
        src.close()
    assert len(frames) >= 4 and [f.index for f in frames] == list(range(len(frames)))
    assert src.opened >= 4 and src.stats.errors >= 3 and src.stats.reopens >= 2
    assert "open failed" in src.stats.last_error or src.stats.last_error


def test_backoff_keeps_growing_while_the_camera_is_away(caplog: pytest.LogCaptureFixture) -> None:
    """A USB camera that is not there: stalls do not restart the backoff at attempt 2; a frame resets it."""
    frame = np.zeros((8, 8, 3), np.uint8)
    src = FakeLive([OSError("no such device")] * 8 + [[frame] * 3 + [RuntimeError("unplugged")]],
                   stall_timeout_s=0.05)
    src.backoff = Backoff(0.01, 10.0)
    caplog.set_level(logging.WARNING, logger="edgecam.sources")

    def attempts() -> list[int]:
        return [int(m) for m in re.findall(r"\(attempt (\d+)\)", caplog.text)]

    src.open()
    try:
        frames = collect(src, 3, timeout=10.0)
        assert wait_until(lambda: len(attempts()) >= 9, 5)
    finally:
        src.close()
    delays = [float(m) for m in re.findall(r"reopening in ([0-9.]+) s", caplog.text)]
    assert len(frames) == 3
    assert attempts()[:8] == list(range(2, 10))  # 8 failed opens: attempts 2..9, never back to 2 on a stall
    assert delays[7] >= 1.0 and src.stats.stalls == 0  # 0.01 s doubled 7 times; no stall while waiting to reopen
    assert attempts()[8] == 2  # frames flowed, then the camera failed: the backoff starts over


def test_live_skips_and_counts_bad_frames() -> None:
    good = np.zeros((8, 8, 3), np.uint8)
    src = FakeLive([[np.zeros((8, 8), np.float64), np.zeros((8, 8, 7), np.uint8), "garbage", good, good]])
    src.open()
    try:
        frames = collect(src, 2)
    finally:
        src.close()
    assert src.stats.bad_frames == 3 and len(frames) == 2
    assert all(f.bgr.shape == (8, 8, 3) for f in frames)


def test_live_stall_is_detected_and_reopened() -> None:
    frame = np.zeros((8, 8, 3), np.uint8)
    src = FakeLive([[frame, "block"], [frame] * 5], stall_timeout_s=0.3)
    src.open()
    try:
        first = collect(src, 1)
        t0 = time.monotonic()
        more = collect(src, 2)
    finally:
        src.release.set()
        src.close()
    assert first and len(more) == 2
    assert src.stats.stalls == 1 and src.opened == 2
    assert time.monotonic() - t0 >= 0.25


def test_live_next_returns_none_while_nothing_arrives() -> None:
    src = FakeLive([["block"]], stall_timeout_s=60)
    src.open()
    try:
        assert src.next(timeout=0.05) is None
    finally:
        src.release.set()
        src.close()


def test_opencv_source_reads_a_file_and_reopens_at_its_end(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4", frames=5)
    src = make_source(OpenCVSourceConfig(device=str(clip), reconnect_initial_s=0.01, reconnect_max_s=0.02))
    assert isinstance(src, OpenCVSource)
    src.open()
    try:
        frames = collect(src, 8)
    finally:
        src.close()
    assert len(frames) == 8 and frames[0].bgr.shape == (120, 160, 3)
    assert src.stats.reopens >= 1


def test_opencv_source_missing_device_keeps_retrying(tmp_path: Path) -> None:
    src = OpenCVSource(str(tmp_path / "nope.mp4"), backoff=Backoff(0.01, 0.02))
    src.open()
    try:
        assert src.next(timeout=0.2) is None
    finally:
        src.close()
    assert src.stats.errors >= 2 and "cannot open" in src.stats.last_error


# ---------------------------------------------------------------------------------------------- picamera2


class FakePicamera2:
    """Follows the documented picamera2 API: Picamera2(camera_num), create_video_configuration(main=...,
    controls=...), configure(config), start(), capture_array("main"), stop(), close()."""

    instances: list[FakePicamera2] = []

    def __init__(self, camera_num: int = 0) -> None:
        self.camera_num, self.calls, self.config = camera_num, [], None
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, main: dict[str, Any] | None = None, controls: Any = None) -> dict[str, Any]:
        self.calls.append("create_video_configuration")
        return {"main": dict(main or {}), "controls": dict(controls or {})}

    def configure(self, config: dict[str, Any]) -> None:
        self.calls.append("configure")
        self.config = config

    def start(self) -> None:
        self.calls.append("start")

    def capture_array(self, name: str = "main") -> np.ndarray:
        assert name == "main" and "start" in self.calls
        w, h = self.config["main"]["size"]  # type: ignore[index]
        time.sleep(0.005)
        return np.full((h, w, 4), 9, np.uint8)  # XBGR8888-like 4 channels

    def stop(self) -> None:
        self.calls.append("stop")

    def close(self) -> None:
        self.calls.append("close")


@pytest.fixture()
def fake_picamera2(monkeypatch: pytest.MonkeyPatch) -> type[FakePicamera2]:
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "picamera2", module)
    FakePicamera2.instances = []
    return FakePicamera2


def test_picamera2_source_with_fake_module(fake_picamera2: type[FakePicamera2]) -> None:
    src = make_source(PiCamera2SourceConfig(camera_num=1, width=320, height=240, fps=15))
    assert isinstance(src, PiCamera2Source)
    src.open()
    try:
        frames = collect(src, 3)
    finally:
        src.close()
    cam = fake_picamera2.instances[0]
    assert cam.camera_num == 1
    assert cam.config == {"main": {"size": (320, 240), "format": "RGB888"}, "controls": {"FrameRate": 15.0}}
    assert cam.calls[:3] == ["create_video_configuration", "configure", "start"]
    assert cam.calls[-2:] == ["stop", "close"]
    assert len(frames) == 3 and frames[0].bgr.shape == (240, 320, 3)


def test_picamera2_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails
    src = PiCamera2Source()
    with pytest.raises(SourceError, match="python3-picamera2"):
        src.open()
