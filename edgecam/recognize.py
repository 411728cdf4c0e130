"""Recognizer stage: aligned face crops -> ``Identity(name, status, score)``.

Two kinds, picked by the ``type`` key of the config (``make_recognizer``):

- ``identity``: an embedding model (``output.type == "embedding"`` in its ``model.json``) and a gallery of
  enrolled people. A crop's score (its similarity) for a person is the best cosine similarity over that
  person's gallery embeddings; the best person is ``known`` at or above the manifest's ``thresholds.known``,
  ``unknown`` below ``thresholds.unknown`` and ``uncertain`` between (the name then is the best candidate; the
  tracker votes over frames). Thresholds are calibrated on dev people who are not in the training or test
  data; a ``threshold`` given to the recognizer (config ``recognizer.threshold``, ``identify --threshold``)
  replaces ``known`` and moves ``unknown`` with it (the uncertain band keeps its width).
- ``classifier``: a closed-set ONNX crop classifier with a ``labels`` list; ``known:<label>`` when the
  softmax probability (its score) reaches ``output.threshold`` (or the given ``threshold``), else ``unknown``.

The gallery is one ``.npz`` file (names, embeddings, the sha256 of the model that made them): several
embeddings per person, people added or removed without retraining, written atomically (temporary file +
rename), refused when made by another model.

Enrollment (``enroll_folder``) reads every file of ``DIR/<person>/`` that OpenCV can decode, takes the main face
of each photo (the largest, most central one; a photo with two faces of similar size is refused), and flags a
photo whose embedding disagrees with the person's other photos (a mislabelled photo).
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import cv2
import numpy as np

from edgecam import EdgecamError
from edgecam.crops import QualityGate, align
from edgecam.manifest import Manifest, ModelError, load_manifest, session, to_tensor
from edgecam.mqtt.topics import RESERVED_PERSON_NAMES, check_name

logger = logging.getLogger(__name__)

Status = Literal["known", "unknown", "uncertain"]
ENROLL_MIN_FACE_PX = 40.0  # enrollment wants a face box at least this many pixels on its short side
ENROLL_MIN_SHARPNESS = 30.0  # ... an aligned crop at least this sharp (variance of the Laplacian)
ENROLL_MAX_YAW = 0.3  # ... and a roughly frontal face
ENROLL_SIMILAR_FACES = 0.8  # a second face this prominent (side x centrality) next to the main one: ambiguous
MAX_NAME_CHARS = 64


@dataclass(frozen=True)
class Identity:
    """A recognizer's answer for one crop: ``name`` (the label, or best candidate), status and score; an identity
    recognizer also gives the crop's unit ``embedding`` (D,) (visitors are matched on it)."""

    name: str
    status: Status
    score: float
    embedding: np.ndarray | None = field(default=None, compare=False, repr=False)


class GalleryError(EdgecamError):
    """A gallery file that cannot be used (unreadable, or made by another model), or a bad person name."""


