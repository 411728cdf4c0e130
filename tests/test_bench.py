"""edgecam bench: MAC counting, the YuNet baseline adapter, the selective-attention figures, the CLI table/JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecam import MODELS_DIR, EdgecamError
from edgecam.manifest import sha256_file
from edgecam.tools.baseline import YuNetDetector, detector_info
from edgecam.tools.bench import attention, parse_threads
from edgecam.tools.macs import macs

REPO = Path(__file__).resolve().parents[1]
YUNET = REPO.parent / "shared" / "models" / "anchors" / "face_detection_yunet_2023mar_int8bq.onnx"
needs_yunet = pytest.mark.skipif(not YUNET.exists(), reason=f"YuNet anchor not found at {YUNET} (../shared)")
needs_detector = pytest.mark.skipif(not (MODELS_DIR / "face_detector" / "model.json").exists(),
                                    reason="the face detector is not shipped yet")
TINY_MACS = 16 * 16 * 8 * 3 * 3 * 3 + 8 * 16  # conv 3->8 k3 s2 on 32x32 (16x16x8 outputs x 27) + gemm 8->16


def tiny_embedder(folder: Path) -> Path:
    """A real (tiny) embedding model folder: Conv 3->8 k3 s2 -> global average -> Gemm 8->16, on 32x32 crops."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "cw"),
             numpy_helper.from_array(rng.normal(size=(16, 8)).astype(np.float32), "gw")]
    nodes = [helper.make_node("Conv", ["input", "cw"], ["c"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "gw"], ["embedding"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "tiny.onnx"))
    manifest = {"name": "tiny", "file": "tiny.onnx", "sha256": sha256_file(folder / "tiny.onnx"),
                "input": {"name": "input", "layout": "NCHW", "color": "rgb", "size": [32, 32],
                          "mean": [127.5] * 3, "std": [128.0] * 3},
                "output": {"type": "embedding", "dim": 16, "thresholds": {"known": 0.9, "unknown": 0.5}}}
    (folder / "model.json").write_text(json.dumps(manifest))
    return folder


def edgecam(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgecam", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


# ---------------------------------------------------------------------------------------------- units


def test_macs_counts_conv_and_gemm(tmp_path: Path) -> None:
    folder = tiny_embedder(tmp_path / "tiny")
    assert macs(folder / "tiny.onnx", (1, 3, 32, 32)) == TINY_MACS
    assert macs(folder / "tiny.onnx", (2, 3, 32, 32)) == 2 * TINY_MACS


@needs_detector
def test_macs_match_the_detector_model_card() -> None:
    """Our counter agrees with the one the detector's evaluation used (model.json, 320x240 padded to 256)."""
    m = json.loads((MODELS_DIR / "face_detector" / "model.json").read_text())
    shipped = m["metrics"]["results"]["ours int8 (shipped)"]["macs_320x240"]
    assert macs(MODELS_DIR / "face_detector" / "face_detector.onnx", (1, 1, 256, 320)) == shipped


def test_parse_threads() -> None:
    assert parse_threads("1") == [1]
    assert parse_threads("1,1,2") == [1, 2]
    assert parse_threads("all")[0] >= 1
    for bad in ("0", "x", "1,,2", "-1"):
        with pytest.raises(EdgecamError, match="thread count"):
            parse_threads(bad)


def test_attention_figures() -> None:
    run = {"frame_size": [480, 270], "frames": 100, "frames_skipped_motion": 40, "detector_runs": 60,
           "crops_recognized": 10, "detector": {"macs_per_run": 39_000_000},
           "recognizer": {"model": "r", "input_shape": [1, 3, 112, 112], "macs_per_crop": 100_000_000}}
    a = attention(run)
    assert a["recognizer_pixel_fraction"] == pytest.approx(10 * 112 * 112 / (100 * 480 * 270), abs=1e-6)
    spent = (39e6 * 60 + 100e6 * 10) / 100  # detector on 60 frames + 10 crops, per frame
    full = 100e6 * 480 * 270 / (112 * 112)  # the recognizer's network on the whole frame
    assert a["spent_mmacs_per_frame"] == pytest.approx(spent / 1e6, rel=1e-3)
    assert a["full_frame_mmacs_per_frame"] == pytest.approx(full / 1e6, rel=1e-3)
    assert a["saving"] == pytest.approx(full / spent, abs=0.01)
    assert a["recognizer_saving"] == pytest.approx(full / (100e6 * 10 / 100), abs=0.1)
    run["recognizer"] = None
    assert "saving" not in attention(run)


@needs_yunet
def test_yunet_adapter_returns_our_landmark_order() -> None:
    img = np.full((360, 480, 3), 200, np.uint8)
    import matplotlib

    face = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))  # public domain
    face = cv2.resize(face, (256, 300))
    img[30:330, 100:356] = face
    det = YuNetDetector(YUNET)
    boxes, lms = det(img)
    assert boxes.shape[1:] == (5,) and lms.shape[1:] == (4, 2) and len(boxes) >= 1
    b, lm = boxes[0], lms[0]
    assert lm[0, 0] < lm[1, 0]  # image-left eye first
    assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < lm[3, 1]  # eyes above the nose above the mouth
    assert b[0] < lm[:, 0].min() and lm[:, 0].max() < b[2] and b[1] < lm[:, 1].min() and lm[:, 1].max() < b[3]
    empty_boxes, empty_lms = det(np.zeros((100, 120), np.uint8))
    assert empty_boxes.shape == (0, 5) and empty_lms.shape == (0, 4, 2)
    info = detector_info(det)
    assert info.input_shape(480, 270) == (1, 3, 288, 480)
    det.close()


