"""Camera faults through the real App, a real Publisher and mosquitto, and a fake systemd notify socket.

A scripted live camera goes through every fault a driver shows: frames of the wrong shape or dtype, a read
error, opens that fail (reopened with exponential backoff), a resolution change, a device that returns
nothing, a stall (reader abandoned, camera reopened) and finally a wedge that reopening does not cure. The
daemon must skip and count, reopen, keep publishing, and stop feeding the systemd watchdog while no frames
flow (so systemd restarts a daemon whose camera stays wedged).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Broker, Collector, FaultReport, NotifySocket, needs_mosquitto, wait_until
from faultlib import read_jsonl, received_until_complete, tally
from test_app import H, SquareDetector, W, presence, synthetic_frame

from edgecam.app import App
from edgecam.config import parse_config
from edgecam.sources import Backend, Backoff, LiveSource

pytestmark = needs_mosquitto

CAM = "scripted"
EVENTS = f"edgecam/{CAM}/events"
BAD_FRAMES: list[Any] = [
    np.zeros((H, W, 3), np.float32),  # wrong dtype
    np.zeros((H, W, 5), np.uint8),  # wrong channel count
    np.zeros(W * 3, np.uint8),  # flat buffer
    np.zeros((0, 0, 3), np.uint8),  # empty
    [[0, 1], [2, 3]],  # not an array at all
    np.zeros((H, W), np.int16),  # 16-bit grey
]


class ScriptedCamera(LiveSource):
    """A live camera that plays a script, one list of steps per open (an exception: that open fails).

    Steps: ``("frames", n, (w, h))`` n good frames; ``("bad",)`` every frame of ``BAD_FRAMES``; ``("raise",)`` a
    read error; ``("none",)`` the device returns nothing; ``("stall", s)`` block s seconds. After the script:
    frames until ``wedge`` is set, then every read and every later open blocks (a wedged camera).
    """

    type = "scripted"

    def __init__(self, opens: list[Any]) -> None:
        super().__init__(stall_timeout_s=0.5, backoff=Backoff(0.05, 0.4))
        self.opens = opens
        self.open_times: list[float] = []
        self.marks: dict[str, float] = {}  # when scripted faults began / frames resumed
        self.wedge = threading.Event()
        self.gone = threading.Event()
        self.i = 0

    def frame(self, size: tuple[int, int] = (W, H)) -> np.ndarray:
        self.i += 1
        img = synthetic_frame(self.i % 40, presence(self.i % 40))
        return img if size == (W, H) else np.ascontiguousarray(img[: size[1], : size[0]])

    def open_backend(self) -> Backend:
        self.open_times.append(time.monotonic())
        step = self.opens.pop(0) if self.opens else None
        if isinstance(step, Exception):
            raise step
        return ScriptedBackend(self, list(step) if step is not None else [("tail",)])

    def close(self) -> None:
        self.gone.set()
        super().close()


class ScriptedBackend(Backend):
    def __init__(self, cam: ScriptedCamera, steps: list[tuple[Any, ...]]) -> None:
        self.cam, self.steps = cam, steps
        self.pending: list[Callable[[], Any]] = []

    def read(self) -> Any:
        cam = self.cam
        while not self.pending:
            step = self.steps.pop(0) if self.steps else ("tail",)
            kind = step[0]
            if kind == "frames":
                self.pending = [lambda s=step[2]: cam.frame(s) for _ in range(step[1])]
            elif kind == "bad":
                self.pending = [lambda f=f: f for f in BAD_FRAMES]
            elif kind == "raise":
                raise OSError("VIDIOC_DQBUF: No such device")
            elif kind == "none":
                return None
            elif kind == "stall":
                cam.marks.setdefault("stall", time.monotonic())
                cam.gone.wait(step[1])  # by then the daemon has given up on this reader and opened a new one
                self.pending = [lambda: cam.frame()]
            elif kind == "tail":
                if cam.wedge.is_set():
                    cam.gone.wait()  # wedged: nothing ever again
                    return None
                cam.marks.setdefault("tail", time.monotonic())
                self.pending = [lambda: cam.frame()]
        time.sleep(0.01)
        return self.pending.pop(0)()

    def close(self) -> None:
        pass


def test_camera_faults_skip_count_reopen_and_starve_the_watchdog(
    broker: Broker, collector: Callable[..., Collector], notify_socket: Callable[..., NotifySocket],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault_report: FaultReport,
) -> None:
    systemd = notify_socket(watchdog_s=0.4)
    for key, value in systemd.env.items():
        monkeypatch.setenv(key, value)
    sub = collector([EVENTS])
    cfg = parse_config({
        "camera": {"name": CAM}, "state_dir": str(tmp_path / "state"), "stats_interval_s": 1,
        "tracker": {"min_hits": 3, "max_age": 3, "update_interval_s": 0.5}, "crops": {"min_sharpness": 1.0},
        "motion": {"enabled": False},
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5, "reconnect_min_s": 0.1,
                 "reconnect_max_s": 0.5},
    })
    cam = ScriptedCamera([
        [("frames", 25, (W, H)), ("bad",), ("frames", 10, (W, H)), ("raise",)],
        OSError("open: Device or resource busy"),
        OSError("open: Device or resource busy"),
        [("frames", 15, (160, 120)), ("none",)],  # another resolution after a reopen, then nothing
        [("frames", 15, (W, H)), ("stall", 1.5)],
    ])
    events = tmp_path / "events.jsonl"
    app = App(cfg, source=cam, detector=SquareDetector(), events_path=events)
    app.start()
    try:
        assert wait_until(lambda: "tail" in cam.marks and cam.stats.frames > 90, 30), (cam.stats, cam.marks)
        # frames flow again after the stall: the watchdog is fed again
        assert wait_until(lambda: len(systemd.times("WATCHDOG=1", since=cam.marks["tail"])) >= 2, 10)
        stalls = cam.stats.stalls
        cam.wedge.set()
        wedged_at = time.monotonic()
        assert wait_until(lambda: cam.stats.stalls > stalls and any(  # declared stalled, and still reporting
            s.startswith("STATUS=") for s in systemd.texts(since=wedged_at + 0.3)), 10), cam.stats
        wedge_pings = systemd.times("WATCHDOG=1", since=wedged_at + 0.3)
        status_while_wedged = [s for s in systemd.texts(since=wedged_at + 0.3) if s.startswith("STATUS=")]
        worker_alive = app._worker is not None and app._worker.is_alive()
    finally:
        app.stop()
    st = cam.stats
    stall_pings = [t for t in systemd.times("WATCHDOG=1") if cam.marks["stall"] + 0.3 < t < cam.marks["tail"]]
    gaps = np.diff(cam.open_times)
    produced = read_jsonl(events)
    t = tally(produced, received_until_complete(sub, EVENTS, produced, 20))
    fault_report.add("faults", "camera faults (bad frames, read error, failed opens, resolution change, "
                     "nothing, stall, wedge)", bad_frames=st.bad_frames, errors=st.errors, reopens=st.reopens,
                     stalls=st.stalls, pipeline_errors=app.pipeline.counts.errors if app.pipeline else None,
                     watchdog_pings_while_stalled=len(stall_pings), watchdog_pings_while_wedged=len(wedge_pings),
                     **t.figures())
    assert app.error is None and worker_alive
    assert st.bad_frames == len(BAD_FRAMES)
    assert st.errors >= 4  # the read error, two failed opens, the device that returned nothing
    assert st.stalls >= 2 and st.reopens >= 2  # reopens: after the read error and the nothing; stalls: stall, wedge
    assert gaps[1] >= 0.1 and gaps[2] >= 0.2 and gaps[2] > gaps[1]  # exponential backoff between failed opens
    assert sum(t.startswith("READY=1") for t in systemd.texts()) == 1
    assert not stall_pings and not wedge_pings, "the watchdog was fed while no frames arrived"
    assert len(systemd.times("WATCHDOG=1", since=cam.marks["tail"])) >= 2  # fed again once frames flowed
    assert status_while_wedged, "the daemon went silent instead of reporting while wedged"
    assert t.produced > 0 and t.lost == 0 and t.in_order, t
