"""The shipped face detector: file budget, manifest, decoding, and runs on real and synthetic images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import trackable

from edgecam import MODELS_DIR
from edgecam.detect import FaceDetector, decode, nms, suppress_inner
from edgecam.manifest import ModelError, load_manifest

MODEL = MODELS_DIR / "face_detector"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} absent (shared data not mounted)")


def grace_hopper() -> np.ndarray:
    """matplotlib's public-domain portrait (600x512, one frontal face)."""
    from matplotlib import cbook

    return cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))


@pytest.fixture(scope="module")
def det() -> FaceDetector:
    d = FaceDetector()
    yield d
    d.close()


def check_shapes(boxes: np.ndarray, lms: np.ndarray) -> None:
    assert boxes.dtype == np.float32 and lms.dtype == np.float32
    assert boxes.ndim == 2 and boxes.shape[1] == 5
    assert lms.shape == (len(boxes), 4, 2)


# ------------------------------------------------------------------------------------------- the artifact


def test_shipped_file_within_budget_and_manifest_complete() -> None:
    m = load_manifest("face_detector")  # checks the sha256 too
    assert m.onnx_path.stat().st_size <= 51_200
    for key in ("name", "file", "sha256", "input", "output", "labels", "metrics", "training_data", "license"):
        assert key in m.data, key
    assert m.input["color"] == "gray" and m.output["stride"] == 4
    assert "command" in m.data["metrics"], "metrics must say which command measured them"
    assert (MODEL / "README.md").is_file()


def test_weights_are_stored_int8() -> None:
    onnx = pytest.importorskip("onnx")
    g = onnx.load(str(MODEL / "face_detector.onnx")).graph
    conv_w = {n.input[1] for n in g.node if n.op_type == "Conv"}
    dq_out = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    assert conv_w <= dq_out  # every conv weight comes out of a DequantizeLinear of an int8 initializer
    assert sum(i.data_type == onnx.TensorProto.INT8 for i in g.initializer) == len(conv_w)


def test_sha_mismatch_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "fd"
    shutil.copytree(MODEL, folder)
    data = json.loads((folder / "model.json").read_text())
    data["sha256"] = "0" * 64
    (folder / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="sha256"):
        FaceDetector(folder)


def test_manifest_without_decoding_keys_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "fd"
    shutil.copytree(MODEL, folder)
    data = json.loads((folder / "model.json").read_text())
    del data["output"]["stride"]
    (folder / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="stride"):
        FaceDetector(folder)


# ------------------------------------------------------------------------------------------ pure numpy parts


def test_nms_drops_overlaps_keeps_order() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.6, 0.9, 0.5, 0.1], np.float32)
    assert nms(boxes, scores, 0.4).tolist() == [1, 2]
    assert nms(boxes[:0], scores[:0], 0.4).shape == (0,)


def test_decode_one_synthetic_peak() -> None:
    spec = {"stride": 4, "peak_kernel": 3, "top_k": 10}
    out = np.zeros((13, 20, 30), np.float32)
    out[0, 5, 7] = 0.9  # one peak at cell (x=7, y=5): centre (29.5, 21.5)
    out[0, 5, 8] = 0.8  # a neighbour is not a peak
    out[1:5, 5, 7] = np.log(np.array([10, 12, 10, 12]) / 4)
    out[5:13, 5, 7] = (np.array([[-5, -3], [5, -3], [0, 2], [0, 6]]) / np.sqrt(20 * 24)).ravel()
    boxes, lms = decode(out, spec, 0.5)
    np.testing.assert_allclose(boxes, [[19.5, 9.5, 39.5, 33.5, 0.9]], atol=1e-4)
    np.testing.assert_allclose(lms[0], [[24.5, 18.5], [34.5, 18.5], [29.5, 23.5], [29.5, 27.5]], atol=1e-4)
    assert decode(out, spec, 0.95)[0].shape == (0, 5)


# ------------------------------------------------------------------------------------------------ runtime