def check_person_name(name: str) -> str:
    """``name`` when it can be a person (it becomes an MQTT topic level and a Home Assistant entity).

    Raises:
        GalleryError: Empty, longer than 64 characters, with ``/ # +`` or a control character, or one of
            edgecam's own topic names.
    """
    try:
        return check_name(name, "person name", RESERVED_PERSON_NAMES, MAX_NAME_CHARS)
    except ValueError as e:
        raise GalleryError(str(e)) from None


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

    def counts(self) -> dict[str, int]:
        """Embeddings (one per enrolled photo or frame) per person, by name."""
        return {p: self.row_names.count(p) for p in self.people}

    def require(self, name: str, path: Path | str = "gallery") -> None:
        """GalleryError naming ``path`` and the people enrolled when ``name`` is not one of them."""
        if name not in self.row_names:
            enrolled = ", ".join(self.people) or "nobody"
            raise GalleryError(f"{path}: no person '{name}' in the gallery (enrolled: {enrolled})")

    def add(self, name: str, embeddings: np.ndarray) -> None:
        """Add embeddings (K, D) for a person (appends to the ones they already have)."""
        check_person_name(name)
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

    def rename(self, old: str, new: str, path: Path | str = "gallery") -> int:
        """Give ``old``'s embeddings to ``new`` (who must not be enrolled yet); returns how many moved."""
        self.require(old, path)
        check_person_name(new)
        if new in self.row_names and new != old:
            raise GalleryError(f"{path}: '{new}' is already enrolled (remove it first, or enroll the photos "
                               "again under one name)")
        self.row_names = [new if n == old else n for n in self.row_names]
        return self.row_names.count(new)

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
        g = Gallery.read(path)
        if g.model_sha != model_sha:
            raise GalleryError(f"{path}: enrolled with another model (sha256 {g.model_sha[:12]}…, this one "
                               f"{model_sha[:12]}…): enroll the people again")
        if g.dim != dim:
            raise GalleryError(f"{path}: embeddings {g.embeddings.shape} do not match {len(g.row_names)} names x {dim}")
        return g

    @staticmethod
    def read(path: Path) -> Gallery:
        """Read a gallery whatever model made it (to list, rename or remove people)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                names = [str(n) for n in z["names"]]
                emb = z["embeddings"].astype(np.float32)
                sha = str(z["model_sha"])
        except FileNotFoundError:
            raise GalleryError(f"{path}: gallery not found (create it with 'edgecam enroll')") from None
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise GalleryError(f"{path}: not a gallery file ({e})") from None
        if emb.ndim != 2 or len(emb) != len(names):
            raise GalleryError(f"{path}: embeddings {emb.shape} do not match {len(names)} names")
        return Gallery(sha, int(emb.shape[1]), names, emb)


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

    def __init__(self, model: str | Path, gallery: Path | None = None, threads: int = 1,
                 threshold: float | None = None):
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

    def __init__(self, model: str | Path, gallery: Path | None = None, threads: int = 1,
                 threshold: float | None = None):
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
        if threshold is not None:  # stricter or looser matching: the uncertain band moves along
            self.t_known, self.t_unknown = float(threshold), float(threshold) - (self.t_known - self.t_unknown)
        self.model_sha = str(self.manifest.data["sha256"])
        self._gallery_stamp = _file_stamp(gallery) if gallery else None
        self.gallery = Gallery.load(gallery, self.model_sha, self.dim) if gallery else Gallery(self.model_sha, self.dim)

    def reload_gallery(self, path: Path) -> bool:
        """Read the gallery file again when it changed since it was read (another process enrolled or named
        someone: ``edgecam enroll``, ``edgecam visitors name``); whether it did. A file that cannot be read now
        leaves the gallery as it was (logged)."""
        stamp = _file_stamp(path)
        if stamp is None or stamp == self._gallery_stamp:
            return False
        self._gallery_stamp = stamp
        try:
            self.gallery = Gallery.load(path, self.model_sha, self.dim)
        except GalleryError as e:
            logger.warning("gallery changed but cannot be read (keeping the one loaded): %s", e)
            return False
        logger.info("%s changed: %d people enrolled now", path, len(self.gallery.people))
        return True

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
        emb = self.embed(crops)
        names, scores = self.gallery.match(emb)
        out = []
        for name, score, e in zip(names, scores, emb, strict=True):
            st = self.status(float(score))
            out.append(Identity(name if st != "unknown" else "unknown", st, float(score), e))
        return out


def _file_stamp(path: Path) -> tuple[int, int] | None:
    """(mtime ns, size) of a file, None when it cannot be read."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class ClassifierRecognizer(Recognizer):
    """``classifier`` kind: a closed-set crop classifier with labels; below its threshold, ``unknown``."""

    kind = "classifier"

    def __init__(self, model: str | Path, gallery: Path | None = None, threads: int = 1,
                 threshold: float | None = None):
        if gallery is not None:
            raise EdgecamError("a classifier recognizer takes no gallery")
        super().__init__(model, None, threads)
        out = self.manifest.output
        if out.get("type") != "classifier" or not self.manifest.labels:
            raise ModelError(f"{self.manifest.folder}/model.json: the classifier kind needs output.type "
                             "'classifier' and a labels list")
        self.labels = self.manifest.labels
        self._check_output_width(len(self.labels), "labels")
        self.threshold = float(threshold if threshold is not None else out.get("threshold", 0.5))
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


