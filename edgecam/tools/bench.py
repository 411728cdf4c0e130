"""``edgecam bench``: the daemon pipeline on a clip, timed per stage, on this machine.

The clip is replayed at full speed ``repeat`` times through the same ``Pipeline`` the daemon runs (motion
gate, detector, crops and quality gate, recognizer when configured, tracker); the publish stage is what the
daemon does for each event without the network (JSON encoding, snapshot JPEG). Each setting runs in a fresh
process (its own peak RSS, its own thread pools): single thread and all threads by default, and with
``--baseline PATH`` the same pipeline with a reference detector in place of ours, side by side, with ratios.

Figures per run: frames/s end to end (decode included), ms per stage (per call and per frame), ms per face
for crops and the recognizer, frames skipped by the motion gate, detector runs, faces, events, peak RSS.
The selective-attention figures say what looking only where a face is saves: the frame pixels and the
multiply-accumulates (MACs) the recognizer spent on aligned crops, plus what the detector spent to find
them, against a full-frame model (the recognizer's network run over every whole frame, its MACs scaled by
pixels, as a fully convolutional model's are). MACs need the ``onnx`` package; without it they are left out.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2

from edgecam import EdgecamError
from edgecam.config import Config
from edgecam.manifest import load_manifest
from edgecam.motion import MotionGate
from edgecam.outputs import encode_jpeg
from edgecam.pipeline import STAGES, Detector, Pipeline, load_detector, load_recognizer
from edgecam.sources import EndOfStream, Frame, ReplaySource
from edgecam.tools.baseline import YuNetDetector, detector_info, is_model_folder
from edgecam.tools.macs import MacsUnavailable, macs

logger = logging.getLogger(__name__)

STAGE_LABELS = {"source": "decode", "motion": "motion gate", "detect": "detector", "crops": "crops + quality",
                "recognize": "recognizer", "track": "tracker", "publish": "publish"}


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports KB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def all_threads() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def parse_threads(text: str) -> list[int]:
    """``"1,all"`` -> ``[1, <cores>]`` (duplicates dropped, order kept); EdgecamError naming a bad item."""
    out: list[int] = []
    for item in text.split(","):
        item = item.strip().lower()
        n = all_threads() if item == "all" else int(item) if item.isdigit() else 0
        if n < 1 or n > 256:
            raise EdgecamError(f"--threads {text!r}: {item!r} is not a thread count (1-256) or 'all'")
        if n not in out:
            out.append(n)
    return out


# ---------------------------------------------------------------------------------------------- one run


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


def load_bench_detector(cfg: Config, baseline: Path | None) -> Detector:
    """Our detector (``cfg.detector``), or the baseline: a model folder (FaceDetector) or a YuNet ``.onnx``."""
    if baseline is None:
        return load_detector(cfg)
    if is_model_folder(baseline):
        from edgecam.detect import FaceDetector

        return FaceDetector(baseline, threads=cfg.detector.threads, providers=cfg.detector.providers)
    return YuNetDetector(baseline)


def run_bench(cfg: Config, video: Path, frames: int = 0, threads: int = 1, repeat: int = 3,
              baseline: Path | None = None) -> dict[str, Any]:
    """One run in this process: ``video`` (``frames`` per pass, 0 = all) ``repeat`` times; a JSON-ready dict."""
    cv2.setNumThreads(threads)
    cfg = cfg.model_copy(deep=True)
    cfg.detector.threads = threads
    if cfg.recognizer is not None:
        cfg.recognizer.threads = threads
    t_load = time.perf_counter()
    detector, recognizer = load_bench_detector(cfg, baseline), load_recognizer(cfg)
    load_s = time.perf_counter() - t_load
    info = detector_info(detector)
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
    return {"detector": {"role": "baseline" if baseline is not None else "ours", "label": info.label,
                         "onnx": str(info.onnx_path), "file_bytes": info.onnx_path.stat().st_size,
                         "input_shape": list(info.input_shape(*size))},
            "recognizer": _recognizer_info(cfg, recognizer, pipeline.crop_size),
            "video": str(video), "frame_size": list(size), "passes": repeat, "threads": threads,
            "model_load_s": round(load_s, 3), "elapsed_s": round(elapsed, 3),
            **pipeline.stats(elapsed, skipped=skipped),
            "ms_per_frame": round(1000 * elapsed / max(1, total), 3), "peak_rss_mb": peak_rss_mb()}


def _recognizer_info(cfg: Config, recognizer: Any, crop_size: tuple[int, int]) -> dict[str, Any] | None:
    """The recognizer's model, ONNX file and input tensor (1, C, H, W) of one crop; None without one."""
    manifest = getattr(recognizer, "manifest", None)
    if manifest is None or cfg.recognizer is None:
        return None
    channels = 1 if manifest.input.get("color") == "gray" else 3
    return {"model": str(cfg.recognizer.model), "onnx": str(manifest.onnx_path),
            "input_shape": [1, channels, crop_size[1], crop_size[0]]}