def test_finds_grace_hopper_with_ordered_landmarks(det: FaceDetector) -> None:
    img = grace_hopper()
    boxes, lms = det(img)
    check_shapes(boxes, lms)
    assert len(trackable(boxes)) == 1, boxes
    x1, y1, x2, y2, score = boxes[0]
    # the face is ~250 px high: boxes of faces over ~200 px come out up to ~20 % small (model card, Limits)
    assert score > 0.6 and 130 < x2 - x1 < 400 and 150 < y2 - y1 < 450
    left_eye, right_eye, nose, mouth = lms[0]
    assert left_eye[0] < nose[0] < right_eye[0]  # image-left eye first
    assert max(left_eye[1], right_eye[1]) < nose[1] < mouth[1]
    assert np.all((lms[0] > [x1, y1]) & (lms[0] < [x2, y2]))


def test_suppress_inner_drops_a_part_of_a_bigger_face() -> None:
    boxes = np.array([[0, 0, 100, 100], [40, 40, 55, 55], [90, 0, 120, 30], [200, 0, 215, 15]], np.float32)
    # the nose box (inside, smaller, lower score) goes; a box overlapping the edge and a lone box stay
    assert list(suppress_inner(boxes, np.array([0.9, 0.5, 0.6, 0.4]))) == [0, 2, 3]
    # a part that scores higher than the big box is kept (the big box may be the false one)
    assert list(suppress_inner(boxes, np.array([0.5, 0.9, 0.6, 0.4]))) == [0, 1, 2, 3]


def test_dark_frames_are_lifted_bright_ones_untouched() -> None:
    from edgecam.detect import _lift_dark

    dark = (grace_hopper().astype(np.float32) * 0.12).astype(np.uint8)  # mean grey ~12
    assert 80 < _lift_dark(dark, 50).mean() < 120
    assert _lift_dark(dark, 0) is dark  # off
    bright = grace_hopper()
    assert _lift_dark(bright, 50) is bright


def test_clahe_restores_a_dim_face_beside_a_lit_one_and_is_off_unless_the_manifest_sets_it(tmp_path: Path) -> None:
    from edgecam.detect import equalize

    face = grace_hopper()
    frame = np.hstack([face, (face.astype(np.float32) * 0.15).astype(np.uint8)])  # a lit copy beside a dim one
    grey = equalize(frame, cv2.createCLAHE(clipLimit=2.0))
    assert grey.ndim == 2 and grey[:, face.shape[1]:].std() > 1.8 * cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)[
        :, face.shape[1]:].std()
    bgr = equalize(frame, cv2.createCLAHE(clipLimit=2.0), "bgr")  # a colour model: the luma, colours kept
    assert bgr.shape == frame.shape and abs(float(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(float).mean()
                                                 - grey.mean())) < 3
    assert FaceDetector("face_detector").clahe is None  # the shipped manifest does not set it
    folder = tmp_path / "model"
    shutil.copytree(MODELS_DIR / "face_detector", folder)
    spec = json.loads((folder / "model.json").read_text())
    spec["input"]["clahe"] = 2.0
    (folder / "model.json").write_text(json.dumps(spec))
    boxes, _ = FaceDetector(folder)(frame)
    assert len(boxes) >= 1 and boxes[0, 4] > 0.5  # the runtime equalises each pass and still finds the face


@pytest.mark.parametrize("fx", [1.6, 2.4])
def test_coarse_pass_finds_a_face_filling_the_frame(fx: float) -> None:
    img = cv2.resize(grace_hopper(), None, fx=fx, fy=fx, interpolation=cv2.INTER_LINEAR)  # face ~400-600 px
    ref, _ = FaceDetector("face_detector", coarse_side=0)(cv2.resize(img, None, fx=0.25, fy=0.25))
    boxes, _ = FaceDetector("face_detector", coarse_side=160, max_side=4000)(img)
    assert len(boxes) >= 1 and boxes[0, 4] > 0.6, boxes
    np.testing.assert_allclose(boxes[0, :4], ref[0, :4] * 4, atol=0.15 * (ref[0, 2] - ref[0, 0]) * 4)


