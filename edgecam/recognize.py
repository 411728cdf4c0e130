"""Recognizer stage: aligned face crops -> ``Identity(name, status, score)``.

Two kinds, picked by the ``type`` key of the config (``make_recognizer``):

- ``identity``: an embedding model (``output.type == "embedding"`` in its ``model.json``) and a gallery of
  enrolled people. A crop's score for a person is the best cosine similarity over that person's gallery
  embeddings; the best person is ``known`` at or above the manifest's ``thresholds.known``, ``unknown``
  below ``thresholds.unknown`` and ``uncertain`` between (the name then is the best candidate; the tracker
  votes over frames). Thresholds are calibrated on dev people who are not in the training or test data.
- ``classifier``: a closed-set ONNX crop classifier with a ``labels`` list; ``known:<label>`` when the
  softmax probability reaches ``output.threshold``, else ``unknown``.

The gallery is one ``.npz`` file (names, embeddings, the sha256 of the model that made them): several
embeddings per person, people added or removed without retraining, written atomically (temporary file +
rename), refused when made by another model.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from edgecam import EdgecamError
from edgecam.crops import QualityGate, align
from edgecam.manifest import Manifest, ModelError, load_manifest, session, to_tensor

logger = logging.getLogger(__name__)

Status = Literal["known", "unknown", "uncertain"]
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".pgm")
ENROLL_MIN_FACE_PX = 40.0  # enrollment wants a face box at least this many pixels on its short side
ENROLL_MIN_SHARPNESS = 30.0  # ... an aligned crop at least this sharp (variance of the Laplacian)
ENROLL_MAX_YAW = 0.3  # ... and a roughly frontal face


@dataclass(frozen=True)
class Identity:
    """A recognizer's answer for one crop: ``name`` (the label, or best candidate), status and score."""

    name: str
    status: Status
    score: float


class GalleryError(EdgecamError):
    """A gallery file that cannot be used (unreadable, or made by another model)."""


# ------------------------------------------------------------------------------------------------ gallery


