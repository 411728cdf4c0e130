"""The ``edgecam`` command line: detect, enroll, identify, gallery, replay, run, check-config, bench, models verify,
visitors.

Exit codes: 0 ok, 2 bad usage / config / input (one line per problem on stderr, naming the thing that is wrong),
1 anything else. Commands import their stage modules lazily so ``edgecam --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgecam import EdgecamError, __version__
from edgecam.logs import setup_logging

logger = logging.getLogger(__name__)

DEFAULT_CLIP = Path(__file__).parent / "data" / "corridor.mp4"


# ---------------------------------------------------------------------------------------------- commands


def cmd_detect(args: argparse.Namespace) -> int:
    """Run the face detector on images and print one result per image; exit 2 when one could not be read."""
    from edgecam.detect import FaceDetector
    from edgecam.stills import Batch

    batch = Batch(args.images, "detect", args.draw)
    det = None  # loaded with the first image that can be read
    try:
        for path, bgr in batch:
            det = det or FaceDetector(args.model, score_threshold=args.threshold, threads=args.threads)
            boxes, landmarks = det(bgr)
            faces = [
                {"box": [round(float(v), 1) for v in b[:4]], "score": round(float(b[4]), 4),
                 "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in lm]}
                for b, lm in zip(boxes, landmarks, strict=True)
            ]
            _emit(args.json, {"image": path, "faces": faces}, _faces_text)
            batch.save_drawing(path, bgr, faces)
    finally:
        if det is not None:
            det.close()
    return batch.finish()


def _make_recognizer(args: argparse.Namespace, gallery: Path | None) -> Any:
    from edgecam.recognize import make_recognizer

    return make_recognizer(args.recognizer_type, args.recognizer, gallery=gallery, threads=args.threads,
                           threshold=getattr(args, "threshold", None))


def cmd_enroll(args: argparse.Namespace) -> int:
    """Enroll ``DIR/<person>/<photo>`` into a gallery file; exit 2 when nothing could be enrolled."""
    from edgecam.detect import FaceDetector
    from edgecam.recognize import enroll_folder

    folder = Path(args.folder)
    if not folder.is_dir():
        raise EdgecamError(f"{folder}: not a folder (want DIR/<person>/<photo>)")
    det = FaceDetector(args.detector, threads=args.threads)
    rec = _make_recognizer(args, None)
    try:
        results = enroll_folder(det, rec, folder, Path(args.gallery), keep_flagged=args.keep_flagged)
    finally:
        rec.close()
        det.close()
    for r in results:
        print(f"{'ok  ' if r.ok else 'skip'} {r.path}{': ' + r.reason if r.reason else ''}")
    for r in results:
        if r.warning:
            print(f"warn {r.path}: {r.warning}")
    enrolled = sum(r.ok for r in results)
    if not enrolled:
        raise EdgecamError(f"{folder}: none of its {len(results)} files could be enrolled "
                           f"({args.gallery} not written)")
    flagged = sum(bool(r.warning) for r in results)
    print(f"enrolled {enrolled} of {len(results)} files into {args.gallery}"
          f"{f'; {flagged} flagged as possibly someone else (warn lines)' if flagged else ''}")
    return 0


def cmd_identify(args: argparse.Namespace) -> int:
    """Detect and name the faces in images against an enrolled gallery (or with a classifier)."""
    gallery = Path(args.gallery) if args.gallery else None
    if args.recognizer_type == "identity" and gallery is None:
        raise EdgecamError("--gallery is required with --recognizer-type identity")
    if gallery is not None and not gallery.exists():
        raise EdgecamError(f"{gallery}: gallery not found (create it with 'edgecam enroll')")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise EdgecamError(f"--threshold {args.threshold}: want a value between 0 and 1 (exclusive)")
    from edgecam.detect import FaceDetector
    from edgecam.recognize import identify_image
    from edgecam.stills import Batch

    batch = Batch(args.images, "identify", args.draw)
    det = rec = None  # loaded with the first image that can be read
    try:
        for path, bgr in batch:
            det = det or FaceDetector(args.detector, threads=args.threads)
            rec = rec or _make_recognizer(args, gallery)
            faces = identify_image(det, rec, bgr)
            _emit(args.json, {"image": path, "faces": faces}, _faces_text)
            batch.save_drawing(path, bgr, faces)
    finally:
        for model in (rec, det):
            if model is not None:
                model.close()
    return batch.finish()


def cmd_gallery_list(args: argparse.Namespace) -> int:
    """Print the people of a gallery with how many photos each was enrolled with."""
    from edgecam.recognize import Gallery

    counts = Gallery.read(Path(args.gallery)).counts()
    if args.json:
        print(json.dumps({"gallery": args.gallery, "people": [{"name": n, "photos": c} for n, c in counts.items()]}))
        return 0
    for name, n in counts.items():
        print(f"{name}\t{n} photo{'s' if n != 1 else ''}")
    print(f"{len(counts)} {'person' if len(counts) == 1 else 'people'} in {args.gallery}")
    return 0


def cmd_gallery_remove(args: argparse.Namespace) -> int:
    """Remove people from a gallery (all named people must be enrolled; nothing changes otherwise)."""
    from edgecam.recognize import Gallery

    gallery = Gallery.read(Path(args.gallery))
    for name in args.names:
        gallery.require(name, args.gallery)
    for name in dict.fromkeys(args.names):
        print(f"removed {name} ({gallery.remove(name)} photos)")
    gallery.save(Path(args.gallery))
    return 0


def cmd_gallery_rename(args: argparse.Namespace) -> int:
    """Rename a person of a gallery."""
    from edgecam.recognize import Gallery

    gallery = Gallery.read(Path(args.gallery))
    n = gallery.rename(args.old, args.new, args.gallery)
    gallery.save(Path(args.gallery))
    print(f"renamed {args.old} to {args.new} ({n} photos)")
    return 0


def _faces_text(result: dict[str, Any]) -> str:
    from edgecam.stills import face_label

    lines = [f"{result['image']}: {len(result['faces'])} face(s)"]
    for f in result["faces"]:
        marks = " ".join(f"({x:.0f},{y:.0f})" for x, y in f.get("landmarks", []))
        who = ""
        if "name" in f:
            who = f" {f['name']}" + (f" (candidate {face_label(f)})" if f.get("status") == "uncertain"
                                     else f" similarity={f['similarity']:.3f}")
        lines.append(f"  box={f['box']} score={f['score']:.3f}{who} landmarks={marks}")
    return "\n".join(lines)


def _emit(as_json: bool, result: dict[str, Any], text: Callable[[dict[str, Any]], str]) -> None:
    print(json.dumps(result) if as_json else text(result), flush=True)


def _load_config(args: argparse.Namespace) -> Any:
    from edgecam.config import apply_overrides, load_config

    cfg = load_config(Path(args.config)) if args.config else load_config(None)
    if args.log_level is None:
        logging.getLogger().setLevel(cfg.logging.level.upper())
    return apply_overrides(cfg, mqtt_url=args.mqtt, camera=args.camera)


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay a video file through the daemon pipeline; events to --events, MQTT, or stdout."""
    from edgecam.app import replay

    cfg = _load_config(args)
    events = Path(args.events) if args.events else None
    show = None
    if args.annotate or args.report:
        from edgecam.tools.show import Show

        show = Show(Path(args.video), Path(args.annotate) if args.annotate else None,
                    Path(args.report) if args.report else None)
    stats = replay(cfg, Path(args.video), speed=args.speed, events_path=events, show=show,
                   progress=not args.no_progress)
    if show is not None:
        show.finish(stats)
    logger.info("replay done: %d frames at %.1f frames/s, %d skipped by motion, %d detector runs, %d faces, "
                "%d tracks, %d events", stats["frames"], stats["fps"], stats["frames_skipped_motion"],
                stats["detector_runs"], stats["faces"], stats["tracks"], stats["events"])
    logger.debug("replay stats: %s", json.dumps(stats))
    return _undelivered(cfg, stats)


