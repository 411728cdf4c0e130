"""Soak test: the daemon replays the bundled clip in a loop, as fast as it can, with a broker attached.

The daemon runs in a child process (the real ``App``, pipeline and MQTT ``Publisher``; the source is the clip
replayed over and over at max speed, timestamps running on); this process starts a mosquitto on a free
loopback port (or uses ``--mqtt``), subscribes to the events and stats, samples the child's RSS every second,
stops the child with SIGTERM after ``--duration`` seconds and waits for the last events. It prints:

- RSS after the warm-up, at the end, the growth in between (%), and the peak;
- throughput per stats window: frames/s (wall clock: on a shared machine it follows the other jobs) and the
  daemon's own CPU milliseconds per frame (user + system time of all its threads: what a leak or a slowdown
  inside the daemon would raise), and how steady the latter is after the warm-up (slowest window / median);
- events produced (the child's ``--events`` JSON lines) vs received (distinct ``(id, seq)``), lost, duplicates.

and writes the figures as JSON and a plot (RSS, frames/s and CPU ms per frame over time) under ``--out``. The
verdicts are this report's, not a test's (``soak.json`` ``verdicts``): ``rss`` (RSS grew less than
``--max-rss-growth`` %), ``events`` (none lost), ``steadiness`` (no window after the warm-up cost more than
``--max-slowdown`` times the median CPU per frame; on a machine shared with other jobs it says more about them).
Exit status 0 when all three hold, 1 otherwise.

Usage::

    python deploy/soak.py --duration 120               # what CI runs (tests/reliability/test_soak.py)
    python deploy/soak.py --duration 3600 --warmup 120 # the hour-long soak of the README
    python deploy/soak.py --config deploy/configs/demo.yaml --duration 600   # another setup (recognizer on)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgecam.sources import EndOfStream, Frame, ReplaySource, Source
from edgecam.tools.broker import start_mosquitto

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "edgecam" / "data" / "corridor.mp4"
CAMERA = "soak"


# ---------------------------------------------------------------------------------------------- the child


class LoopingClip(Source):
    """A clip replayed over and over at max speed; frame indices and timestamps keep running across loops."""

    type = "soak-loop"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.inner = ReplaySource(path, "max")
        self.stats = self.inner.stats
        self.loops = 0
        self._offset = (0, 0.0)  # (index, seconds) added to the inner source's frames
        self._last: Frame | None = None

    @property
    def description(self) -> str:
        return f"soak-loop:{self.inner.path}"

    def open(self) -> None:
        self.inner.open()

    def next(self, timeout: float = 0.0) -> Frame | None:
        try:
            frame = self.inner.next(timeout)
        except EndOfStream:
            if self._last is None:
                raise
            self.loops += 1
            step = self._last.timestamp / max(1, self._last.index) if self._last.index else 0.08
            self._offset = (self._last.index + 1, self._last.timestamp + step)
            self.inner.close()
            self.inner.open()
            frame = self.inner.next(timeout)
        assert frame is not None
        self._last = Frame(frame.index + self._offset[0], frame.timestamp + self._offset[1], frame.bgr)
        return self._last

    def close(self) -> None:
        self.inner.close()


def run_child(args: argparse.Namespace) -> int:
    """The daemon side: App with the looping clip, real Publisher, events to a JSON lines file, until SIGTERM."""
    from edgecam.app import App, run_app
    from edgecam.config import apply_overrides, load_config
    from edgecam.logs import setup_logging

    setup_logging("warning")
    cfg = apply_overrides(load_config(Path(args.config) if args.config else None), mqtt_url=args.mqtt,
                          camera=CAMERA)
    cfg = cfg.model_copy(update={"state_dir": Path(args.state_dir), "stats_interval_s": args.interval})
    run_app(App(cfg, source=LoopingClip(Path(args.clip)), events_path=Path(args.events)))
    return 0


# ---------------------------------------------------------------------------------------------- the parent


class Watcher:
    """Counts the events (distinct ``(id, seq)`` and duplicates) and keeps the stats messages."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.events, self.stats = f"{prefix}/{CAMERA}/events", f"{prefix}/{CAMERA}/stats"
        self.keys: set[tuple[str, int]] = set()
        self.deliveries = 0
        self.stat_msgs: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"soak-{os.getpid()}")
        self.client.on_connect = lambda c, *a: (c.subscribe([(self.events, 1), (self.stats, 0)]), ready.set())
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not ready.wait(10):
            raise SystemExit(f"soak: cannot subscribe at {host}:{port}")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        data = json.loads(msg.payload)
        with self._lock:
            if msg.topic == self.events:
                self.deliveries += 1
                self.keys.add((str(data["id"]), int(data["seq"])))
            else:
                self.stat_msgs.append((time.monotonic(), data))

    def has(self, keys: set[tuple[str, int]]) -> bool:
        with self._lock:
            return keys <= self.keys

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def rss_mb(pid: int) -> float | None:
    """Resident set size of a process in MB (Linux /proc), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process, all threads (Linux /proc), None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def progress(total: int) -> Any:
    """A tqdm bar over seconds when tqdm is installed and stderr is a terminal, else None."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="s", desc="soak", disable=None)


