"""Event latency against a local mosquitto: frame arrival -> PUBACK, p50/p99.

Two modes, both start their own mosquitto on a free loopback port and subscribe to the events:

* ``replay`` (default): ``edgecam replay CLIP --mqtt ... --speed realtime`` as a subprocess, ``--repeat`` times;
  the publisher measures, for every event, the time from the arrival of the frame that produced it to the
  broker's PUBACK (so it includes the pipeline, the outbox fsync and the broker round trip) and logs p50/p99
  at stop. Every event id must reach the subscriber.
* ``synthetic``: the Publisher alone, ``--events`` events at ``--rate`` per second, latency from
  ``publish_event`` to PUBACK (outbox write + broker round trip, no pipeline).

Usage::

    python deploy/mqtt_latency.py                      # replay the bundled clip 3x at realtime speed
    python deploy/mqtt_latency.py --mode synthetic --events 2000 --rate 50

Prints a table and writes ``runs/mqtt_latency_<mode>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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

from edgecam.mqtt.config import MqttConfig
from edgecam.mqtt.publish import Publisher
from edgecam.tools.broker import start_mosquitto

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "edgecam" / "data" / "corridor.mp4"
_ACK_LINE = re.compile(r"PUBACK ([\d.]+) ms after its frame")
_STOP_LINE = re.compile(r"(\d+) events delivered this run \(frame to PUBACK p50 ([\d.]+|None) ms, p99 ([\d.]+|None)")


class Subscriber:
    """1. Collects the event ids that reach a subscriber."""

    def __init__(self, port: int, topic: str) -> None:
        self.ids: list[str] = []
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"latency-{os.getpid()}")
        self.client.on_connect = lambda c, *a: (c.subscribe(topic, qos=1), self._ready.set())
        self.client.on_message = lambda c, u, m: self.ids.append(json.loads(m.payload)["id"])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self._ready.wait(10)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_replay(port: int, clip: Path, repeat: int, camera: str, config: Path | None) -> dict[str, Any]:
    """2a. Replay the clip through the real CLI; parse the publisher's latency line from its log."""
    sub = Subscriber(port, f"edgecam/{camera}/events")
    runs = []
    samples: list[float] = []
    for i in range(repeat):
        with tempfile.TemporaryDirectory() as state:
            env = {**os.environ, "STATE_DIRECTORY": state}
            cmd = [sys.executable, "-m", "edgecam", "--log-level", "debug", "replay", str(clip), "--speed", "realtime",
                   "--mqtt", f"mqtt://127.0.0.1:{port}", "--camera", camera]  # fmt: skip
            cmd += ["--config", str(config)] if config else []
            t0 = time.monotonic()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
            wall = time.monotonic() - t0
        match = _STOP_LINE.search(proc.stderr)
        if proc.returncode != 0 or match is None:
            raise SystemExit(f"replay {i} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        delivered, p50, p99 = int(match.group(1)), match.group(2), match.group(3)
        samples += [float(ms) for ms in _ACK_LINE.findall(proc.stderr)]
        runs.append({"delivered": delivered, "p50_ms": _num(p50), "p99_ms": _num(p99), "wall_s": round(wall, 2)})
        print(f"replay {i + 1}/{repeat}: {delivered} events, p50 {p50} ms, p99 {p99} ms, {wall:.1f} s", flush=True)
    time.sleep(1.0)
    sub.stop()
    lat = np.array(samples)
    return {
        "events": int(lat.size),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p90_ms": round(float(np.percentile(lat, 90)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "max_ms": round(float(lat.max()), 3),
        "received_messages": len(sub.ids),
        "runs": runs,
    }


def run_synthetic(port: int, n: int, rate: float, camera: str, fsync: bool) -> dict[str, Any]:
    """2b. The Publisher alone: publish_event -> PUBACK."""
    sub = Subscriber(port, f"edgecam/{camera}/events")
    with tempfile.TemporaryDirectory() as state:
        pub = Publisher(MqttConfig(host="127.0.0.1", port=port, outbox_fsync=fsync), camera, Path(state))
        pub.start()
        while not pub.status()["connected"]:
            time.sleep(0.01)
        for i in range(n):
            pub.publish_event({"id": f"syn-{i}", "type": "new", "camera": camera, "box": [1, 2, 3, 4]})
            time.sleep(1.0 / rate)
        deadline = time.monotonic() + 30
        while pub.status()["queued"] and time.monotonic() < deadline:
            time.sleep(0.05)
        lat = np.array(pub.latency_samples()) * 1000.0  # the raw samples, for a full percentile table
        status = pub.status()
        pub.stop()
    time.sleep(0.5)
    sub.stop()
    return {
        "events": n,
        "rate_per_s": rate,
        "outbox_fsync": fsync,
        "delivered": status["delivered"],
        "received_ids": len(sub.ids),
        "unique_ids": len(set(sub.ids)),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p90_ms": round(float(np.percentile(lat, 90)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "max_ms": round(float(lat.max()), 3),
    }


def _num(text: str) -> float | None:
    return None if text == "None" else float(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["replay", "synthetic"], default="replay", help="(default: %(default)s)")
    ap.add_argument("--clip", type=Path, default=CLIP, help="video for replay mode (default: the bundled clip)")
    ap.add_argument("--config", type=Path, default=None, help="edgecam config for replay mode (default: none)")
    ap.add_argument("--repeat", type=int, default=3, help="replays (default: %(default)s)")
    ap.add_argument("--events", type=int, default=2000, help="synthetic events (default: %(default)s)")
    ap.add_argument("--rate", type=float, default=50.0, help="synthetic events per second (default: %(default)s)")
    ap.add_argument("--no-fsync", action="store_true", help="synthetic: mqtt.outbox_fsync off (default: on)")
    ap.add_argument("--out", type=Path, default=None, help="JSON output (default: runs/mqtt_latency_<mode>.json)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as work:
        broker, port = start_mosquitto(Path(work))
        try:
            if args.mode == "replay":
                result = run_replay(port, args.clip, args.repeat, "latency", args.config)
            else:
                result = run_synthetic(port, args.events, args.rate, "latency", not args.no_fsync)
        finally:
            broker.terminate()
            broker.wait(10)
    result = {"mode": args.mode, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), **result}
    out = args.out or ROOT / "runs" / f"mqtt_latency_{args.mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
