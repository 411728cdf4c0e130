"""Recognizer runtime: gallery store, known / unknown / uncertain, classifier kind, enroll and identify.

The models here are small real ONNX graphs built with ``onnx.helper``: the "embedding" of a crop is a fixed
linear map of its mean colour, so crops of different colours play different people.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecam import EdgecamError
from edgecam.manifest import sha256_file
from edgecam.recognize import (
    ClassifierRecognizer,
    EmbeddingRecognizer,
    Gallery,
    GalleryError,
    enroll_folder,
    identify_image,
    make_recognizer,
)

SIZE = 32
COLORS = {"alice": (250, 20, 20), "bob": (20, 250, 20), "carol": (20, 20, 250)}


def mean_colour_model(path: Path, out_dim: int, matrix: np.ndarray, softmax_logits: bool = False) -> None:
    """(N, 3, H, W) -> ReduceMean over H, W -> (N, 3) @ matrix (3, out_dim) -> (N, out_dim)."""
    w = numpy_helper.from_array(matrix.astype(np.float32), "w")
    nodes = [helper.make_node("ReduceMean", ["input"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["output"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                        ["N", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", out_dim])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def write_folder(folder: Path, output: dict, labels: list[str] | None = None, matrix: np.ndarray | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if matrix is None:
        matrix = np.eye(3, dtype=np.float32)
    mean_colour_model(folder / "m.onnx", matrix.shape[1], matrix)
    manifest = {"name": folder.name, "file": "m.onnx", "sha256": sha256_file(folder / "m.onnx"),
                "input": {"name": "input", "layout": "NCHW", "color": "bgr", "size": [SIZE, SIZE],
                          "mean": [127.5] * 3, "std": [127.5] * 3},
                "output": output, "labels": labels or []}
    (folder / "model.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def embed_model(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "emb", {"type": "embedding", "dim": 3,
                                           "thresholds": {"known": 0.95, "unknown": 0.8}})


def crop(color: tuple[int, int, int], size: int = SIZE) -> np.ndarray:
    return np.full((size, size, 3), color, np.uint8)


def test_gallery_add_remove_persist(tmp_path: Path) -> None:
    g = Gallery("sha", 3)
    g.add("alice", np.array([[1, 0, 0], [0.9, 0.1, 0]]))
    g.add("bob", np.array([[0, 1, 0]]))
    assert g.people == ["alice", "bob"]
    path = tmp_path / "state" / "gallery.npz"
    g.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["gallery.npz"]  # no temporary file left behind
    g2 = Gallery.load(path, "sha", 3)
    assert g2.people == ["alice", "bob"] and len(g2.row_names) == 3
    assert g2.remove("alice") == 2 and g2.people == ["bob"]
    names, scores = g2.match(np.array([[0, 1, 0]], np.float32))
    assert names == ["bob"] and scores[0] == pytest.approx(1.0)
    with pytest.raises(GalleryError, match="another model"):
        Gallery.load(path, "other-sha", 3)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(GalleryError, match="not a gallery"):
        Gallery.load(tmp_path / "bad.npz", "sha", 3)


def test_gallery_rejects_bad_name() -> None:
    for bad in ("a/b", "x+", "", "events", "a" * 65):
        with pytest.raises(GalleryError, match="person name"):
            Gallery("sha", 3).add(bad, np.ones((1, 3)))


def test_known_unknown_uncertain(embed_model: Path, tmp_path: Path) -> None:
    rec = make_recognizer("identity", embed_model)
    assert isinstance(rec, EmbeddingRecognizer) and rec.input_size == (SIZE, SIZE)
    gallery = Gallery(rec.model_sha, 3)
    gallery.add("alice", rec.embed([crop(COLORS["alice"])]))
    gallery.add("bob", rec.embed([crop(COLORS["bob"])]))
    gallery.save(tmp_path / "g.npz")
    rec = make_recognizer("identity", embed_model, gallery=tmp_path / "g.npz")
    assert rec.names == ["alice", "bob"]
    # alice's colour slightly changed, a colour halfway to bob's, and carol (not enrolled)
    out = rec([crop((240, 30, 20)), crop((230, 110, 20)), crop(COLORS["carol"])])
    assert [(i.name, i.status) for i in out] == [("alice", "known"), ("alice", "uncertain"), ("unknown", "unknown")]
    assert out[0].score > 0.95 > out[1].score >= 0.8 > out[2].score
    assert rec([]) == []
    with pytest.raises(ValueError, match="wants 32x32"):
        rec([crop((1, 2, 3), size=20)])
    rec.close()


def test_bad_kind_and_bad_manifest(embed_model: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgecamError, match="not one of"):
        make_recognizer("nope", embed_model)
    folder = write_folder(tmp_path / "bad", {"type": "embedding", "dim": 3, "thresholds": {"known": 0.5,
                                                                                        "unknown": 0.9}})
    with pytest.raises(EdgecamError, match="is above"):
        make_recognizer("identity", folder)
    with pytest.raises(EdgecamError, match="needs 'embedding'"):
        make_recognizer("identity", write_folder(tmp_path / "cls", {"type": "classifier"}, ["a", "b", "c"]))


def test_classifier_kind(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "cls", {"type": "classifier", "activation": "softmax", "threshold": 0.6},
                          labels=["red", "green", "blue"], matrix=np.diag([8.0, 8.0, 8.0])[::-1].copy())
    rec = make_recognizer("classifier", folder)
    assert isinstance(rec, ClassifierRecognizer) and rec.labels == ["red", "green", "blue"]
    # BGR input: channel 0 is blue; the reversed diagonal maps B -> "blue" (index 2)
    out = rec([crop((250, 0, 0)), crop((0, 0, 250)), crop((128, 128, 128))])
    assert [(i.name, i.status) for i in out] == [("blue", "known"), ("red", "known"), ("unknown", "unknown")]
    with pytest.raises(EdgecamError, match="no gallery"):
        make_recognizer("classifier", folder, gallery=tmp_path / "g.npz")


class FakeDetector:
    """One face per coloured square drawn on a grey image; landmarks of a face filling the square."""

    def __call__(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask = (np.abs(bgr.astype(int) - 128).sum(2) > 60).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        boxes, lms = [], []
        for x, y, w, h, _area in stats[1:n]:
            boxes.append([x, y, x + w, y + h, 0.9])
            lms.append([[x + 0.3 * w, y + 0.4 * h], [x + 0.7 * w, y + 0.4 * h], [x + 0.5 * w, y + 0.6 * h],
                        [x + 0.5 * w, y + 0.8 * h]])
        return np.array(boxes, np.float32).reshape(-1, 5), np.array(lms, np.float32).reshape(-1, 4, 2)

    def close(self) -> None:
        pass


def face_image(color: tuple[int, int, int], side: int = 120, faces: int = 1, texture: bool = True) -> np.ndarray:
    img = np.full((240, 320, 3), 128, np.uint8)
    for k in range(faces):
        x = 20 + k * 150
        img[60:60 + side, x:x + side] = color
        if texture:  # edges inside the face so it is not "blurry"
            for j in range(0, side, 8):
                img[60 + j:62 + j, x:x + side] = np.clip(np.array(color) * 0.6, 0, 255).astype(np.uint8)
    return img


def test_enroll_folder_reasons_and_atomic_write(embed_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "people"
    (folder / "alice").mkdir(parents=True)
    (folder / "bob").mkdir()
    cv2.imwrite(str(folder / "alice" / "1.png"), face_image(COLORS["alice"]))
    cv2.imwrite(str(folder / "alice" / "2.png"), face_image(COLORS["alice"], side=20))  # too small
    cv2.imwrite(str(folder / "alice" / "3.png"), np.full((240, 320, 3), 128, np.uint8))  # no face
    cv2.imwrite(str(folder / "bob" / "1.png"), face_image(COLORS["bob"], faces=2))  # two faces
    cv2.imwrite(str(folder / "bob" / "2.png"), cv2.GaussianBlur(face_image(COLORS["bob"]), (0, 0), 12))  # blurry
    (folder / "bob" / "3.jpg").write_bytes(b"not an image")
    rec = make_recognizer("identity", embed_model)
    gallery = tmp_path / "gallery.npz"
    results = {r.path.relative_to(folder).as_posix(): (r.ok, r.reason) for r in
               enroll_folder(FakeDetector(), rec, folder, gallery)}
    assert results["alice/1.png"] == (True, "")
    assert "too small" in results["alice/2.png"][1]
    assert results["alice/3.png"] == (False, "no face found")
    assert "2 faces" in results["bob/1.png"][1]
    assert "too blurry" in results["bob/2.png"][1]
    assert results["bob/3.jpg"] == (False, "not an image OpenCV can decode")
    assert Gallery.load(gallery, rec.model_sha, 3).people == ["alice"]

    # a failure half-way leaves the gallery as it was
    before = gallery.read_bytes()
    cv2.imwrite(str(folder / "bob" / "2.png"), face_image(COLORS["bob"]))

    def broken(_crops: list) -> np.ndarray:
        raise RuntimeError("boom")

    rec.embed = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        enroll_folder(FakeDetector(), rec, folder, gallery)
    assert gallery.read_bytes() == before


def test_identify_image(embed_model: Path, tmp_path: Path) -> None:
    rec = make_recognizer("identity", embed_model)
    folder = tmp_path / "people" / "alice"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "1.png"), face_image(COLORS["alice"]))
    enroll_folder(FakeDetector(), rec, folder.parent, tmp_path / "g.npz")
    rec = make_recognizer("identity", embed_model, gallery=tmp_path / "g.npz")
    img = face_image(COLORS["alice"], faces=2)
    img[60:180, 170:290] = COLORS["carol"]
    faces = identify_image(FakeDetector(), rec, img)
    assert [f["name"] for f in faces] == ["alice", "unknown"]
    assert faces[0]["box"] == [20.0, 60.0, 140.0, 180.0] and faces[0]["similarity"] > 0.95
    assert faces[0]["score"] == pytest.approx(0.9)  # the detector's confidence, as in 'detect'
    assert len(faces[0]["landmarks"]) == 4
    assert identify_image(FakeDetector(), rec, np.full((240, 320, 3), 128, np.uint8)) == []


def test_enroll_needs_identity_kind(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "cls", {"type": "classifier"}, labels=["a", "b", "c"])
    rec = make_recognizer("classifier", folder)
    with pytest.raises(EdgecamError, match="identity"):
        enroll_folder(FakeDetector(), rec, tmp_path, tmp_path / "g.npz")