def sample(child: subprocess.Popen[bytes], duration: float) -> list[tuple[float, float, float]]:
    """1. RSS and CPU time of the child every second for ``duration`` seconds: [(s since start, MB, CPU s)]."""
    t0, samples = time.monotonic(), []
    bar = progress(int(duration))
    while (elapsed := time.monotonic() - t0) < duration and child.poll() is None:
        mb, cpu = rss_mb(child.pid), cpu_s(child.pid)
        if mb is not None and cpu is not None:
            samples.append((elapsed, mb, cpu))
        if bar is not None:
            bar.update(1)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t0 - elapsed)))
    if bar is not None:
        bar.close()
    return samples


def throughput(stat_msgs: list[tuple[float, dict[str, Any]]], samples: list[tuple[float, float, float]],
               t0: float) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """2. Per stats window: frames/s (the daemon's own figure) and the daemon's CPU ms per frame (its CPU time
    sampled here between two stats messages, over the frames it reported in between)."""
    fps = [(round(t - t0, 1), float(s["fps"])) for t, s in stat_msgs if "fps" in s]
    times = np.array([t for t, _, _ in samples]) + t0
    cpu = np.array([c for _, _, c in samples])
    cost = []
    for (ta, a), (tb, b) in zip(stat_msgs, stat_msgs[1:], strict=False):
        frames = b.get("frames", 0) - a.get("frames", 0)
        if frames > 0 and len(times) and ta >= times[0] and tb <= times[-1]:
            spent = float(np.interp(tb, times, cpu) - np.interp(ta, times, cpu))
            cost.append((round(tb - t0, 1), round(1000 * spent / frames, 3)))
    return fps, cost


def _window_summary(windows: list[tuple[float, float]], after: float, worst: Any) -> dict[str, Any]:
    steady = [v for t, v in windows if t >= after]
    median = float(np.median(steady)) if steady else 0.0
    extreme = worst(steady) if steady else None
    return {"windows": windows, "median": round(median, 3), "worst": extreme,
            "worst_over_median": round(extreme / median, 3) if steady and median else None}


def summarize(args: argparse.Namespace, samples: list[tuple[float, float, float]], fps: list[tuple[float, float]],
              cost: list[tuple[float, float]], produced: list[tuple[str, int]], watcher: Watcher,
              stop_s: float) -> dict[str, Any]:
    """3. The figures and the verdict."""
    rss_t, rss_v = np.array([t for t, _, _ in samples]), np.array([v for _, v, _ in samples])
    after = float(np.median(rss_v[(rss_t >= args.warmup) & (rss_t < args.warmup + args.interval)]))
    end = float(np.median(rss_v[rss_t >= rss_t[-1] - args.interval]))
    want = set(produced)
    lost = len(want - watcher.keys)
    out = {
        "duration_s": args.duration, "warmup_s": args.warmup, "clip": str(args.clip),
        "rss_mb": {"after_warmup": round(after, 1), "end": round(end, 1), "peak": round(float(rss_v.max()), 1),
                   "growth_pct": round(100 * (end - after) / after, 2)},
        "fps": _window_summary(fps, args.warmup + args.interval, min),
        "cpu_ms_per_frame": _window_summary(cost, args.warmup + args.interval, max),
        "events": {"produced": len(produced), "received": len(want & watcher.keys), "lost": lost,
                   "deliveries": watcher.deliveries, "duplicates": watcher.deliveries - len(watcher.keys)},
        "stop_s": round(stop_s, 2),
        "rss_samples": [(t, v) for t, v, _ in samples],
    }
    slowdown = out["cpu_ms_per_frame"]["worst_over_median"]
    out["verdicts"] = {"rss": bool(out["rss_mb"]["growth_pct"] < args.max_rss_growth), "events": lost == 0,
                       "steadiness": slowdown is not None and slowdown <= args.max_slowdown}
    out["limits"] = {"max_rss_growth_pct": args.max_rss_growth, "max_slowdown": args.max_slowdown}
    out["ok"] = all(out["verdicts"].values())
    return out


