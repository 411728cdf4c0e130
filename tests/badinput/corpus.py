"""The bad-input corpus: small files generated on demand (no ../shared data), one per way an input can be bad.

``build(root)`` writes every file under ``root`` (about 1 MB, a few seconds) and returns ``root``:

- ``media/``: images and videos that are empty, truncated, of the wrong type, zero-size, 8000x8000, or in a
  pixel format / codec OpenCV cannot decode; plus ``ok/`` inputs in unusual but valid formats (16-bit,
  grey, RGBA) that must be accepted.
- ``models/``: detector and recognizer folders that are missing, lack or garble their ``model.json``, hold a
  truncated / random ONNX file, a valid ONNX graph of the wrong shape, or a file whose sha256 does not match.
- ``people/``: enrollment folders (one per bad image kind), ``configs/``: config files (see ``CONFIGS``).
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper

from edgecam import MODELS_DIR
from edgecam.manifest import sha256_file

ROOT = Path(__file__).resolve().parents[2]
CLIP = ROOT / "edgecam" / "data" / "corridor.mp4"
DETECTOR = MODELS_DIR / "face_detector"
CROP = 32  # input side of the tiny recognizer built here


# ---------------------------------------------------------------------------------------------- media


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def zero_size_png() -> bytes:
    """A well-formed PNG header that declares a 0 x 0 image."""
    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def face_jpeg() -> bytes:
    """A real photo with one face (matplotlib's public-domain Grace Hopper), JPEG bytes."""
    from matplotlib import cbook

    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()


def mjpg_avi(path: Path, frames: int, size: tuple[int, int]) -> bytes:
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    for i in range(frames):
        out.write(np.full((size[1], size[0], 3), (i * 8) % 256, np.uint8))
    out.release()
    return path.read_bytes()


def write_media(d: Path) -> None:
    d.mkdir(parents=True)
    face = face_jpeg()
    clip = CLIP.read_bytes()
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not an image\n")
    (d / "zero.png").write_bytes(zero_size_png())
    cv2.imwrite(str(d / "huge.png"), np.zeros((8000, 8000), np.uint8))  # 64 MP, 70 KB on disk
    cv2.imwrite(str(d / "float32.tiff"), np.random.default_rng(0).random((40, 40, 3), np.float32))
    (d / "openexr.exr").write_bytes(b"\x76\x2f\x31\x01" + bytes(200))  # EXR magic: codec off in opencv-python
    (d / "truncated_header.jpg").write_bytes(face[:300])
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n")
    (d / "truncated.mp4").write_bytes(clip[: len(clip) // 2])  # moov atom at the end: nothing to play
    avi = mjpg_avi(d / "ok_small.avi", 30, (64, 48))
    (d / "truncated.avi").write_bytes(avi[: len(avi) // 2])  # plays a few frames, then stops
    (d / "unknown_codec.avi").write_bytes(avi.replace(b"MJPG", b"ZZZZ"))
    mjpg_avi(d / "huge_frames.avi", 1, (8000, 8000))
    (d / "ok_small.avi").unlink()
    ok = d / "ok"
    ok.mkdir()
    cv2.imwrite(str(ok / "grey16.png"), (np.random.default_rng(1).random((120, 160)) * 65535).astype(np.uint16))
    cv2.imwrite(str(ok / "rgba16.tiff"), (np.random.default_rng(2).random((60, 80, 4)) * 65535).astype(np.uint16))
    cv2.imwrite(str(ok / "one_pixel.png"), np.zeros((1, 1, 3), np.uint8))
    (ok / "face.jpg").write_bytes(face)


# ---------------------------------------------------------------------------------------------- models


def _graph_model(nodes: list[onnx.NodeProto], inp: list[object], out: list[object]) -> bytes:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, inp)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, out)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _detector_variant(folder: Path, onnx_bytes: bytes | None = None, manifest_edit: object = None,
                      fix_sha: bool = True) -> None:
    shutil.copytree(DETECTOR, folder, ignore=shutil.ignore_patterns("*.png", "*.md"))
    manifest = json.loads((folder / "model.json").read_text())
    onnx_path = folder / manifest["file"]
    if onnx_bytes is not None:
        onnx_path.write_bytes(onnx_bytes)
        if fix_sha:
            manifest["sha256"] = sha256_file(onnx_path)
    if callable(manifest_edit):
        manifest_edit(manifest)
    (folder / "model.json").write_text(json.dumps(manifest))


def write_models(d: Path) -> None:
    d.mkdir(parents=True)
    real = (DETECTOR / "face_detector.onnx").read_bytes()
    _detector_variant(d / "det_truncated", real[: len(real) // 2])
    _detector_variant(d / "det_random", np.random.default_rng(3).bytes(4096))
    _detector_variant(d / "det_wrong_output", _graph_model([helper.make_node("Identity", ["input"], ["out"])],
                                                           ["N", 1, "H", "W"], ["N", 1, "H", "W"]))
    _detector_variant(d / "det_wrong_input", _graph_model(
        [helper.make_node("ReduceMean", ["input"], ["out"], axes=[2, 3], keepdims=0)], ["N", 3, 32, 32], ["N", 3]))
    _detector_variant(d / "det_sha_mismatch", real[:-16] + bytes(16), fix_sha=False)
    _detector_variant(d / "det_no_decoding", manifest_edit=lambda m: m["output"].pop("stride"))
    _detector_variant(d / "det_no_manifest")
    (d / "det_no_manifest" / "model.json").unlink()
    _detector_variant(d / "det_bad_json")
    (d / "det_bad_json" / "model.json").write_text('{"file": "face_detector.onnx", ')
    _detector_variant(d / "det_onnx_missing")
    (d / "det_onnx_missing" / "face_detector.onnx").unlink()
    embedding = {"type": "embedding", "dim": 3, "thresholds": {"known": 0.95, "unknown": 0.8}}
    write_recognizer(d / "rec_ok", embedding)
    write_recognizer(d / "rec_wrong_dim", {**embedding, "dim": 128})
    write_recognizer(d / "rec_wrong_input", embedding, size=64)
    write_recognizer(d / "rec_random", embedding, onnx_bytes=np.random.default_rng(4).bytes(2048))
    write_recognizer(d / "rec_sha_mismatch", embedding, fix_sha=False)
    write_recognizer(d / "cls_wrong_labels", {"type": "classifier", "threshold": 0.5}, labels=["a", "b", "c", "d"])


def write_recognizer(folder: Path, output: dict[str, object], size: int = CROP, onnx_bytes: bytes | None = None,
                     fix_sha: bool = True, labels: list[str] | None = None) -> Path:
    """A tiny real embedding model (mean colour of a CROP x CROP crop, 3 outputs) described by ``model.json``
    as ``size`` x ``size`` with ``output``: the base for the recognizer variants."""
    folder.mkdir(parents=True)
    nodes = [helper.make_node("ReduceMean", ["input"], ["out"], axes=[2, 3], keepdims=0)]
    (folder / "m.onnx").write_bytes(onnx_bytes or _graph_model(nodes, ["N", 3, CROP, CROP], ["N", 3]))
    sha = sha256_file(folder / "m.onnx") if fix_sha else "0" * 64
    manifest = {"name": folder.name, "file": "m.onnx", "sha256": sha,
                "input": {"name": "input", "layout": "NCHW", "color": "bgr", "size": [size, size],
                          "mean": [127.5] * 3, "std": [127.5] * 3},
                "output": output, "labels": labels or []}
    (folder / "model.json").write_text(json.dumps(manifest))
    return folder


# ---------------------------------------------------------------------------------------------- enrollment


def write_people(d: Path, media: Path) -> None:
    """One enrollment folder per bad image kind (``people/<kind>/someone/<file>``), and two odd layouts."""
    for name in ("empty.jpg", "text.jpg", "zero.png", "huge.png", "float32.tiff", "truncated_header.jpg"):
        person = d / Path(name).stem / "someone"
        person.mkdir(parents=True)
        shutil.copy(media / name, person / "photo.jpg")  # the extension enroll looks for; the content decides
    (d / "no_person_folders").mkdir()
    (d / "no_person_folders" / "face.jpg").write_bytes(b"")
    (d / "no_images" / "someone").mkdir(parents=True)
    (d / "no_images" / "someone" / "notes.txt").write_text("no pictures here\n")


# ---------------------------------------------------------------------------------------------- configs

CONFIGS: dict[str, tuple[str, tuple[str, ...]]] = {
    # name: (YAML text, substrings the error must contain); {media} and {root} are filled in
    "unknown_key": ("camera:\n  nmae: door\n", ("camera.nmae", "Extra inputs are not permitted")),
    "unknown_section": ("detectr:\n  threads: 2\n", ("detectr", "Extra inputs")),
    "wrong_type": ("motion:\n  width: wide\n", ("motion.width", "'wide'", "integer")),
    "out_of_range": ("tracker:\n  min_hits: 0\n", ("tracker.min_hits", "0", "greater than or equal to 1")),
    "out_of_range_port": ("mqtt:\n  host: broker\n  port: 70000\n", ("mqtt.port", "70000")),
    "missing_replay_file": ("camera:\n  source:\n    type: replay\n    path: nowhere.mp4\n",
                            ("camera.source.path", "file not found", "nowhere.mp4")),
    "missing_tls_ca": ("mqtt:\n  host: broker\n  tls:\n    ca: missing-ca.crt\n",
                       ("mqtt.tls.ca", "file not found", "missing-ca.crt")),
    "missing_gallery": ("recognizer:\n  model: {root}/models/rec_ok\n  gallery: nobody.npz\n",
                        ("recognizer.gallery", "file not found", "nobody.npz")),
    "missing_model_folder": ("detector:\n  model: no_such_model\n", ("detector.model", "no_such_model")),
    "invalid_yaml": ("camera:\n  name: door\n   source: [\n", ("invalid YAML", "line")),
    "tabs_yaml": ("camera:\n\tname: door\n", ("invalid YAML",)),
    "tls_cert_without_key": ("mqtt:\n  host: broker\n  tls:\n    cert: {media}/ok/face.jpg\n",
                             ("mqtt.tls", "tls.cert is set but tls.key is not")),
    "reconnect_min_above_max": ("mqtt:\n  host: broker\n  reconnect_min_s: 10\n  reconnect_max_s: 1\n",
                                ("mqtt", "reconnect_min_s", "larger than reconnect_max_s")),
    "classifier_with_gallery": ("recognizer:\n  type: classifier\n  model: {root}/models/rec_ok\n"
                                "  gallery: {media}/ok/face.jpg\n", ("recognizer", "classifier takes no gallery")),
    "bad_source_type": ("camera:\n  source:\n    type: webcam\n", ("camera.source.type", "'webcam'")),
    "not_a_mapping": ("- just\n- a list\n", ("(root)", "mapping")),
    "unset_env": ("camera:\n  source:\n    type: opencv\n    device: rtsp://cam/${{EDGECAM_TEST_UNSET_VAR}}\n",
                  ("camera.source.device", "EDGECAM_TEST_UNSET_VAR is not set")),
    "bad_camera_name": ("camera:\n  name: front/door\n", ("camera.name", "front/door")),
    "mqtt_url_host": ("mqtt:\n  host: mqtt://broker:1883\n", ("mqtt.host", "bare host name")),
}


def write_configs(d: Path, root: Path) -> None:
    d.mkdir(parents=True)
    for name, (text, _) in CONFIGS.items():
        (d / f"{name}.yaml").write_text(text.format(media=root / "media", root=root))
    (d / "binary.yaml").write_bytes(b"\xff\xfe\x00camera\x00" + bytes(range(256)))
    (d / "empty_dir.yaml").mkdir()


def build(root: Path) -> Path:
    """Write the whole corpus under ``root`` (a fresh folder)."""
    write_media(root / "media")
    write_models(root / "models")
    write_people(root / "people", root / "media")
    write_configs(root / "configs", root)
    return root