def make_recognizer(kind: str, model: str | Path, gallery: Path | None = None, threads: int = 1,
                    threshold: float | None = None) -> Recognizer:
    """The recognizer of a kind (``identity`` | ``classifier``) for a model name or folder; ``threshold``
    overrides the model's (similarity to name someone, or class probability)."""
    if kind not in Recognizer.kinds:
        raise EdgecamError(f"recognizer type '{kind}' is not one of {', '.join(sorted(Recognizer.kinds))}")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise EdgecamError(f"threshold {threshold}: want a value between 0 and 1 (exclusive)")
    return Recognizer.kinds[kind](model, Path(gallery) if gallery else None, threads, threshold)


# -------------------------------------------------------------------------------------- enroll / identify


Detector = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class EnrollResult:
    """What enrollment made of one file of ``DIR/<person>/``."""

    path: Path
    ok: bool
    reason: str = ""  # why the file was skipped; when ok, a note (the main face of several was taken)
    person: str = ""
    similarity: float | None = None  # best cosine similarity to the person's other photos (None: no other)
    warning: str = ""  # set when the photo does not look like the person's other photos


def main_face(boxes: np.ndarray, shape: tuple[int, ...]) -> tuple[int | None, str]:
    """The index of the photo's main face among ``boxes`` (N, 5) x1,y1,x2,y2,score and a note, or None and why.

    The main face is the most prominent: box side (square root of its area) x centrality (1 at the centre of
    the photo, 0.5 in a corner). A second face at least ``ENROLL_SIMILAR_FACES`` as prominent makes the photo
    ambiguous: two people of about the same size, and no telling which one is meant.
    """
    if len(boxes) == 1:
        return 0, ""
    h, w = shape[:2]
    side = np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
    off = np.hypot(((boxes[:, 0] + boxes[:, 2]) / 2 - w / 2) / (w / 2),
                   ((boxes[:, 1] + boxes[:, 3]) / 2 - h / 2) / (h / 2)) / np.sqrt(2)  # 0 centre, 1 corner
    prominence = side * (1 - 0.5 * np.clip(off, 0, 1))
    main = int(np.argmax(prominence))
    similar = int((prominence >= ENROLL_SIMILAR_FACES * prominence[main]).sum())
    if similar > 1:
        return None, f"{similar} faces of similar size found (crop the photo to the one person)"
    others = len(boxes) - 1
    return main, (f"took the main face ({side[main]:.0f} px) of {len(boxes)} found; {others} smaller or "
                  f"off-centre face{'s' if others > 1 else ''} ignored")


