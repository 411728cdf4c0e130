"""Evaluate the face detector against YuNet and the Haar cascade, in one run, on the WebFaces val split.

    python -m training.detector.evaluate --fp32 runs/detector/main/face_detector_fp32.onnx --update-manifest

Detectors: ours (the shipped int8-weight file, and the fp32 export when ``--fp32`` is given), YuNet
(``cv2.FaceDetectorYN`` on the anchor file) and OpenCV's Haar frontal cascade, all on the same images.

Box conventions differ (ours: derived from landmarks, see ``data.py``; YuNet: WIDER-style; Haar: a square
around the inner face), so each detector gets one fixed box correction fitted on ``--calib`` TRAIN images
(never val): the median shift of the centre (in box widths/heights) and the median w, h ratio between its
boxes and the matched ground-truth boxes (IoU >= 0.3). AP is reported with that correction (the main
figures) and raw. Measures: AP at IoU 0.5 and 0.3 (all-point interpolated), detection rate (recall) at 10
and 50 false positives over the whole split, landmark NME (mean point error over inter-ocular distance,
matched faces), single-thread latency per 320x240 frame (median over many runs, pre- and post-processing
included, detectors interleaved round by round), parameters, MACs at 320x240 and file sizes.
Writes ``OUT/eval.json``, ``OUT/pr.png`` and a markdown table; ``--update-manifest`` stores the figures
and this command in ``model.json`` (the sha256 is unchanged: metrics are not part of the weights).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import cv2.data  # the stubs leave out this subpackage (the Haar cascade files)
import numpy as np
import onnx
from onnx import shape_inference
from tqdm import tqdm

from edgecam.detect import FaceDetector
from edgecam.manifest import sha256_file
from training.detector.data import boxes_from_landmarks, iou, read_bgr, read_landmarks, read_split
from training.detector.pseudo_label import YUNET, yunet_detect

BASELINE_OPERATING = {"YuNet": 0.6, "Haar frontal": 0.0}  # thresholds in use (ours: model.json's)
Detect = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]  # bgr -> boxes (N,5), landmarks (N,4,2)


# ---------------------------------------------------------------------------------------------- detectors


def ours(folder: Path, threshold: float | None) -> Detect:
    """Our detector through the runtime class (pre/post-processing included); None: the manifest's threshold."""
    det = FaceDetector(folder, score_threshold=threshold, threads=1)
    return lambda bgr: det(bgr)


def model_folder(onnx_path: Path, shipped: Path, folder: Path, session_config: dict[str, str]) -> Path:
    """A model folder for another ONNX file: the shipped manifest with this file, its sha256 and session config."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx_path, folder / "face_detector.onnx")
    data = json.loads((shipped / "model.json").read_text())
    data.update(file="face_detector.onnx", sha256=sha256_file(folder / "face_detector.onnx"),
                session_config=session_config)
    (folder / "model.json").write_text(json.dumps(data))
    return folder


def yunet(path: str, threshold: float) -> Detect:
    """YuNet via cv2.FaceDetectorYN: boxes and 4 landmarks (mouth centre = mean of the mouth corners)."""
    det = cv2.FaceDetectorYN.create(path, "", (320, 320), threshold, 0.3, 5000)

    def run(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = yunet_detect(det, bgr, 1.0)  # (N, 13) box, 4 landmarks, score
        return np.hstack([d[:, :4], d[:, 12:13]]), d[:, 4:12].reshape(-1, 4, 2)

    return run


def haar() -> Detect:
    """OpenCV's Haar frontal cascade; the score is the cascade's level weight."""
    cc = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

    def run(bgr: np.ndarray) -> tuple[np.ndarray, None]:
        grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        rects, _, weights = cc.detectMultiScale3(grey, scaleFactor=1.1, minNeighbors=3, outputRejectLevels=True)
        if len(rects) == 0:
            return np.zeros((0, 5), np.float32), None
        r = np.asarray(rects, np.float32)
        return np.hstack([r[:, :2], r[:, :2] + r[:, 2:], np.asarray(weights, np.float32).reshape(-1, 1)]), None

    return run


# --------------------------------------------------------------------------------------------- matching


def load_split(root: Path, split: str, limit: int = 0) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """BGR images, convention boxes (K, 4) and landmarks (K, 4, 2) of the first ``limit`` images of a split."""
    lms = read_landmarks(root)
    names = read_split(root, split)[: limit or None]
    gl = [lms.get(n, np.zeros((0, 4, 2), np.float32)) for n in names]
    return [read_bgr(root / "images" / n) for n in names], [boxes_from_landmarks(g) for g in gl], gl


def run_detector(det: Detect, images: list[np.ndarray], desc: str) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Detections of every image."""
    return [det(im) for im in tqdm(images, desc=desc, mininterval=5, leave=False)]