def _undelivered(cfg: Any, stats: dict[str, Any]) -> int:
    """1 with one line on stderr when events are left in the outbox (broker unreachable), else 0."""
    queued = int(stats.get("queue_depth") or 0)
    if cfg.mqtt is None or not queued:
        return 0
    why = stats.get("broker_error") or (f"broker {cfg.mqtt.broker_label()} "
                                        + ("not reached" if not stats.get("broker_ever_connected") else
                                           f"did not acknowledge them within {cfg.mqtt.flush_timeout_s} s"))
    print(f"edgecam replay: {queued} events not delivered ({why}); they stay queued in "
          f"{cfg.state_dir / 'outbox.sqlite3'} for the next run with this state_dir", file=sys.stderr)
    return 1


def cmd_run(args: argparse.Namespace) -> int:
    """Run the camera daemon until SIGTERM / SIGINT."""
    from edgecam.app import run_daemon

    return run_daemon(_load_config(args), Path(args.events) if args.events else None)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file; print every problem, exit 2 when there is one."""
    from edgecam.config import load_config

    load_config(Path(args.file))
    print(f"{args.file}: ok")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure the pipeline and its stages on this machine."""
    from edgecam.tools.bench import bench, parse_threads, print_table

    cfg = _load_config(args)
    result = bench(cfg, Path(args.video), frames=args.frames, threads=parse_threads(args.threads),
                   repeat=args.repeat, baseline=Path(args.baseline) if args.baseline else None)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    if args.plot:
        from edgecam.tools.bench import plot

        logger.info("bench plot: %s", plot(result, Path(args.plot)))
    return 0