class Gallery:
    """Enrolled people: (N, D) unit embeddings with a person name per row, stored in one ``.npz`` file."""

    def __init__(self, model_sha: str, dim: int, names: list[str] | None = None,
                 embeddings: np.ndarray | None = None):
        self.model_sha, self.dim = model_sha, dim
        self.row_names: list[str] = list(names or [])
        self.embeddings = embeddings if embeddings is not None else np.zeros((0, dim), np.float32)  # (N, D)

    @property
    def people(self) -> list[str]:
        """Enrolled names, sorted."""
        return sorted(set(self.row_names))

    def add(self, name: str, embeddings: np.ndarray) -> None:
        """Add embeddings (K, D) for a person (appends to the ones they already have)."""
        if not name or "/" in name:
            raise GalleryError(f"person name '{name}' is empty or contains '/'")
        e = l2_normalize(np.asarray(embeddings, np.float32).reshape(-1, self.dim))
        self.embeddings = np.concatenate([self.embeddings, e])
        self.row_names += [name] * len(e)

    def remove(self, name: str) -> int:
        """Remove a person; returns how many embeddings went."""
        keep = np.array([n != name for n in self.row_names], bool)
        removed = int((~keep).sum())
        self.embeddings = self.embeddings[keep] if len(keep) else self.embeddings
        self.row_names = [n for n in self.row_names if n != name]
        return removed

    def match(self, emb: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Best person and score (max cosine over the person's rows) per unit embedding (M, D)."""
        if not self.row_names:
            return ["unknown"] * len(emb), np.full(len(emb), -1.0, np.float32)
        people = self.people
        sims = emb @ self.embeddings.T  # (M, N)
        labels = np.array([people.index(n) for n in self.row_names])
        per_person = np.stack([sims[:, labels == k].max(1) for k in range(len(people))], 1)  # (M, people)
        best = per_person.argmax(1)
        return [people[k] for k in best], per_person[np.arange(len(emb)), best]

    def save(self, path: Path) -> None:
        """Write atomically: a temporary file in the same folder, then rename over ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, names=np.array(self.row_names, dtype=str), embeddings=self.embeddings,
                         model_sha=np.array(self.model_sha), version=np.array(1))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def load(path: Path, model_sha: str, dim: int) -> Gallery:
        """Read a gallery; refuse one made by another model."""
        try:
            with np.load(path, allow_pickle=False) as z:
                names = [str(n) for n in z["names"]]
                emb = z["embeddings"].astype(np.float32)
                sha = str(z["model_sha"])
        except FileNotFoundError:
            raise GalleryError(f"{path}: gallery not found (create it with 'edgecam enroll')") from None
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise GalleryError(f"{path}: not a gallery file ({e})") from None
        if sha != model_sha:
            raise GalleryError(f"{path}: enrolled with another model (sha256 {sha[:12]}…, this one "
                               f"{model_sha[:12]}…): enroll the people again")
        if emb.shape != (len(names), dim):
            raise GalleryError(f"{path}: embeddings {emb.shape} do not match {len(names)} names x {dim}")
        return Gallery(model_sha, dim, names, emb)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------------------------- recognizers


class Recognizer:
    """An ONNX crop model: ``input_size`` (w, h) of the aligned crop, ``__call__`` and ``close``."""

    kind: ClassVar[str] = ""
    kinds: ClassVar[dict[str, type[Recognizer]]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.kind:
            Recognizer.kinds[cls.kind] = cls

    def __init__(self, model: str | Path, gallery: Path | None = None, threads: int = 1):
        self.manifest: Manifest = load_manifest(model)
        spec = self.manifest.input
        if not spec.get("size"):
            raise ModelError(f"{self.manifest.folder}/model.json: input.size must be set for a crop model")
        self.input_size: tuple[int, int] = (int(spec["size"][0]), int(spec["size"][1]))
        self.sess = session(self.manifest, threads)
        self.input_name = self.sess.get_inputs()[0].name
        self.output_width = self.warm_up()

    def forward(self, crops: list[np.ndarray]) -> np.ndarray:
        """Raw model output (N, K) for same-size BGR crops."""
        if not crops:
            return np.zeros((0, 0), np.float32)
        w, h = self.input_size
        for c in crops:
            if c.shape[:2] != (h, w):
                raise ValueError(f"crop of {c.shape[1]}x{c.shape[0]} px, the model wants {w}x{h}")
        x = to_tensor(crops, self.manifest.input)
        return np.asarray(self.sess.run(None, {self.input_name: x})[0], np.float32).reshape(len(crops), -1)

    def warm_up(self) -> int:
        """Run once on a blank crop; the width of the output. ModelError when the graph does not fit model.json."""
        w, h = self.input_size
        try:
            return int(self.forward([np.zeros((h, w, 3), np.uint8)]).shape[1])
        except Exception as e:  # onnxruntime raises its own types for an input of the wrong shape or type
            raise ModelError(f"{self.manifest.onnx_path}: cannot run on a {w}x{h} crop as model.json describes it "
                             f"({str(e).splitlines()[0][:160]})") from None

    def _check_output_width(self, want: int, what: str) -> None:
        if self.output_width != want:
            raise ModelError(f"{self.manifest.onnx_path}: {self.output_width} outputs per crop, model.json says "
                             f"{want} ({what})")

    def __call__(self, crops: list[np.ndarray]) -> list[Identity]:
        raise NotImplementedError

    def close(self) -> None:
        self.sess = None


class EmbeddingRecognizer(Recognizer):
    """``identity`` kind: embeddings matched against a gallery with calibrated thresholds."""

    kind = "identity"

    def __init__(self, model: str | Path, gallery: Path | None = None, threads: int = 1):
        super().__init__(model, gallery, threads)
        out = self.manifest.output
        if out.get("type") != "embedding":
            raise ModelError(f"{self.manifest.folder}/model.json: output.type is '{out.get('type')}', "
                             "the identity kind needs 'embedding'")
        try:
            self.dim = int(out["dim"])
            self.t_known, self.t_unknown = float(out["thresholds"]["known"]), float(out["thresholds"]["unknown"])
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{self.manifest.folder}/model.json: output needs dim and "
                             "thresholds.known/unknown") from None
        self._check_output_width(self.dim, "output.dim")
        if self.t_unknown > self.t_known:
            raise ModelError(f"{self.manifest.folder}/model.json: thresholds.unknown {self.t_unknown} is above "
                             f"thresholds.known {self.t_known}")
        self.model_sha = str(self.manifest.data["sha256"])
        self.gallery = Gallery.load(gallery, self.model_sha, self.dim) if gallery else Gallery(self.model_sha, self.dim)

    @property
    def names(self) -> list[str]:
        """Enrolled people."""
        return self.gallery.people

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """(N, D) unit embeddings of aligned BGR crops."""
        return l2_normalize(self.forward(crops)) if crops else np.zeros((0, self.dim), np.float32)

    def status(self, score: float) -> Status:
        if score >= self.t_known:
            return "known"
        return "unknown" if score < self.t_unknown else "uncertain"

    def __call__(self, crops: list[np.ndarray]) -> list[Identity]:
        names, scores = self.gallery.match(self.embed(crops))
        out = []
        for name, score in zip(names, scores, strict=True):
            st = self.status(float(score))
            out.append(Identity(name if st != "unknown" else "unknown", st, float(score)))
        return out


class ClassifierRecognizer(Recognizer):
    """``classifier`` kind: a closed-set crop classifier with labels; below its threshold, ``unknown``."""

    kind = "classifier"

    def __init__(self, model: str | Path, gallery: Path | None = None, threads: int = 1):
        if gallery is not None:
            raise EdgecamError("a classifier recognizer takes no gallery")
        super().__init__(model, None, threads)
        out = self.manifest.output
        if out.get("type") != "classifier" or not self.manifest.labels:
            raise ModelError(f"{self.manifest.folder}/model.json: the classifier kind needs output.type "
                             "'classifier' and a labels list")
        self.labels = self.manifest.labels
        self._check_output_width(len(self.labels), "labels")
        self.threshold = float(out.get("threshold", 0.5))
        self.softmax = out.get("activation", "softmax") == "softmax"

    def __call__(self, crops: list[np.ndarray]) -> list[Identity]:
        if not crops:
            return []
        logits = self.forward(crops)
        if logits.shape[1] != len(self.labels):
            raise ModelError(f"{self.manifest.onnx_path}: {logits.shape[1]} outputs for {len(self.labels)} labels")
        p = np.exp(logits - logits.max(1, keepdims=True)) if self.softmax else logits
        p = p / p.sum(1, keepdims=True) if self.softmax else p
        best = p.argmax(1)
        return [Identity(self.labels[k], "known", float(p[i, k])) if p[i, k] >= self.threshold
                else Identity("unknown", "unknown", float(p[i, k])) for i, k in enumerate(best)]


def make_recognizer(kind: str, model: str | Path, gallery: Path | None = None, threads: int = 1) -> Recognizer:
    """The recognizer of a kind (``identity`` | ``classifier``) for a model name or folder."""
    if kind not in Recognizer.kinds:
        raise EdgecamError(f"recognizer type '{kind}' is not one of {', '.join(sorted(Recognizer.kinds))}")
    return Recognizer.kinds[kind](model, Path(gallery) if gallery else None, threads)


# -------------------------------------------------------------------------------------- enroll / identify


Detector = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def enroll_crop(detector: Detector, size: tuple[int, int], bgr: np.ndarray,
                gate: QualityGate) -> tuple[np.ndarray | None, str]:
    """The aligned crop of the one good face in an enrollment image, or None and why not."""
    boxes, landmarks = detector(bgr)
    if len(boxes) == 0:
        return None, "no face found"
    if len(boxes) > 1:
        return None, f"{len(boxes)} faces found (want exactly one)"
    crop = align(bgr, landmarks[0], size)
    q = gate(crop, boxes[0], landmarks[0])
    if q.reason == "small":
        return None, f"face too small ({q.size:.0f} px, want at least {gate.min_size_px:.0f})"
    if q.reason == "blurred":
        return None, f"face too blurry (sharpness {q.sharpness:.0f}, want at least {gate.min_sharpness:.0f})"
    if q.reason == "turned":
        return None, f"face turned away (yaw {q.yaw:.2f}, want at most {gate.max_yaw:.2f})"
    return crop, ""


def enroll_folder(detector: Detector, recognizer: Recognizer, folder: Path, gallery_path: Path,
                  gate: QualityGate | None = None) -> list[tuple[Path, bool, str]]:
    """Enroll ``folder/<person>/*.jpg`` into the gallery file; one (path, ok, reason) per image.

    A person enrolled again gets the new embeddings in place of the old ones. Images without exactly one
    sharp, large, frontal face are skipped with a reason. The gallery is written once, atomically, at the
    end: an error part-way leaves the previous file untouched.
    """
    if not isinstance(recognizer, EmbeddingRecognizer):
        raise EdgecamError(f"enrollment needs an identity (embedding) recognizer, not '{recognizer.kind}'")
    gate = gate or QualityGate(ENROLL_MIN_FACE_PX, ENROLL_MIN_SHARPNESS, ENROLL_MAX_YAW)
    gallery_path = Path(gallery_path)
    gallery = Gallery.load(gallery_path, recognizer.model_sha, recognizer.dim) if gallery_path.exists() \
        else Gallery(recognizer.model_sha, recognizer.dim)
    people = sorted(d for d in Path(folder).iterdir() if d.is_dir())
    if not people:
        raise EdgecamError(f"{folder}: no person folders (want {folder}/<person>/*.jpg)")
    results: list[tuple[Path, bool, str]] = []
    for person in people:
        crops = []
        for path in sorted(p for p in person.iterdir() if p.suffix.lower() in IMAGE_EXT):
            bgr, reason = _read_image(path)
            crop, reason = enroll_crop(detector, recognizer.input_size, bgr, gate) if bgr is not None \
                else (None, reason)
            results.append((path, crop is not None, reason))
            if crop is not None:
                crops.append(crop)
        if crops:
            gallery.remove(person.name)
            gallery.add(person.name, recognizer.embed(crops))
            logger.info("enrolled %s with %s images", person.name, len(crops))
    if any(ok for _, ok, _ in results):
        gallery.save(gallery_path)
    return results


def _read_image(path: Path) -> tuple[np.ndarray | None, str]:
    """An enrollment image as BGR, or None and why not (empty, not an image, zero-size, too large)."""
    from edgecam.sources import SourceError, read_image

    try:
        return read_image(path), ""
    except SourceError as e:
        return None, str(e).removeprefix(f"{path}: ")


def identify_image(detector: Detector, recognizer: Recognizer, bgr: np.ndarray) -> list[dict[str, Any]]:
    """Detect, align and name every face: [{box, name, score, status}] (name ``unknown`` when nobody matches)."""
    boxes, landmarks = detector(bgr)
    crops = [align(bgr, lm, recognizer.input_size) for lm in landmarks]
    ids = recognizer(crops) if crops else []
    out = []
    for b, ident in zip(boxes, ids, strict=True):
        name = ident.name if ident.status == "known" else ident.status
        out.append({"box": [round(float(v), 1) for v in b[:4]], "name": name, "score": round(ident.score, 4),
                    "status": ident.status, **({"candidate": ident.name} if ident.status == "uncertain" else {})})
    return out
