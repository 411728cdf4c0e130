"""``edgecam bench``: the daemon pipeline on a clip, timed per stage, on this machine.

The clip is replayed at full speed ``repeat`` times through the same ``Pipeline`` the daemon runs (motion
gate, detector, crops and quality gate, recognizer when configured, tracker); the publish stage is what the
daemon does for each event without the network (JSON encoding, snapshot JPEG). Figures: frames/s end to end
(decode included), ms per stage (per call and per frame), frames skipped by the motion gate, the fraction of
frame pixels sent to the recognizer, and the process's peak RSS.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import cv2

from edgecam.app import encode_jpeg
from edgecam.config import Config
from edgecam.motion import MotionGate
from edgecam.pipeline import STAGES, Pipeline, load_detector, load_recognizer
from edgecam.sources import EndOfStream, Frame, ReplaySource


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports KB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _one_pass(pipeline: Pipeline, video: Path, frames: int, jpeg_quality: int) -> tuple[int, tuple[int, int]]:
    """Replay ``video`` once through ``pipeline``; (frames read, (width, height))."""
    src = ReplaySource(video, "max", max_frames=frames)
    src.open()
    size, n, last = (0, 0), 0, None
    try:
        while (frame := _read(pipeline, src)) is not None:
            events = pipeline.process(frame)
            n, size, last = n + 1, (frame.bgr.shape[1], frame.bgr.shape[0]), frame
            _publish_offline(pipeline, events, jpeg_quality)
        if last is not None:
            _publish_offline(pipeline, pipeline.finish(last), jpeg_quality)
    finally:
        src.close()
    return n, size


def _read(pipeline: Pipeline, src: ReplaySource) -> Frame | None:
    """The next frame, timed as the ``source`` (decode) stage; None at the end."""
    with pipeline.timer("source"):
        try:
            return src.next()
        except EndOfStream:
            return None


def _publish_offline(pipeline: Pipeline, events: list[Any], jpeg_quality: int) -> None:
    if not events:
        return
    with pipeline.timer("publish"):
        for e in events:
            json.dumps(e.payload).encode()
            if e.image is not None:
                encode_jpeg(e.image, jpeg_quality)


def run_bench(cfg: Config, video: Path, frames: int = 0, threads: int = 1, repeat: int = 3) -> dict[str, Any]:
    """Bench the pipeline on ``video`` (``frames`` per pass, 0 = all) ``repeat`` times; a JSON-ready dict."""
    cv2.setNumThreads(threads)
    cfg = cfg.model_copy(deep=True)
    cfg.detector.threads = threads
    if cfg.recognizer is not None:
        cfg.recognizer.threads = threads
    t_load = time.perf_counter()
    detector, recognizer = load_detector(cfg), load_recognizer(cfg)
    load_s = time.perf_counter() - t_load
    pipeline = Pipeline(cfg, detector, recognizer, run_id="bench")
    total, skipped, size = 0, 0, (0, 0)
    t0 = time.perf_counter()
    try:
        for _ in range(repeat):
            pipeline.motion = MotionGate(cfg.motion)  # each pass starts like a fresh daemon
            n, size = _one_pass(pipeline, video, frames, cfg.snapshot.jpeg_quality)
            total, skipped = total + n, skipped + pipeline.motion.stats.skipped
    finally:
        detector.close()
        if recognizer is not None:
            recognizer.close()
    elapsed = time.perf_counter() - t0
    stats = pipeline.stats(elapsed, skipped=skipped)
    return {"video": str(video), "frame_size": list(size), "passes": repeat, "threads": threads,
            "model_load_s": round(load_s, 3), "elapsed_s": round(elapsed, 3), **stats,
            "ms_per_frame": round(1000 * elapsed / max(1, total), 3), "peak_rss_mb": peak_rss_mb(),
            "recognizer": cfg.recognizer.model if cfg.recognizer is not None else None}


def print_table(r: dict[str, Any]) -> None:
    """The bench result as a table on stdout."""
    w, h = r["frame_size"]
    print(f"edgecam bench: {r['video']} ({w}x{h}), {r['frames']} frames in {r['passes']} passes, "
          f"{r['threads']} thread(s)")
    print(f"{'stage':<10} {'ms/call':>9} {'ms/frame':>9}")
    for stage in STAGES:
        if stage in r["stage_ms"]:
            print(f"{stage:<10} {r['stage_ms'][stage]:>9.3f} {r['stage_ms_per_frame'][stage]:>9.3f}")
    frames, skipped = r["frames"], r["frames_skipped_motion"]
    print(f"end to end: {r['fps']:.1f} frames/s ({r['ms_per_frame']:.2f} ms/frame, decode included)")
    print(f"frames skipped by motion: {skipped} of {frames} ({100 * skipped / max(1, frames):.1f} %)")
    print(f"detector runs: {r['detector_runs']}, faces: {r['faces']}, crops passing quality: "
          f"{r['crops_passed_quality']}, crops recognized: {r['crops_recognized']} "
          f"(recognizer: {r['recognizer'] or 'none'})")
    per_face = ", ".join(f"{k} {v:.3f} ms" for k, v in r["ms_per_face"].items() if v is not None)
    print(f"per face: {per_face or 'no faces'}")
    print(f"frame pixels sent to the recognizer: {100 * r['recognizer_pixel_fraction']:.3f} %")
    print(f"events: {r['events']}, peak RSS: {r['peak_rss_mb']:.1f} MB, model load: {r['model_load_s']:.2f} s")