# ---------------------------------------------------------------------------------------------- CLI


@needs_detector
def test_bench_json_with_recognizer_counts_the_attention_saving(tmp_path: Path) -> None:
    tiny_embedder(tmp_path / "tiny")
    cfg = tmp_path / "bench.yaml"
    cfg.write_text("recognizer:\n  type: identity\n  model: tiny\n")
    r = edgecam("bench", "--frames", "20", "--repeat", "1", "--threads", "1,2", "--json", "--config", str(cfg),
                "--plot", str(tmp_path / "bench.png"))
    assert r.returncode == 0, r.stderr
    b = json.loads(r.stdout)
    assert [run["threads"] for run in b["runs"]] == [1, 2] and b["ratios"] == {}
    png = cv2.imread(str(tmp_path / "bench.png"))
    assert png is not None and png.shape[0] > 100 and png.shape[1] > 500
    for run in b["runs"]:
        assert run["frames"] == 20 and run["fps"] > 0 and run["peak_rss_mb"] > 10
        assert {"source", "motion", "detect", "crops", "track"} <= set(run["stage_ms"])
        assert run["detector"]["macs_per_run"] > 1e6 and run["recognizer"]["macs_per_crop"] == TINY_MACS
    a = b["attention"]
    assert a["crops_recognized"] > 0 and 0 < a["recognizer_pixel_fraction"] < 0.05
    full = TINY_MACS * 480 * 270 / 1024  # the tiny network over a whole 480x270 frame
    assert a["full_frame_mmacs_per_frame"] == pytest.approx(full / 1e6, rel=1e-3)
    rec = TINY_MACS * a["crops_recognized"] / 20
    assert a["recognizer_saving"] == pytest.approx(full / rec, rel=0.01) and a["recognizer_saving"] > 20
    # a network this tiny costs less than our detector: over the whole pipeline attention does not pay here
    assert a["saving"] == pytest.approx(full / (rec + a["detector_mmacs_per_frame"] * 1e6), rel=0.01)


@needs_detector
@needs_yunet
def test_bench_table_with_yunet_baseline() -> None:
    r = edgecam("bench", "--frames", "10", "--repeat", "1", "--threads", "1", "--baseline", str(YUNET))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "base/ours 1t" in out and "yunet:" in out and "frames/s" in out and "peak RSS" in out
    line = next(x for x in out.splitlines() if x.startswith("detector MMACs/run"))
    ours, base, ratio = (float(v) for v in line.split()[-3:])
    assert base > ours and ratio == pytest.approx(base / ours, abs=0.02)


@needs_detector
def test_bench_baseline_model_folder_json() -> None:
    """Our own detector folder as the baseline: same MACs and the same faces, ratio 1."""
    r = edgecam("bench", "--frames", "8", "--repeat", "1", "--threads", "1", "--json",
                "--baseline", str(MODELS_DIR / "face_detector"))
    assert r.returncode == 0, r.stderr
    ratio = json.loads(r.stdout)["ratios"]["1"]
    assert ratio["detector_macs"] == 1.0 and ratio["faces"] == 1.0 and ratio["detector_bytes"] == 1.0


def test_bench_bad_arguments_are_one_line_exit_2(tmp_path: Path) -> None:
    r = edgecam("bench", "--threads", "0")
    assert r.returncode == 2 and "thread count" in r.stderr and "Traceback" not in r.stderr
    r = edgecam("bench", "--baseline", str(tmp_path / "nope.onnx"))
    assert r.returncode == 2 and "nope.onnx" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = edgecam("bench", str(tmp_path / "nope.mp4"))
    assert r.returncode == 2 and "nope.mp4" in r.stderr


def test_plot_title_counts_frames_per_pass_and_legend_clears_the_axis() -> None:
    from edgecam.tools.bench import plot_figure, plot_title

    run = {"detector": {"label": "ours: face_detector"}, "threads": 1, "fps": 250.0,
           "stage_ms_per_frame": {"source": 0.2, "motion": 0.2, "detect": 2.0, "track": 0.1}}
    result = {"video": "/x/corridor.mp4", "frame_size": [480, 270], "frames": 152, "passes": 2,
              "runs": [run, {**run, "threads": 2}]}
    assert plot_title(result) == "edgecam bench: corridor.mp4 (480x270), 76 frames x 2 passes"
    assert plot_title({**result, "frames": 76, "passes": 1}).endswith("76 frames x 1 pass")
    fig = plot_figure(result)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.x0 >= ax.get_window_extent(renderer).x1  # beside the bars
    assert not legend.overlaps(ax.xaxis.get_tightbbox(renderer))  # clear of the x axis and its label
