"""App and Pipeline on synthetic video with a square-finding detector: stages wired, events, outputs, commands,
lifecycle, systemd watchdog only while frames flow."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import wait_until

from edgecam.app import App, replay, run_app
from edgecam.config import Config, parse_config
from edgecam.pipeline import Pipeline, StageTimer
from edgecam.sources import Backend, Backoff, Frame, LiveSource, ReplaySource, SourceError

H, W = 240, 320


class SquareDetector:
    """Finds bright textured squares (our synthetic faces) by thresholding; landmarks from a frontal layout."""

    def __init__(self) -> None:
        self.calls = 0
        self.closed = False

    def __call__(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        n, _, stats, _ = cv2.connectedComponentsWithStats((grey > 150).astype(np.uint8))
        boxes, lms = [], []
        for x, y, w, h, area in stats[1:n]:
            if area < 100:
                continue
            boxes.append([x, y, x + w, y + h, 0.9])
            lms.append([[x + 0.3 * w, y + 0.4 * h], [x + 0.7 * w, y + 0.4 * h], [x + 0.5 * w, y + 0.6 * h],
                        [x + 0.5 * w, y + 0.8 * h]])
        return np.array(boxes, np.float32).reshape(-1, 5), np.array(lms, np.float32).reshape(-1, 4, 2)

    def close(self) -> None:
        self.closed = True


class NamedRecognizer:
    """Calls every face 'alice' (known)."""

    input_size = (112, 112)

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.names = ["alice", "bob"]

    def __call__(self, crops: list[np.ndarray]) -> list[Any]:
        from types import SimpleNamespace

        assert all(c.shape == (112, 112, 3) for c in crops)
        self.batches.append(len(crops))
        return [SimpleNamespace(name="alice", status="known", score=0.9) for _ in crops]

    def close(self) -> None:
        pass


def synthetic_frame(i: int, present: bool) -> np.ndarray:
    img = np.full((H, W, 3), 40, np.uint8)
    if present:
        x = 20 + 3 * i
        rng = np.random.default_rng(i)
        img[60:140, x:x + 70] = rng.integers(160, 255, (80, 70, 1), dtype=np.uint8)
    return img


def presence(i: int) -> bool:
    return 5 <= i < 35


def write_clip(path: Path, frames: int = 50) -> Path:
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (W, H))
    for i in range(frames):
        out.write(synthetic_frame(i, presence(i)))
    out.release()
    return path


def config(**sections: Any) -> Config:
    base: dict[str, Any] = {"tracker": {"min_hits": 3, "max_age": 3, "update_interval_s": 100},
                            "crops": {"min_sharpness": 1.0},
                            "motion": {"force_every": 10, "hold_frames": 2}}
    base.update(sections)
    return parse_config(base)


def run_pipeline(cfg: Config, recognizer: Any = None, frames: int = 50) -> tuple[Pipeline, list[dict[str, Any]]]:
    p = Pipeline(cfg, SquareDetector(), recognizer, run_id="t")
    events = []
    last = None
    for i in range(frames):
        last = Frame(i, i / 10, synthetic_frame(i, presence(i)))
        events += [e.payload for e in p.process(last)]
    assert last is not None
    events += [e.payload for e in p.finish(last)]
    return p, events


def test_pipeline_one_person_new_then_end() -> None:
    p, events = run_pipeline(config())
    assert [e["type"] for e in events] == ["new", "end"]
    new, end = events
    assert new["id"] == end["id"] and new["identity"] == "unknown" and new["status"] == "unknown"
    assert new["start"] == pytest.approx(0.5) and end["end"] == pytest.approx(3.4)
    assert new["snapshot"] is not None and new["snapshot"]["quality"]["ok"]
    assert p.counts.frames == 50 and p.counts.detector_runs < 50  # still frames skipped
    assert p.motion.stats.skipped == 50 - p.counts.detector_runs
    stats = p.stats(1.0)
    assert stats["frames_skipped_motion"] > 0 and set(stats["stage_ms"]) >= {"motion", "detect", "crops", "track"}
    assert stats["recognizer_pixel_fraction"] == 0.0


def test_pipeline_snapshot_updates_rate_limited() -> None:
    _, events = run_pipeline(config(tracker={"min_hits": 3, "max_age": 3, "update_interval_s": 1.0}))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "new" and kinds[-1] == "end" and 1 <= kinds.count("update") <= 3
    stamps = [e["timestamp"] for e in events if e["type"] != "end"]
    assert all(b - a >= 1.0 - 1e-6 for a, b in zip(stamps, stamps[1:], strict=False))
    assert len({e["id"] for e in events}) == 1 and [e["seq"] for e in events] == list(range(len(events)))


def test_pipeline_with_recognizer_votes_and_stops_at_max_votes() -> None:
    rec = NamedRecognizer()
    p, events = run_pipeline(config(recognizer={"type": "classifier", "model": ".", "max_votes": 4}), rec)
    assert events[0]["identity"] == "alice" and events[0]["status"] == "known"
    assert sum(rec.batches) == 4 and events[-1]["frames"]["votes"] == 4
    assert 0 < p.stats(1.0)["recognizer_pixel_fraction"] < 0.05


def test_pipeline_detection_disabled_runs_nothing() -> None:
    p, events = run_pipeline(config(detector={"enabled": False}))
    assert events == [] and p.counts.detector_runs == 0


def test_stage_timer() -> None:
    t = StageTimer()
    with t("detect"):
        time.sleep(0.01)
    with t("detect"):
        pass
    assert t.calls["detect"] == 2 and t.ms_per_call()["detect"] >= 4.0 and "motion" not in t.ms_per_call()


# ---------------------------------------------------------------------------------------------- App


class FakePublisher:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.snapshots: list[bytes] = []
        self.recognitions: list[dict[str, Any]] = []
        self.states: list[tuple[str, Any]] = []
        self.stats: list[dict[str, Any]] = []
        self.discovery: list[list[str]] = []
        self.callbacks: list[Any] = []

    def publish_event(self, event: dict[str, Any], frame_time: float | None = None) -> int:
        json.dumps(event)
        self.events.append(event)
        return len(self.events)

    def publish_recognition(self, payload: dict[str, Any], frame_time: float | None = None) -> None:
        json.dumps(payload)
        self.recognitions.append(payload)

    def publish_snapshot(self, jpeg: bytes) -> None:
        self.snapshots.append(jpeg)

    def publish_state(self, name: str, value: Any) -> None:
        self.states.append((name, value))

    def publish_stats(self, stats: dict[str, Any]) -> None:
        self.stats.append(stats)

    def publish_discovery(self, people: list[str]) -> None:
        self.discovery.append(people)

    def on_command(self, cb: Any) -> None:
        self.callbacks.append(cb)

    def status(self) -> dict[str, Any]:
        return {"connected": True, "queued": 0, "dropped": 0}


def run_replay_app(clip: Path, **kw: Any) -> App:
    det = SquareDetector()
    app = App(kw.pop("cfg", config()), source=ReplaySource(clip), detector=det, **kw)
    run_app(app)
    return app


def test_app_replay_to_stdout_and_file(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4")
    out = io.StringIO()
    app = run_replay_app(clip, stdout=out, events_path=tmp_path / "ev.jsonl")
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [e["type"] for e in lines] == ["new", "end"]
    assert (tmp_path / "ev.jsonl").read_text() == out.getvalue()
    assert app.error is None and app.detector is not None and not app.detector.closed  # type: ignore[attr-defined]


def test_app_replays_are_identical_ids_aside(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4")
    runs = []
    for _ in range(2):
        out = io.StringIO()
        run_replay_app(clip, stdout=out)
        runs.append([{k: v for k, v in json.loads(x).items() if k != "id"} for x in out.getvalue().splitlines()])
    assert runs[0] == runs[1] and len(runs[0]) == 2


def test_app_publishes_events_snapshots_states(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4")
    pub = FakePublisher()
    out = io.StringIO()
    rec = NamedRecognizer()
    cfg = config(recognizer={"type": "classifier", "model": "."})
    app = App(cfg, source=ReplaySource(clip), publisher=pub, detector=SquareDetector(), recognizer=rec, stdout=out)
    stats = run_app(app)
    assert out.getvalue() == ""  # a broker: nothing on stdout
    assert [e["type"] for e in pub.events] == ["new", "end"] and stats["errors"] == 0
    assert [(r["event_type"], r["identity"]) for r in pub.recognitions] == [("recognized", "alice")]
    assert pub.discovery == [["alice", "bob"]]
    jpeg = cv2.imdecode(np.frombuffer(pub.snapshots[0], np.uint8), cv2.IMREAD_COLOR)
    assert jpeg is not None and jpeg.shape[2] == 3
    assert ("detection", True) in pub.states and ("face", 1) in pub.states and ("alice", True) in pub.states
    assert pub.states[:4] == [("detection", True), ("face", 0), ("alice", False), ("bob", False)]
    assert pub.states[-2:] == [("face", 0), ("alice", False)]  # the track ended
    assert ("bob", True) not in pub.states


class Endless(LiveSource):
    """A live camera of synthetic frames; ``stall`` makes it stop delivering."""

    type = "endless"

    def __init__(self) -> None:
        super().__init__(stall_timeout_s=30, backoff=Backoff(0.01, 0.02))
        self.stall = threading.Event()
        self.i = 0

    def open_backend(self) -> Backend:
        src = self

        class B(Backend):
            def read(self) -> Any:
                while src.stall.is_set():
                    time.sleep(0.01)
                time.sleep(0.01)
                src.i += 1
                return synthetic_frame(src.i % 40, presence(src.i % 40))

            def close(self) -> None:
                pass

        return B()


def test_app_commands_detection_off_ends_tracks_and_snapshot(tmp_path: Path) -> None:
    pub = FakePublisher()
    app = App(config(motion={"enabled": False}), source=Endless(), publisher=pub, detector=SquareDetector())
    app.start()
    try:
        assert wait_until(lambda: any(e["type"] == "new" for e in pub.events), 5.0)
        [cb] = pub.callbacks
        cb("detection", b"OFF")
        assert wait_until(lambda: any(e["type"] == "end" for e in pub.events), 5.0)
        runs = app.pipeline.counts.detector_runs  # type: ignore[union-attr]
        n_snap = len(pub.snapshots)
        cb("snapshot", b"")
        assert wait_until(lambda: len(pub.snapshots) > n_snap, 5.0)
        frames = app.pipeline.counts.frames  # type: ignore[union-attr]
        assert wait_until(lambda: app.pipeline.counts.frames >= frames + 5, 5.0)  # type: ignore[union-attr]
        assert app.pipeline.counts.detector_runs == runs  # type: ignore[union-attr]  # 5 frames, no detector
        cb("detection", b"ON")
        assert wait_until(lambda: app.pipeline.counts.detector_runs > runs, 5.0)  # type: ignore[union-attr]
    finally:
        app.stop()
        app.stop()  # idempotent
    assert cv2.imdecode(np.frombuffer(pub.snapshots[-1], np.uint8), cv2.IMREAD_COLOR) is not None


def test_app_start_failure_cleans_up(tmp_path: Path) -> None:
    det = SquareDetector()
    app = App(config(), source=ReplaySource(tmp_path / "missing.mp4"), detector=det)
    with pytest.raises(SourceError, match="missing.mp4"):
        app.start()
    assert app._cleanup == []


def test_replay_error_mid_stream_is_raised(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match="bad.mp4"):
        run_replay_app(bad)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs unix sockets")
def test_watchdog_pings_only_while_frames_flow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.05)
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    messages: list[str] = []

    def drain(seconds: float) -> list[str]:
        got, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                got.append(sock.recv(4096).decode())
            except TimeoutError:
                pass
        return got

    src = Endless()
    app = App(config(), source=src, publisher=FakePublisher(), detector=SquareDetector())
    app.start()
    try:
        messages += drain(0.6)
        src.stall.set()
        drain(0.2)
        stalled = drain(0.6)
        src.stall.clear()
        resumed = drain(0.6)
    finally:
        app.stop()
        sock.close()
    assert any(m.startswith("READY=1") for m in messages)
    assert sum(m == "WATCHDOG=1" for m in messages) >= 3
    assert not any(m == "WATCHDOG=1" for m in stalled)
    assert any(m == "WATCHDOG=1" for m in resumed)


def test_replay_function_overrides_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = write_clip(tmp_path / "c.mp4", frames=20)
    monkeypatch.setattr("edgecam.app.load_detector", lambda cfg: SquareDetector())
    out = io.StringIO()
    stats = replay(config(), clip, stdout=out)
    assert stats["frames"] == 20 and [json.loads(x)["type"] for x in out.getvalue().splitlines()] == ["new", "end"]


def test_enroll_command_adds_the_face_in_view_to_the_gallery(tmp_path: Path) -> None:
    from test_recognize import write_folder

    from edgecam.manifest import load_manifest
    from edgecam.recognize import Gallery

    model = write_folder(tmp_path / "emb", {"type": "embedding", "dim": 3,
                                            "thresholds": {"known": 0.95, "unknown": 0.8}})
    gallery = tmp_path / "gallery.npz"
    Gallery(str(load_manifest(model).data["sha256"]), 3).save(gallery)
    cfg = config(motion={"enabled": False}, recognizer={"type": "identity", "model": str(model),
                                                        "gallery": str(gallery), "max_votes": 1000})
    pub = FakePublisher()
    app = App(cfg, source=Endless(), publisher=pub, detector=SquareDetector())
    app.start()
    try:
        assert wait_until(lambda: any(e["type"] == "new" for e in pub.events), 5.0)
        assert pub.events[0]["identity"] == "unknown" and pub.discovery == [[]]
        [cb] = pub.callbacks
        cb("enroll", b"alice")
        assert wait_until(lambda: pub.discovery[-1] == ["alice"], 5.0)
        assert wait_until(lambda: any(e["identity"] == "alice" and e["status"] == "known" for e in pub.events), 5.0)
    finally:
        app.stop()
    assert Gallery.load(gallery, str(load_manifest(model).data["sha256"]), 3).people == ["alice"]
    assert ("alice", True) in pub.states


def test_publish_failure_is_counted_and_the_daemon_goes_on(tmp_path: Path) -> None:
    class Broken(FakePublisher):
        def publish_event(self, event: dict[str, Any], frame_time: float | None = None) -> int:
            raise OSError("disk full")

    clip = write_clip(tmp_path / "c.mp4")
    pub = Broken()
    app = App(config(), source=ReplaySource(clip), publisher=pub, detector=SquareDetector())
    stats = run_app(app)
    assert app.error is None and stats["frames"] == 50 and stats["errors"] == 2  # new + end both failed