def test_boxes_are_in_original_pixels_and_flip_keeps_eye_order(det: FaceDetector) -> None:
    img = cv2.resize(grace_hopper(), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)  # face ~125 px high
    big, _ = det(img)
    half, _ = det(cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))
    w = big[0, 2] - big[0, 0]
    np.testing.assert_allclose(half[0, :4] * 2, big[0, :4], atol=0.1 * w)
    fb, fl = det(img[:, ::-1].copy())
    np.testing.assert_allclose([img.shape[1] - fb[0, 2], img.shape[1] - fb[0, 0]], big[0, [0, 2]], atol=0.1 * w)
    assert fl[0, 0, 0] < fl[0, 1, 0]


def test_large_image_downscaled_but_reported_in_original_pixels(det: FaceDetector) -> None:
    face = cv2.resize(grace_hopper(), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)  # 300x256
    ref, _ = FaceDetector("face_detector", coarse_side=0)(face)  # the canvas face is too small for a coarse pass
    canvas = np.full((1280, 1600, 3), 90, np.uint8)  # over max_side: the detector works at half size
    canvas[700:1000, 900:1156] = face
    boxes, lms = det(canvas)
    assert len(trackable(boxes)) == 1, boxes
    np.testing.assert_allclose(boxes[0, :4], ref[0, :4] + [900, 700, 900, 700], atol=0.2 * (ref[0, 2] - ref[0, 0]))
    assert np.all((lms[0] > boxes[0, :2]) & (lms[0] < boxes[0, 2:4]))


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 300, 3), (300, 7), (33, 17, 1), (240, 320, 4), (481, 271, 3)])
def test_any_size_and_channel_count(det: FaceDetector, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    boxes, lms = det(rng.integers(0, 256, shape, dtype=np.uint8))
    check_shapes(boxes, lms)


def test_empty_and_grey_images(det: FaceDetector) -> None:
    boxes, lms = det(np.zeros((240, 320, 3), np.uint8))
    assert boxes.shape == (0, 5) and lms.shape == (0, 4, 2)
    grey = cv2.cvtColor(grace_hopper(), cv2.COLOR_BGR2GRAY)
    boxes, lms = det(grey)
    assert len(trackable(boxes)) == 1, boxes


@pytest.mark.parametrize("bad", [np.zeros((10, 10, 3), np.float32), np.zeros((10, 10, 2), np.uint8),
                                 np.zeros((0, 10, 3), np.uint8)])
def test_bad_image_raises_value_error_naming_it(det: FaceDetector, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="image"):
        det(bad)


# ------------------------------------------------------------------------------------- real data (../shared)


@needs_shared
def test_demo_clip_faces_found(det: FaceDetector) -> None:
    cap = cv2.VideoCapture(str(SHARED / "video" / "intel_face-demographics-walking-and-pause.gif"))
    found, frames = 0, 0
    while frames < 200:
        ok, frame = cap.read()
        if not ok:
            break
        frames += 1
        boxes, _ = det(frame)
        found += int(len(boxes) > 0)
    cap.release()
    assert frames > 20
    assert found / frames > 0.5, f"faces in {found}/{frames} frames"


@needs_shared
def test_lfw_detection_rate(det: FaceDetector) -> None:
    paths = sorted((SHARED / "identity" / "lfw").rglob("*.jpg"))[::40][:80]
    hits = 0
    for p in paths:
        boxes, _ = det(cv2.imread(str(p)))
        centre = (boxes[:, :2] + boxes[:, 2:4]) / 2
        hits += int(np.any(np.all(np.abs(centre - 125) < 40, axis=1)))  # LFW: the face is centred in 250x250
    assert hits / len(paths) >= 0.9, f"{hits}/{len(paths)}"