def detect_in_portrait(detector: Detector, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Faces of an enrollment photo: (N, 5) boxes and (N, 4, 2) landmarks in its pixels.

    A close-up whose face fills the photo is found with poor landmarks, or not at all: when nothing is found or
    a box spans most of the photo, it is tried again in the middle of a grey canvas three times its size (the
    face then fills a third), and that result is taken when it has a face.
    """
    boxes, landmarks = detector(bgr)
    h, w = bgr.shape[:2]
    if len(boxes) and not np.any((boxes[:, 2] - boxes[:, 0] > 0.8 * w) | (boxes[:, 3] - boxes[:, 1] > 0.8 * h)):
        return boxes, landmarks
    canvas = cv2.copyMakeBorder(bgr, h, h, w, w, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    cb, cl = detector(canvas)
    if len(cb) == 0:
        return boxes, landmarks
    boxes, landmarks = cb.copy(), cl.copy()
    boxes[:, [0, 2]] -= w
    boxes[:, [1, 3]] -= h
    landmarks -= np.array([w, h], np.float32)
    return boxes, landmarks


def enroll_crop(detector: Detector, size: tuple[int, int], bgr: np.ndarray,
                gate: QualityGate) -> tuple[np.ndarray | None, str]:
    """The aligned crop of the main face of an enrollment image and a note (empty, or which face of several was
    taken), or None and why not (no face, faces of similar size, too small, blurred, turned away)."""
    boxes, landmarks = detect_in_portrait(detector, bgr)
    if len(boxes) == 0:
        return None, "no face found"
    k, note = main_face(boxes, bgr.shape)
    if k is None:
        return None, note
    crop = align(bgr, landmarks[k], size)
    q = gate(crop, boxes[k], landmarks[k])
    if q.reason == "small":
        return None, f"face too small ({q.size:.0f} px, want at least {gate.min_size_px:.0f})"
    if q.reason == "blurred":
        return None, f"face too blurry (sharpness {q.sharpness:.0f}, want at least {gate.min_sharpness:.0f})"
    if q.reason == "turned":
        return None, f"face turned away (yaw {q.yaw:.2f}, want at most {gate.max_yaw:.2f})"
    return crop, note


def enroll_folder(detector: Detector, recognizer: Recognizer, folder: Path, gallery_path: Path,
                  gate: QualityGate | None = None, keep_flagged: bool = False) -> list[EnrollResult]:
    """Enroll ``folder/<person>/<photo>`` into the gallery file; one ``EnrollResult`` per file found.

    Every file OpenCV can decode counts, whatever its extension; hidden files (``.DS_Store``) are ignored,
    anything else that is not usable is skipped with the reason. A person enrolled again gets the new embeddings
    in place of the old ones. A photo that does not look like any of the person's other photos (best similarity
    below the recognizer's ``unknown`` threshold) gets a ``warning``; when the person's other photos agree among
    themselves it is the odd one out and is left out (``keep_flagged``: enrolled all the same). The gallery is
    written once, atomically, at the end: an error part-way leaves the previous file untouched.
    """
    if not isinstance(recognizer, EmbeddingRecognizer):
        raise EdgecamError(f"enrollment needs an identity (embedding) recognizer, not '{recognizer.kind}'")
    gate = gate or QualityGate(ENROLL_MIN_FACE_PX, ENROLL_MIN_SHARPNESS, ENROLL_MAX_YAW)
    gallery_path = Path(gallery_path)
    gallery = Gallery.load(gallery_path, recognizer.model_sha, recognizer.dim) if gallery_path.exists() \
        else Gallery(recognizer.model_sha, recognizer.dim)
    entries = sorted(p for p in Path(folder).iterdir() if not p.name.startswith("."))
    people = [d for d in entries if d.is_dir()]
    loose = [EnrollResult(p, False, "not in a person folder (want DIR/<person>/<photo>)") for p in entries
             if not p.is_dir()]
    if not people:
        raise EdgecamError(f"{folder}: no person folders (want {folder}/<person>/<photo>"
                           f"{f'; {len(loose)} files lie directly in it' if loose else ''})")
    results: list[EnrollResult] = []
    flagged: list[tuple[EnrollResult, np.ndarray]] = []
    for person in people:
        person_results, crops = _enroll_person_files(detector, recognizer, person, gate)
        results += person_results
        if not crops:
            continue
        emb = recognizer.embed(crops)
        used = [r for r in person_results if r.ok]
        keep = _check_agreement(used, emb, recognizer.t_unknown, keep_flagged)
        flagged += [(r, e) for r, e in zip(used, emb, strict=True) if r.warning]
        if keep.any():
            gallery.remove(person.name)
            gallery.add(person.name, emb[keep])
            logger.info("enrolled %s with %s images", person.name, int(keep.sum()))
    for r, e in flagged:
        r.warning += _closest_other(gallery, e, r.person, recognizer.t_unknown)
    if any(r.ok for r in results):
        gallery.save(gallery_path)
    return results + loose


def _enroll_person_files(detector: Detector, recognizer: EmbeddingRecognizer, person: Path,
                         gate: QualityGate) -> tuple[list[EnrollResult], list[np.ndarray]]:
    """One result per file of a person folder, and the aligned crops of the usable ones (in order)."""
    try:
        check_person_name(person.name)
        name_problem = ""
    except GalleryError as e:
        name_problem = str(e)
    results, crops = [], []
    for path in sorted(p for p in person.iterdir() if not p.name.startswith(".")):
        if name_problem or path.is_dir():
            why = name_problem or "a folder (photos go directly in DIR/<person>/)"
            results.append(EnrollResult(path, False, why, person.name))
            continue
        bgr, why = _read_image(path)
        crop, why = enroll_crop(detector, recognizer.input_size, bgr, gate) if bgr is not None else (None, why)
        results.append(EnrollResult(path, crop is not None, why, person.name))
        if crop is not None:
            crops.append(crop)
    return results, crops


def _check_agreement(results: list[EnrollResult], emb: np.ndarray, threshold: float,
                     keep_flagged: bool) -> np.ndarray:
    """Which of a person's photos (``results``, embeddings (N, D)) to enroll: (N,) bool.

    Sets each photo's ``similarity`` (best cosine to the person's other photos) and, below ``threshold`` (it
    would not be matched to them), a ``warning``. Flagged photos are left out when at least one pair of the
    person's photos agrees (they are the odd ones out), unless ``keep_flagged``; when no two photos agree there
    is no telling which is right, and all stay, flagged.
    """
    keep = np.ones(len(emb), bool)
    if len(emb) < 2:
        return keep
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    best = sims.max(1)
    agree = best >= threshold
    others = len(emb) - 1
    for r, sim, ok in zip(results, best, agree, strict=True):
        r.similarity = round(float(sim), 4)
        if not ok:
            r.warning = (f"does not look like {r.person}'s other {others} photo{'s' if others > 1 else ''} "
                         f"(best similarity {sim:.2f}, a match needs {threshold:.2f})")
    if keep_flagged or not agree.any():
        return keep
    for r, ok in zip(results, agree, strict=True):
        if not ok:
            r.ok, r.reason = False, "looks like someone else: left out (see the warning; --keep-flagged enrolls it)"
    return agree


def _closest_other(gallery: Gallery, emb: np.ndarray, person: str, threshold: float) -> str:
    """``; it looks like <name> (similarity S)`` for the enrolled person other than ``person`` whom a flagged
    photo matches best, when it matches them; else empty."""
    rows = [i for i, n in enumerate(gallery.row_names) if n != person]
    if not rows:
        return ""
    sims = gallery.embeddings[rows] @ emb
    best = int(np.argmax(sims))
    return f"; it looks like {gallery.row_names[rows[best]]} (similarity {sims[best]:.2f})" \
        if sims[best] >= threshold else ""


def _read_image(path: Path) -> tuple[np.ndarray | None, str]:
    """An enrollment image as BGR, or None and why not (empty, not an image, zero-size, too large)."""
    from edgecam.sources import SourceError
    from edgecam.stills import read_still

    try:
        return read_still(path), ""
    except SourceError as e:
        return None, str(e).removeprefix(f"{path}: ")


def identify_image(detector: Detector, recognizer: Recognizer, bgr: np.ndarray) -> list[dict[str, Any]]:
    """Detect, align and name every face: [{box, score, landmarks, name, similarity, status, candidate}].

    ``score`` is the detector's confidence (as in ``detect``), ``similarity`` the match score of the best
    person (cosine similarity; a classifier's class probability), ``name`` is ``unknown`` when nobody matches
    and ``uncertain`` between the thresholds, with the best ``candidate``.
    """
    boxes, landmarks = detector(bgr)
    crops = [align(bgr, lm, recognizer.input_size) for lm in landmarks]
    ids = recognizer(crops) if crops else []
    out = []
    for b, lm, ident in zip(boxes, landmarks, ids, strict=True):
        name = ident.name if ident.status == "known" else ident.status
        out.append({"box": [round(float(v), 1) for v in b[:4]], "name": name, "score": round(float(b[4]), 4),
                    "similarity": round(ident.score, 4), "status": ident.status,
                    **({"candidate": ident.name} if ident.status == "uncertain" else {}),
                    "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in lm]})
    return out