def calibration(dets: list[tuple[np.ndarray, np.ndarray | None]], gts: list[np.ndarray]) -> np.ndarray:
    """Median (dcx/w, dcy/h, gw/w, gh/h) from a detector's confident boxes to matched GT boxes (IoU >= 0.3)."""
    rows = []
    for (d, _), g in zip(dets, gts, strict=True):
        d = d[d[:, 4] >= np.median(d[:, 4])] if len(d) else d
        if len(d) == 0 or len(g) == 0:
            continue
        m = iou(g, d[:, :4])
        for gi, di in enumerate(m.argmax(1)):
            if m[gi, di] >= 0.3:
                b = d[di]
                w, h = b[2] - b[0], b[3] - b[1]
                gw, gh = g[gi, 2] - g[gi, 0], g[gi, 3] - g[gi, 1]
                rows.append([((g[gi, 0] + g[gi, 2]) - (b[0] + b[2])) / 2 / w,
                             ((g[gi, 1] + g[gi, 3]) - (b[1] + b[3])) / 2 / h, gw / w, gh / h])
    return np.median(np.array(rows), 0) if rows else np.array([0.0, 0.0, 1.0, 1.0])


def apply_calibration(boxes: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Boxes (N, 5) moved and resized by a calibration (dcx/w, dcy/h, gw/w, gh/h)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2 + c[0] * w, (boxes[:, 1] + boxes[:, 3]) / 2 + c[1] * h
    out = boxes.copy()
    out[:, 0], out[:, 2] = cx - c[2] * w / 2, cx + c[2] * w / 2
    out[:, 1], out[:, 3] = cy - c[3] * h / 2, cy + c[3] * h / 2
    return out


def match(dets: list[np.ndarray], gts: list[np.ndarray], thr: float) -> tuple[np.ndarray, np.ndarray, int]:
    """VOC-style greedy matching: (scores, is_tp) of all detections sorted by score, and the GT count."""
    scores, tps = [], []
    for d, g in zip(dets, gts, strict=True):
        order = np.argsort(-d[:, 4])
        d = d[order]
        used = np.zeros(len(g), bool)
        m = iou(d[:, :4], g) if len(g) and len(d) else np.zeros((len(d), len(g)))
        for i in range(len(d)):
            cand = np.flatnonzero(~used & (m[i] >= thr))  # m is (len(d), 0) when there is no face
            tp = len(cand) > 0
            if tp:
                used[cand[np.argmax(m[i, cand])]] = True
            scores.append(d[i, 4])
            tps.append(tp)
    order = np.argsort(-np.array(scores), kind="stable")
    return np.array(scores)[order], np.array(tps, bool)[order], sum(len(g) for g in gts)


def pr_curve(tps: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each detection in score order."""
    tp = np.cumsum(tps)
    fp = np.cumsum(~tps)
    return tp / np.maximum(tp + fp, 1), tp / max(n_gt, 1)


def average_precision(tps: np.ndarray, n_gt: int) -> float:
    """All-point interpolated AP."""
    prec, rec = pr_curve(tps, n_gt)
    prec = np.concatenate([[1.0], prec, [0.0]])
    rec = np.concatenate([[0.0], rec, [rec[-1] if len(rec) else 0.0]])
    prec = np.maximum.accumulate(prec[::-1])[::-1]
    return float(np.sum((rec[1:] - rec[:-1]) * prec[1:]))


def rate_at_fp(tps: np.ndarray, n_gt: int, n_fp: int) -> float:
    """Recall reached before the ``n_fp``-th false positive (over the whole split)."""
    fp = np.cumsum(~tps)
    ok = fp < n_fp + 1
    return float(np.cumsum(tps)[ok][-1] / n_gt) if ok.any() else 0.0


def landmark_nme(dets: list[tuple[np.ndarray, np.ndarray | None]], gts: list[np.ndarray],
                 gt_lms: list[np.ndarray], points: slice = slice(0, 4)) -> float | None:
    """Mean error of landmarks ``points`` over inter-ocular distance, each GT face vs its best-IoU detection (>= 0.5).

    WebFaces' nose and mouth points are not YuNet's (nose tip, mouth-corner mean), so the eyes alone
    (``points=slice(0, 2)``) are the like-for-like comparison with YuNet.
    """
    errs = []
    for (d, lm), g, gl in zip(dets, gts, gt_lms, strict=True):
        if lm is None:
            return None
        if len(d) == 0 or len(g) == 0:
            continue
        m = iou(g, d[:, :4])
        for gi, di in enumerate(m.argmax(1)):
            if m[gi, di] >= 0.5:
                iod = np.linalg.norm(gl[gi, 0] - gl[gi, 1])
                errs.append(np.linalg.norm(lm[di, points] - gl[gi, points], axis=1).mean() / max(iod, 1e-6))
    return float(np.mean(errs)) if errs else None


# -------------------------------------------------------------------------------------------- cost figures


def latency(dets: dict[str, Detect], frame: np.ndarray, runs: int, rounds: int = 6) -> dict[str, float]:
    """Median ms per call per detector, single thread, detectors interleaved in ``rounds`` rounds."""
    cv2.setNumThreads(1)
    times: dict[str, list[float]] = {k: [] for k in dets}
    for det in dets.values():
        for _ in range(10):
            det(frame)
    for _ in range(rounds):
        for name, det in dets.items():
            for _ in range(max(1, runs // rounds)):
                t = time.perf_counter()
                det(frame)
                times[name].append(time.perf_counter() - t)
    return {k: float(np.median(v) * 1e3) for k, v in times.items()}


def conv_macs(path: Path, h: int = 256, w: int = 320) -> int:
    """Multiply-accumulates of the Conv/Gemm/MatMul nodes of an ONNX file for a (1, C, h, w) input."""
    m = onnx.load(str(path))
    inp = m.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    dims[2].ClearField("dim_param")
    dims[3].ClearField("dim_param")
    dims[0].dim_value, dims[2].dim_value, dims[3].dim_value = 1, h, w
    del m.graph.value_info[:]  # shapes stored for another input size
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    m = shape_inference.infer_shapes(m)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in
              list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)}
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    weights = {n.output[0]: inits.get(n.input[0]) for n in m.graph.node if n.op_type == "DequantizeLinear"}
    total = 0
    for n in m.graph.node:
        if n.op_type == "Conv":
            wshape = inits.get(n.input[1]) or weights.get(n.input[1]) or shapes.get(n.input[1])
            out = shapes.get(n.output[0])
            if wshape and out:
                total += int(np.prod(out)) * int(np.prod(wshape[1:]))
    return total


# ------------------------------------------------------------------------------------------------- report


HEIGHT_BINS = (0, 16, 24, 32, 48, 64, 128, 10_000)  # GT box height buckets (pixels) for recall by size


def recall_by_height(dets: list[np.ndarray], gts: list[np.ndarray], op: float) -> dict[str, list]:
    """Recall at IoU 0.3 of the detections scoring >= ``op``, per GT box-height bucket (with face counts)."""
    hit, tot = np.zeros(len(HEIGHT_BINS) - 1), np.zeros(len(HEIGHT_BINS) - 1)
    for d, g in zip(dets, gts, strict=True):
        if len(g) == 0:
            continue
        b = np.clip(np.digitize(g[:, 3] - g[:, 1], HEIGHT_BINS) - 1, 0, len(tot) - 1)
        d = d[d[:, 4] >= op]
        found = (iou(g, d[:, :4]) >= 0.3).any(1) if len(d) else np.zeros(len(g), bool)
        np.add.at(tot, b, 1)
        np.add.at(hit, b, found)
    labels = [f"{lo}-{hi}" if hi < 10_000 else f">={lo}" for lo, hi in zip(HEIGHT_BINS[:-1], HEIGHT_BINS[1:],
                                                                           strict=True)]
    return {"bins": labels, "faces": tot.astype(int).tolist(),
            "recall": [round(float(h / t), 3) if t else None for h, t in zip(hit, tot, strict=True)]}


def evaluate_one(name: str, det: Detect, images: list[np.ndarray], gts: list[np.ndarray], gt_lms: list[np.ndarray],
                 calib: np.ndarray, op: float) -> tuple[dict, dict]:
    """Metrics of one detector on the eval images and its PR curve at IoU 0.5 (calibrated); ``op`` is its
    operating threshold for the recall-by-size figures."""
    dets = run_detector(det, images, name)
    boxes = [apply_calibration(d, calib) for d, _ in dets]
    raw = [d for d, _ in dets]
    res: dict = {"calibration": [round(float(v), 3) for v in calib]}
    curve: dict = {}
    for thr in (0.5, 0.3):
        _, tps, n_gt = match(boxes, gts, thr)
        res[f"ap{int(thr * 100)}"] = round(average_precision(tps, n_gt), 4)
        res[f"ap{int(thr * 100)}_raw"] = round(average_precision(match(raw, gts, thr)[1], n_gt), 4)
        if thr == 0.5:
            res["dr_at_10fp"] = round(rate_at_fp(tps, n_gt, 10), 4)
            res["dr_at_50fp"] = round(rate_at_fp(tps, n_gt, 50), 4)
            curve = dict(zip(("precision", "recall"), pr_curve(tps, n_gt), strict=True))
    pairs = [(b, lm) for b, (_, lm) in zip(boxes, dets, strict=True)]
    for key, pts in (("landmark_nme", slice(0, 4)), ("eye_nme", slice(0, 2))):
        nme = landmark_nme(pairs, gts, gt_lms, pts)
        res[key] = None if nme is None else round(nme, 4)
    res["operating_threshold"] = op
    res["recall_by_height"] = recall_by_height(boxes, gts, op)
    return res, curve


def plot_pr(curves: dict[str, dict], path: Path) -> None:
    """PR curves (IoU 0.5) of all detectors in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, c in curves.items():
        if len(c.get("recall", [])):
            ax.plot(c["recall"], c["precision"], label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("WebFaces val, IoU 0.5 (box convention calibrated on train)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict[str, dict]) -> str:
    """Markdown table of the results."""
    cols = [("ap30", "AP@0.3"), ("ap50", "AP@0.5"), ("ap50_raw", "AP@0.5 raw boxes"), ("dr_at_10fp", "DR@10FP"),
            ("dr_at_50fp", "DR@50FP"), ("landmark_nme", "NME 4 points"), ("eye_nme", "NME eyes"),
            ("latency_ms", "ms / 320x240"), ("params", "params"), ("macs_320x240", "MACs 320x240"),
            ("file_bytes", "file bytes")]
    lines = ["| detector | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in results.items():
        cells = ["-" if r.get(k) is None else (f"{r[k]:,}" if isinstance(r[k], int) else f"{r[k]:.3f}" if
                 isinstance(r[k], float) and k != "latency_ms" else f"{r[k]:.2f}") for k, _ in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SMALL_HEIGHTS = (8, 10, 12, 14, 16, 20, 24, 32)  # face box heights (pixels) for the smallest-face test


def smallest_face(det: Detect, images: list[np.ndarray], gts: list[np.ndarray], op: float,
                  calib: np.ndarray) -> dict[str, list | int]:
    """Recall (IoU >= 0.3, score >= ``op``) of single val faces shrunk to each of ``SMALL_HEIGHTS`` pixels.

    Each image with one labelled face is scaled so the face box is h pixels high and pasted at the centre of
    a 320x240 mid-grey frame; the face must be found there.
    """
    recall = []
    pool = [(im, g[0]) for im, g in zip(images, gts, strict=True) if len(g) == 1]
    for h in SMALL_HEIGHTS:
        hits = 0
        for im, g in pool:
            s = h / (g[3] - g[1])
            small = cv2.resize(im, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)[:240, :320]
            frame = np.full((240, 320, 3), 128, np.uint8)
            oy, ox = (240 - small.shape[0]) // 2, (320 - small.shape[1]) // 2
            frame[oy:oy + small.shape[0], ox:ox + small.shape[1]] = small
            target = (g * s + np.array([ox, oy, ox, oy]))[None]
            d = apply_calibration(det(frame)[0], calib)
            d = d[d[:, 4] >= op]
            hits += int(len(d) > 0 and bool((iou(target, d[:, :4]) >= 0.3).any()))
        recall.append(round(hits / max(len(pool), 1), 3))
    return {"heights": list(SMALL_HEIGHTS), "faces": len(pool), "recall": recall}


def size_table(results: dict[str, dict]) -> str:
    """Markdown table of recall by face height at each detector's operating threshold."""
    first = next(iter(results.values()))["recall_by_height"]
    lines = ["| recall (IoU 0.3) by face height, px | " + " | ".join(first["bins"]) + " |",
             "|---" * (len(first["bins"]) + 1) + "|",
             "| faces | " + " | ".join(str(n) for n in first["faces"]) + " |"]
    for name, r in results.items():
        rec = r["recall_by_height"]["recall"]
        lines.append(f"| {name} (score >= {r['operating_threshold']}) | " +
                     " | ".join("-" if v is None else f"{v:.2f}" for v in rec) + " |")
    small = next(iter(results.values()))["small_faces"]
    lines += ["", f"| recall of one val face shrunk to h px in a 320x240 frame ({small['faces']} faces) | " +
              " | ".join(str(h) for h in small["heights"]) + " |", "|---" * (len(small["heights"]) + 1) + "|"]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in r["small_faces"]["recall"]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="edgecam/models/face_detector",
                    help="shipped model folder (default: %(default)s)")
    ap.add_argument("--fp32", default="", help="fp32 export to evaluate too (default: none)")
    ap.add_argument("--data", default="../shared/data/detection/webfaces",
                    help="WebFaces folder (default: %(default)s)")
    ap.add_argument("--yunet", default=YUNET, help="YuNet anchor ONNX (default: %(default)s)")
    ap.add_argument("--split", default="val", help="split to score (default: %(default)s)")
    ap.add_argument("--calib", type=int, default=300,
                    help="train images for the box calibration (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=0, help="score only the first N images (default: all)")
    ap.add_argument("--runs", type=int, default=600, help="latency runs per detector (default: %(default)s)")
    ap.add_argument("--out", default="runs/detector/eval", help="output folder (default: %(default)s)")
    ap.add_argument("--update-manifest", action="store_true", help="write the figures into model.json")
    ap.add_argument("--skip-baselines", action="store_true", help="score our model(s) only (ablations)")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. data: the scored split and the calibration images (train split)
    root = Path(args.data)
    images, gts, gt_lms = load_split(root, args.split, args.limit)
    cal_images, cal_gts, _ = load_split(root, "train", args.calib)

    # 2. detectors (low thresholds: the PR curve needs the whole score range)
    model = Path(args.model)
    dets: dict[str, Detect] = {"ours int8 (shipped)": ours(model, 0.05)}
    files = {"ours int8 (shipped)": model / "face_detector.onnx"}
    if args.fp32:
        dets["ours fp32"] = ours(model_folder(Path(args.fp32), model, out / "fp32_model", {}), 0.05)
        files["ours fp32"] = Path(args.fp32)
    if not args.skip_baselines:
        dets["YuNet"] = yunet(args.yunet, 0.05)
        files["YuNet"] = Path(args.yunet)
        dets["Haar frontal"] = haar()

    # 3. accuracy, each with its train-fitted box calibration
    results, curves = {}, {}
    shipped = json.loads((model / "model.json").read_text())
    for name, det in dets.items():
        op = BASELINE_OPERATING.get(name, shipped["output"]["score_threshold"])
        calib = calibration(run_detector(det, cal_images, name + " calib"), cal_gts)
        results[name], curves[name] = evaluate_one(name, det, images, gts, gt_lms, calib, op)
        results[name]["small_faces"] = smallest_face(det, images[:200], gts[:200], op, calib)
        print(name, results[name], flush=True)

    # 4. cost: latency side by side at the operating thresholds (ours: the manifest's; YuNet 0.6), MACs, sizes
    frame = cv2.resize(images[0], (320, 240), interpolation=cv2.INTER_AREA)
    timed = {"ours int8 (shipped)": ours(model, None)}
    if not args.skip_baselines:
        timed |= {"YuNet": yunet(args.yunet, 0.6), "Haar frontal": dets["Haar frontal"]}
    if args.fp32:
        timed["ours fp32"] = ours(out / "fp32_model", None)
    for name, ms in latency(timed, frame, args.runs).items():
        results[name]["latency_ms"] = round(ms, 3)
    for name, f in files.items():
        results[name]["file_bytes"] = f.stat().st_size
        results[name]["macs_320x240"] = conv_macs(f, 256, 320)  # both pad 240 rows to 256
        if name.startswith("ours"):
            results[name]["params"] = shipped.get("params")

    # 5. write JSON, plot, table, manifest
    command = "python -m training.detector.evaluate " + " ".join(sys.argv[1:])
    report = {"command": command, "split": args.split, "images": len(images), "faces": sum(len(g) for g in gts),
              "results": results}
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    plot_pr(curves, out / "pr.png")
    md = table(results) + "\n\n" + size_table(results)
    (out / "table.md").write_text(md + "\n")
    print(md)
    if args.update_manifest:
        shipped["metrics"] = {"command": command, "split": f"webfaces {args.split} ({len(images)} images)",
                              "results": results}
        (model / "model.json").write_text(json.dumps(shipped, indent=2) + "\n")
        shutil.copy(out / "pr.png", model / "pr_curve.png")


if __name__ == "__main__":
    main()