def _child(cfg: Config, video: Path, frames: int, threads: int, repeat: int, baseline: Path | None) -> dict[str, Any]:
    """``run_bench`` in a fresh process (spawned: nothing inherited, peak RSS its own)."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    logging.basicConfig(level=logging.WARNING)
    return run_bench(cfg, video, frames, threads, repeat, baseline)


# ---------------------------------------------------------------------------------------------- all runs


def bench(cfg: Config, video: Path, frames: int = 0, threads: list[int] | None = None, repeat: int = 3,
          baseline: Path | None = None) -> dict[str, Any]:
    """Every run (our detector, and the baseline's, at each thread count), each in a fresh process; the
    selective-attention figures and baseline/ours ratios. A JSON-ready dict."""
    threads = threads or [1, all_threads()]
    _check_inputs(video, baseline)
    runs = []
    ctx = get_context("spawn")
    for t in threads:
        for base in (None, baseline) if baseline is not None else (None,):
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                runs.append(pool.submit(_child, cfg, video, frames, t, repeat, base).result())
            r = runs[-1]
            logger.info("bench: %s, %d thread(s): %.1f frames/s", r["detector"]["label"], t, r["fps"])
    for r in runs:
        add_macs(r)
    ours = [r for r in runs if r["detector"]["role"] == "ours"]
    return {"video": str(video), "frame_size": ours[0]["frame_size"], "frames": ours[0]["frames"],
            "passes": repeat, "threads": threads, "runs": runs, "attention": attention(ours[0]),
            "ratios": _ratios(runs)}


def _check_inputs(video: Path, baseline: Path | None) -> None:
    """Fail fast, in one line, on a missing clip or baseline (before any process is spawned)."""
    if not video.is_file():
        raise EdgecamError(f"{video}: no such video file")
    if baseline is None:
        return
    if not baseline.exists():
        raise EdgecamError(f"--baseline {baseline}: no such model file or folder")
    if is_model_folder(baseline):
        load_manifest(baseline)
    else:
        YuNetDetector(baseline).close()


def _macs_or_none(path: str, shape: list[int]) -> int | None:
    try:
        return macs(Path(path), tuple(shape))
    except MacsUnavailable as e:
        logger.info("MACs left out: %s", e)
        return None


def add_macs(run: dict[str, Any]) -> None:
    """Put the detector's MACs per run and the recognizer's per crop into a run's dict (None without onnx)."""
    d = run["detector"]
    d["macs_per_run"] = _macs_or_none(d["onnx"], d["input_shape"])
    if run["recognizer"] is not None:
        run["recognizer"]["macs_per_crop"] = _macs_or_none(run["recognizer"]["onnx"], run["recognizer"]["input_shape"])


def attention(run: dict[str, Any]) -> dict[str, Any]:
    """Pixels and MACs spent by selective attention vs a full-frame model, per frame, for one run."""
    w, h = run["frame_size"]
    frames, frame_px = max(1, run["frames"]), w * h
    rec = run["recognizer"]
    out: dict[str, Any] = {"frames": run["frames"], "frames_skipped_motion": run["frames_skipped_motion"],
                           "detector_runs": run["detector_runs"], "crops_recognized": run["crops_recognized"],
                           "frame_pixels": frame_px, "recognizer": None if rec is None else rec["model"]}
    det_macs = run["detector"]["macs_per_run"]
    out["detector_mmacs_per_frame"] = None if det_macs is None else round(det_macs * run["detector_runs"]
                                                                          / frames / 1e6, 3)
    if rec is None:
        return out
    crop_px = rec["input_shape"][2] * rec["input_shape"][3]
    out["crop_pixels"] = crop_px
    out["recognizer_pixels_per_frame"] = round(run["crops_recognized"] * crop_px / frames, 1)
    out["recognizer_pixel_fraction"] = round(run["crops_recognized"] * crop_px / (frames * frame_px), 6)
    per_crop = rec["macs_per_crop"]
    if per_crop is None or det_macs is None:
        return out
    rec_macs = per_crop * run["crops_recognized"] / frames
    full = per_crop * frame_px / crop_px
    spent = rec_macs + det_macs * run["detector_runs"] / frames
    out.update(recognizer_mmacs_per_crop=round(per_crop / 1e6, 3),
               recognizer_mmacs_per_frame=round(rec_macs / 1e6, 3),
               spent_mmacs_per_frame=round(spent / 1e6, 3), full_frame_mmacs_per_frame=round(full / 1e6, 3),
               recognizer_saving=round(full / rec_macs, 1) if rec_macs else None,
               saving=round(full / spent, 2) if spent else None)
    return out


RATIO_KEYS = {"fps": ("fps",), "ms_per_frame": ("ms_per_frame",), "detect_ms": ("stage_ms", "detect"),
              "detector_macs": ("detector", "macs_per_run"), "detector_bytes": ("detector", "file_bytes"),
              "peak_rss_mb": ("peak_rss_mb",), "faces": ("faces",), "events": ("events",)}


def _get(run: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = run
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _ratios(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """baseline / ours for each thread count that has both."""
    out: dict[str, dict[str, float | None]] = {}
    for base in (r for r in runs if r["detector"]["role"] == "baseline"):
        ours = next(r for r in runs if r["detector"]["role"] == "ours" and r["threads"] == base["threads"])
        ratio = {}
        for name, path in RATIO_KEYS.items():
            a, b = _get(ours, path), _get(base, path)
            ratio[name] = round(b / a, 2) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a \
                else None
        out[str(base["threads"])] = ratio
    return out


# ---------------------------------------------------------------------------------------------- table


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _rows(runs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(label, one cell per run) for the table."""
    rows: list[tuple[str, list[str]]] = []
    for stage in STAGES:
        per = "ms/face" if stage in ("crops", "recognize") else "ms/call" if stage == "detect" else "ms/frame"
        cells = []
        for r in runs:
            v = r["ms_per_face"][stage] if per == "ms/face" else \
                r["stage_ms"].get(stage) if per == "ms/call" else r["stage_ms_per_frame"].get(stage)
            cells.append(_fmt(v, 3))
        rows.append((f"{STAGE_LABELS[stage]} {per}", cells))

    def mmacs(v: int | None) -> str:
        return "-" if v is None else f"{v / 1e6:.1f}"

    rows += [
        ("end to end ms/frame", [_fmt(r["ms_per_frame"]) for r in runs]),
        ("end to end frames/s", [_fmt(r["fps"], 1) for r in runs]),
        ("peak RSS MB", [_fmt(r["peak_rss_mb"], 1) for r in runs]),
        ("detector MMACs/run", [mmacs(r["detector"]["macs_per_run"]) for r in runs]),
        ("detector file KB", [_fmt(r["detector"]["file_bytes"] / 1000, 1) for r in runs]),
        ("detector runs", [str(r["detector_runs"]) for r in runs]),
        ("faces", [str(r["faces"]) for r in runs]),
        ("crops recognized", [str(r["crops_recognized"]) for r in runs]),
        ("events", [str(r["events"]) for r in runs]),
    ]
    return rows


def _ratio_cells(result: dict[str, Any]) -> tuple[list[str], dict[str, list[str]]]:
    """Extra columns baseline/ours (header, cells by row label)."""
    keys = {"detector ms/call": "detect_ms", "end to end ms/frame": "ms_per_frame", "end to end frames/s": "fps",
            "peak RSS MB": "peak_rss_mb", "detector MMACs/run": "detector_macs", "detector file KB": "detector_bytes",
            "faces": "faces", "events": "events"}
    heads = [f"base/ours {t}t" for t in result["ratios"]]
    cells = {label: [_fmt(result["ratios"][t].get(k)) for t in result["ratios"]] for label, k in keys.items()}
    return heads, cells


def print_table(result: dict[str, Any]) -> None:
    """The bench result as a table on stdout: one column per run, ratio columns with a baseline."""
    runs = result["runs"]
    w, h = result["frame_size"]
    print(f"edgecam bench: {result['video']} ({w}x{h}), {result['frames']} frames in {result['passes']} passes "
          f"per run, each run in a fresh process")
    for role in ("ours", "baseline"):
        r = next((r for r in runs if r["detector"]["role"] == role), None)
        if r is not None:
            print(f"  {role}: detector {r['detector']['label']} ({r['detector']['onnx']})")
    rec = runs[0]["recognizer"]
    print(f"  recognizer: {rec['model'] + ' (' + rec['onnx'] + ')' if rec else 'none (faces stay unknown)'}")
    heads = [f"{'ours' if r['detector']['role'] == 'ours' else 'base'} {r['threads']}t" for r in runs]
    ratio_heads, ratio_cells = _ratio_cells(result)
    print(f"{'':<24}" + "".join(f"{x:>10}" for x in heads) + "".join(f"{x:>15}" for x in ratio_heads))
    for label, cells in _rows(runs):
        extra = ratio_cells.get(label, ["" for _ in ratio_heads])
        print(f"{label:<24}" + "".join(f"{c:>10}" for c in cells) + "".join(f"{c:>15}" for c in extra))
    print_attention(result["attention"])


def print_attention(a: dict[str, Any]) -> None:
    """The selective-attention lines of the table."""
    frames, skipped = a["frames"], a["frames_skipped_motion"]
    print(f"selective attention (ours, 1st run): motion gate skipped {skipped} of {frames} frames "
          f"({100 * skipped / max(1, frames):.1f} %), detector ran on {a['detector_runs']}")
    if a["recognizer"] is None:
        print("  no recognizer configured (--config with a recognizer section): no crop figures")
        return
    print(f"  pixels: the recognizer saw {a['recognizer_pixels_per_frame']:.0f} px/frame "
          f"({a['crops_recognized']} crops of {a['crop_pixels']} px) = {100 * a['recognizer_pixel_fraction']:.3f} % "
          f"of the {a['frame_pixels']} px frames")
    if a.get("saving") is None:
        print("  MACs: not counted (needs the onnx package)")
        return
    rec_saving = a["recognizer_saving"]
    print(f"  MACs/frame: recognizer {a['recognizer_mmacs_per_frame']:.2f} M on crops "
          f"({a['recognizer_mmacs_per_crop']:.2f} M/crop) vs {a['full_frame_mmacs_per_frame']:.1f} M for its network "
          f"on the full frame ({'-' if rec_saving is None else f'{rec_saving:.1f}x'} fewer)")
    print(f"  with the detector ({a['detector_mmacs_per_frame']:.2f} M/frame): {a['spent_mmacs_per_frame']:.2f} "
          f"M/frame in all, {a['saving']:.2f}x fewer than the full-frame network")


def plot_title(result: dict[str, Any]) -> str:
    """``edgecam bench: corridor.mp4 (480x270), 76 frames x 2 passes`` (``frames`` counts every pass)."""
    w, h = result["frame_size"]
    passes = max(1, int(result["passes"]))
    per_pass = int(result["frames"]) // passes
    return (f"edgecam bench: {Path(result['video']).name} ({w}x{h}), {per_pass} frames x {passes} "
            f"pass{'es' if passes > 1 else ''}")


def plot(result: dict[str, Any], path: Path) -> Path:
    """Stacked bars of ms per frame by stage, one bar per run, frames/s at the end of each (needs matplotlib)."""
    fig = plot_figure(result)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_figure(result: dict[str, Any]) -> Any:
    """The matplotlib figure of ``plot``: the legend beside the bars, the title with frames per pass."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgecamError("--plot needs matplotlib (pip install matplotlib)") from None
    runs = result["runs"]
    labels = [f"{r['detector']['label'].split(':')[0]} {r['threads']}t" for r in runs]
    fig, ax = plt.subplots(figsize=(8, 1.4 + 0.5 * len(runs)))
    left = [0.0] * len(runs)
    for stage in STAGES:
        widths = [float(r["stage_ms_per_frame"].get(stage, 0.0)) for r in runs]
        ax.barh(labels, widths, left=left, label=STAGE_LABELS[stage])
        left = [a + b for a, b in zip(left, widths, strict=True)]
    for y, (x, r) in enumerate(zip(left, runs, strict=True)):
        ax.text(x, y, f" {r['fps']:.1f} frames/s", va="center", fontsize=8)
    ax.set_xlabel("ms per frame (stage totals / frames)")
    ax.set_title(plot_title(result), fontsize=9)
    ax.set_xlim(0, max(left) * 1.3 if max(left) > 0 else 1)
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="stage", title_fontsize=7,
              frameon=False)  # beside the bars: never over the axis or its label
    return fig