def print_report(r: dict[str, Any]) -> None:
    m, f, c, e = r["rss_mb"], r["fps"], r["cpu_ms_per_frame"], r["events"]
    print(f"soak: {r['duration_s']:.0f} s replaying {Path(r['clip']).name} at max speed, broker attached")
    print(f"  RSS: {m['after_warmup']} MB after {r['warmup_s']:.0f} s warm-up -> {m['end']} MB at the end "
          f"({m['growth_pct']:+.2f} %), peak {m['peak']} MB")
    print(f"  CPU per frame: median {c['median']} ms after warm-up, costliest window {c['worst']} ms "
          f"({c['worst_over_median']} x the median); per window: {' '.join(str(v) for _, v in c['windows'])}")
    print(f"  frames/s (wall clock, shares the machine): median {f['median']}, slowest window {f['worst']}; "
          f"per window: {' '.join(str(v) for _, v in f['windows'])}")
    print(f"  events: {e['produced']} produced, {e['received']} received, {e['lost']} lost, "
          f"{e['duplicates']} duplicates; SIGTERM to exit {r['stop_s']} s")
    v, lim = r["verdicts"], r["limits"]
    print(f"  verdicts: RSS growth < {lim['max_rss_growth_pct']} % {'ok' if v['rss'] else 'FAILED'}; "
          f"no event lost {'ok' if v['events'] else 'FAILED'}; CPU per frame steady (costliest window <= "
          f"{lim['max_slowdown']} x the median) {'ok' if v['steadiness'] else 'FAILED'}")
    print(f"  verdict: {'ok' if r['ok'] else 'FAILED'}")


def plot(r: dict[str, Any], path: Path) -> None:
    """RSS and frames/s over time (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (a, b, c) = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    a.plot(*zip(*r["rss_samples"], strict=True))
    a.axvline(r["warmup_s"], color="grey", linestyle="--")
    a.set_ylabel("RSS (MB)")
    b.plot(*zip(*r["fps"]["windows"], strict=True), marker="o")
    b.set_ylabel("frames/s (wall)")
    if r["cpu_ms_per_frame"]["windows"]:
        c.plot(*zip(*r["cpu_ms_per_frame"]["windows"], strict=True), marker="o", color="tab:orange")
    c.set_ylabel("CPU ms / frame")
    c.set_xlabel("seconds")
    a.set_title(f"edgecam soak: RSS {r['rss_mb']['growth_pct']:+.1f} % after warm-up, "
                f"{r['events']['lost']} events lost")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run_parent(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgecam-soak-") as tmp:
        broker = None
        url = args.mqtt
        if url is None:
            broker, port = start_mosquitto(Path(tmp))
            url = f"mqtt://127.0.0.1:{port}"
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        watcher = Watcher(host, int(port), args.prefix)
        events = Path(tmp) / "events.jsonl"
        cmd = [sys.executable, __file__, "--child", "--clip", str(args.clip), "--mqtt", url, "--events", str(events),
               "--state-dir", str(Path(tmp) / "state"), "--interval", str(args.interval)]
        child = subprocess.Popen(cmd + (["--config", args.config] if args.config else []), cwd=ROOT)
        try:
            t0 = time.monotonic()
            samples = sample(child, args.duration)
            t_stop = time.monotonic()
            child.send_signal(signal.SIGTERM)
            if child.wait(60) != 0:
                raise SystemExit(f"soak: the daemon exited with status {child.returncode}")
            stop_s = time.monotonic() - t_stop
        finally:
            if child.poll() is None:
                child.kill()
        lines = events.read_text().splitlines() if events.exists() else []
        produced = [(str(e["id"]), int(e["seq"])) for e in map(json.loads, lines)]
        deadline = time.monotonic() + 30
        while not watcher.has(set(produced)) and time.monotonic() < deadline:
            time.sleep(0.2)
        watcher.stop()
        if broker is not None:
            broker.terminate()
            broker.wait(10)
    fps, cost = throughput(watcher.stat_msgs, samples, t0)
    result = summarize(args, samples, fps, cost, produced, watcher, stop_s)
    (out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out / "soak.png")
    print_report(result)
    print(f"  figures: {out / 'soak.json'}, {out / 'soak.png'}")
    return 0 if result["ok"] else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=120.0, help="seconds of soak (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=30.0, help="seconds before RSS growth is measured "
                   "(default: %(default)s)")
    p.add_argument("--interval", type=float, default=10.0, help="stats window in seconds (default: %(default)s)")
    p.add_argument("--clip", default=str(CLIP), help="clip to loop (default: the bundled clip)")
    p.add_argument("--config", help="daemon config (default: built-in defaults); its mqtt section is replaced")
    p.add_argument("--mqtt", help="broker mqtt://host:port (default: a mosquitto started here)")
    p.add_argument("--prefix", default="edgecam", help="topic prefix of the config (default: %(default)s)")
    p.add_argument("--max-rss-growth", type=float, default=10.0, help="largest RSS growth after the warm-up, "
                   "percent (default: %(default)s)")
    p.add_argument("--max-slowdown", type=float, default=1.5, help="most CPU per frame of a stats window after the "
                   "warm-up, as a multiple of the median (default: %(default)s)")
    p.add_argument("--out", default=str(ROOT / "runs" / "soak"), help="folder for soak.json and soak.png "
                   "(default: %(default)s)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--events", help=argparse.SUPPRESS)
    p.add_argument("--state-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return run_child(args)
    if args.warmup + 2 * args.interval > args.duration:
        p.error(f"--duration {args.duration} is too short for --warmup {args.warmup} and two --interval windows")
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