def cmd_models_verify(args: argparse.Namespace) -> int:
    """Check every shipped model (or the named ones) against its model.json; exit 2 when one fails."""
    from edgecam.tools.verify import print_verdicts, verdicts_json, verify

    verdicts = verify(args.models)
    if args.json:
        print(verdicts_json(verdicts))
    else:
        print_verdicts(verdicts)
    failed = [v.folder.name for v in verdicts if not v.ok]
    if failed:
        raise EdgecamError(f"{len(failed)} of {len(verdicts)} models failed verification: {', '.join(failed)}")
    return 0


# ---------------------------------------------------------------------------------------------- parser


def _add_runtime_options(p: argparse.ArgumentParser, config_required: bool) -> None:
    p.add_argument("--config", required=config_required, help="YAML config file (required)" if config_required
                   else "YAML config file (default: built-in defaults)")
    p.add_argument("--mqtt", metavar="URL", help="broker mqtt://[user@]host:port or mqtts://..., overrides the "
                   "config; password from EDGECAM_MQTT_PASSWORD (default: config's mqtt section)")
    p.add_argument("--camera", metavar="NAME", help="camera name in topics and events (default: config's, 'camera')")


def _add_model_options(p: argparse.ArgumentParser, recognizer: bool) -> None:
    p.add_argument("--detector", default="face_detector", help="detector model name or folder (default: %(default)s)")
    if recognizer:
        p.add_argument("--recognizer", default="face_recognizer",
                       help="recognizer model name or folder (default: %(default)s)")
        p.add_argument("--recognizer-type", default="identity", choices=["identity", "classifier"],
                       help="recognizer kind (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="inference threads (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with every subcommand of DESIGN.md."""
    parser = argparse.ArgumentParser(prog="edgecam", description="Selective-attention face events for cameras.")
    parser.add_argument("--version", action="version", version=f"edgecam {__version__}")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="log level on stderr (default: the config's logging.level, else info)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("detect", help="detect faces in images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="one JSON line per image (default: text)")
    p.add_argument("--model", default="face_detector", help="detector model name or folder (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=0.5, help="score threshold (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="inference threads (default: %(default)s)")
    p.add_argument("--draw", metavar="DIR", help="also save each image with its boxes and landmarks drawn as "
                   "DIR/<name>.jpg (default: none)")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("enroll", help="enroll DIR/<person>/<photo> into a gallery (any image format OpenCV reads)")
    p.add_argument("folder", metavar="DIR")
    p.add_argument("--gallery", required=True, help="gallery file to write")
    p.add_argument("--keep-flagged", action="store_true", help="also enroll photos that do not look like the "
                   "person's other photos (default: left out when the others agree among themselves)")
    _add_model_options(p, recognizer=True)
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("identify", help="name the faces in images against a gallery")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--gallery", help="gallery file written by 'edgecam enroll' (required for the identity kind)")
    p.add_argument("--json", action="store_true", help="one JSON line per image (default: text)")
    p.add_argument("--threshold", type=float, metavar="SIM", help="similarity a face needs to be named, in (0, 1): "
                   "higher is stricter; the uncertain band moves with it (classifier kind: class probability; "
                   "default: the model's calibrated thresholds.known)")
    p.add_argument("--draw", metavar="DIR", help="also save each image with boxes, landmarks and names drawn as "
                   "DIR/<name>.jpg (default: none)")
    _add_model_options(p, recognizer=True)
    p.set_defaults(func=cmd_identify)

    p = sub.add_parser("gallery", help="see or change a gallery: list, remove, rename people")
    gsub = p.add_subparsers(dest="gallery_command", required=True, metavar="ACTION")
    g = gsub.add_parser("list", help="the people enrolled, with their number of photos")
    g.add_argument("--gallery", required=True, help="gallery file written by 'edgecam enroll'")
    g.add_argument("--json", action="store_true", help="print JSON instead of text (default: text)")
    g.set_defaults(func=cmd_gallery_list)
    g = gsub.add_parser("remove", help="remove people")
    g.add_argument("names", nargs="+", metavar="NAME")
    g.add_argument("--gallery", required=True, help="gallery file written by 'edgecam enroll'")
    g.set_defaults(func=cmd_gallery_remove)
    g = gsub.add_parser("rename", help="rename a person")
    g.add_argument("old", metavar="OLD")
    g.add_argument("new", metavar="NEW")
    g.add_argument("--gallery", required=True, help="gallery file written by 'edgecam enroll'")
    g.set_defaults(func=cmd_gallery_rename)

    p = sub.add_parser("replay", help="replay a video file through the whole pipeline")
    p.add_argument("video", metavar="VIDEO")
    p.add_argument("--speed", choices=["max", "realtime"], default="max", help="pace (default: %(default)s)")
    p.add_argument("--events", metavar="OUT.jsonl", help="also write events as JSON lines to this file")
    p.add_argument("--annotate", metavar="OUT.webm", help="write the video with faces, landmarks, identities and "
                   "track ids drawn (.webm: VP8, plays in browsers; .mp4: H.264 if this OpenCV has it, else mp4v; "
                   ".avi: MJPG; default: none)")
    p.add_argument("--report", metavar="OUT.html", help="write a one-page HTML report: event timeline, best crop "
                   "of each track (in OUT_files/), stats (default: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on a terminal, no progress lines "
                   "in a log (default: a bar with ETA on a terminal, a stats line every 10 s otherwise)")
    _add_runtime_options(p, config_required=False)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("run", help="run the camera daemon")
    p.add_argument("--events", metavar="OUT.jsonl", help="also write events as JSON lines to this file")
    _add_runtime_options(p, config_required=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("bench", help="measure the pipeline and its stages on this machine")
    p.add_argument("video", nargs="?", default=str(DEFAULT_CLIP), metavar="VIDEO",
                   help="clip to replay (default: the bundled clip)")
    p.add_argument("--frames", type=int, default=0, help="stop after this many frames, 0 = whole clip "
                   "(default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="passes over the clip (default: %(default)s)")
    p.add_argument("--threads", default="1,all", metavar="LIST", help="inference and OpenCV thread counts to "
                   "run, comma-separated, 'all' = every core (default: %(default)s)")
    p.add_argument("--baseline", metavar="PATH", help="also run a reference detector in the same pipeline and "
                   "print ratios: a YuNet .onnx (cv2.FaceDetectorYN) or an edgecam model folder (default: none)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (default: table)")
    p.add_argument("--plot", metavar="OUT.png", help="also draw ms per frame by stage for each run (needs "
                   "matplotlib; default: none)")
    _add_runtime_options(p, config_required=False)
    p.set_defaults(func=cmd_bench)

    from edgecam.tools import visitors

    visitors.add_parser(sub)

    p = sub.add_parser("models", help="model artifacts: verify them against their model.json")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    v = msub.add_parser("verify", help="check sha256, input spec, a forward pass and the model card of each model")
    v.add_argument("models", nargs="*", metavar="MODEL", help="model names or folders (default: every shipped model)")
    v.add_argument("--json", action="store_true", help="print JSON instead of a table (default: table)")
    v.set_defaults(func=cmd_models_verify)
    return parser


# ---------------------------------------------------------------------------------------------- entry


def _user_error_lines(exc: BaseException) -> list[str] | None:
    """The lines to print for an error the user can fix, or None for an internal error."""
    from pydantic import ValidationError

    if isinstance(exc, EdgecamError):
        return str(exc).splitlines() or [type(exc).__name__]
    if isinstance(exc, ValidationError):
        return [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return [f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)]
    return None


def _names_its_file(exc: BaseException) -> bool:
    from edgecam.config import ConfigError

    return isinstance(exc, ConfigError)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, map errors to exit codes (0 ok, 2 user error, 1 other)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level or "info")
    if args.log_level != "debug":  # ffmpeg and OpenCV print to stderr directly; our errors say what failed
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # stdout closed by the reader (``| head``): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        lines = _user_error_lines(exc)
        if lines is not None:
            prefix = "" if _names_its_file(exc) else f"edgecam {args.command}: "
            for line in lines:
                print(f"{prefix}{line}", file=sys.stderr)
            return 2
        logger.debug("internal error", exc_info=True)
        print(f"edgecam {args.command}: internal error: {type(exc).__name__}: {exc} "
              "(run with --log-level debug for the traceback)", file=sys.stderr)
        return 1
