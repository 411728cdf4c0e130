"""Face-crop datasets for the recognizer: aligned crops, person splits and the cached teacher embeddings.

Crops are made exactly as at run time: landmarks (4 points: image-left eye, image-right eye, nose, mouth
centre) -> ``edgecam.crops.align`` -> 112x112, stored RGB uint8. Landmark sources:

- ``detector``: our face detector (``edgecam.detect.FaceDetector``), the runtime path: used for LFW and for
  every evaluation number. On an LFW image (one centred person) the face nearest the centre is kept.
- ``yunet``: the YuNet anchor (5 points; mouth centre = mean of the mouth corners), for development only.
- WebFaces faces always use their ground-truth landmarks (``landmarks.txt``); they carry no identity.

LFW people are split by a seeded permutation of the sorted names (``split_people``): ``eval`` (held out from
all training, verification pairs and open-set identification), ``calib`` (threshold calibration only) and
``train`` (distillation crops, and the identity labels of the student trained without the teacher).
CelebA (``runs/data/celeba``, staged by ``python -m training.fetched --set celeba``) is split by identity
(``celeba_split``): 1,000 seeded identities are ``eval`` (never train or calibrate on them), the rest ``train``.
``identity/lfw_few`` people are strangers for threshold calibration (``training.recognizer.calibrate``).

Steps (outputs under ``--out``, default ``runs/recognizer/data``; both resumable)::

    python -m training.recognizer.data crops --landmarks detector     # crops.npy + meta.json (~3 min)
    python -m training.recognizer.data teacher                        # teacher.npy: SFace on crop + flip
    python -m training.recognizer.data views --clean runs/recognizer/data_yunet   # detector-aligned views

To train on another machine (a GPU box, ``--device cuda`` in ``training.recognizer.train``), ``pack`` writes
the training set as one ~55 MB file (crops as WebP q85, the eval people left out, targets in float16) and
``unpack`` turns it back into a data folder there::

    python -m training.recognizer.data pack --to gpu/recognizer.npz
    python -m training.recognizer.data unpack --to gpu/recognizer.npz --out runs/recognizer/data
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from edgecam.crops import align

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / "../shared"
DEFAULT_OUT = REPO / "runs/recognizer/data"
SPLIT_SEED = 20240601
SPLIT_SIZES = {"eval": 100, "calib": 40}  # the rest of the people are "train"
CELEBA_EVAL = 1000  # CelebA identities held out of all training and calibration (the rest are "train")


def split_people(names: list[str], seed: int = SPLIT_SEED) -> dict[str, str]:
    """Seeded person -> split ('eval' | 'calib' | 'train') over the sorted names."""
    order = np.random.default_rng(seed).permutation(sorted(names))
    n_eval, n_calib = SPLIT_SIZES["eval"], SPLIT_SIZES["calib"]
    return {str(p): "eval" if i < n_eval else "calib" if i < n_eval + n_calib else "train"
            for i, p in enumerate(order)}


def celeba_split(identity_file: Path, seed: int = SPLIT_SEED) -> dict[str, str]:
    """CelebA image name -> split ('eval' | 'train'), by identity: a seeded ``CELEBA_EVAL`` identities are 'eval'.

    ``identity_file`` has one ``image identity`` line per image (``celeba_first10k_identity.txt``, after a
    header); the eval identities are drawn from the sorted identities of that file, so the split does not depend
    on which images were staged.
    """
    rows = [r for r in (line.split() for line in identity_file.read_text().splitlines()) if len(r) == 2
            and r[1].isdigit()]  # the file starts with a header line ``img label``
    ids = sorted({r[1] for r in rows}, key=int)
    held = {str(i) for i in np.random.default_rng(seed).permutation(ids)[:CELEBA_EVAL]}
    return {r[0]: "eval" if r[1] in held else "train" for r in rows}


def celeba_eval_photos(identity_file: Path, folder: Path, part: slice, seed: int = 0) -> list[tuple[str, Path]]:
    """(identity, path) of every staged photo of a ``part`` of the CelebA eval identities (``celeba_split``) in
    one seeded order: ``calibrate`` and ``visitors_eval`` report on the first ones and calibrate on the next."""
    split = celeba_split(identity_file)
    who = {r.split()[0]: r.split()[1] for r in identity_file.read_text().splitlines() if r.split()[0] in split}
    held = sorted({who[f] for f, s in split.items() if s == "eval" and (folder / f).exists()}, key=int)
    chosen = set(np.random.default_rng(seed).permutation(held)[part].tolist())
    return [(who[f], folder / f) for f in sorted(split) if who[f] in chosen and (folder / f).exists()]


def lfw_people(root: Path) -> dict[str, list[Path]]:
    """LFW folder -> {person: sorted image paths}."""
    people = {d.name: sorted(d.glob("*.jpg")) for d in sorted(root.iterdir()) if d.is_dir()}
    return {k: v for k, v in people.items() if v}


Landmarker = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""A face finder: BGR image -> (boxes (N, 5) x1,y1,x2,y2,score, landmarks (N, 4, 2))."""


def yunet_landmarks(model: Path) -> Landmarker:
    """A landmark function bgr -> (boxes (N, 5) x1,y1,x2,y2,score, landmarks (N, 4, 2)) using YuNet."""
    det = cv2.FaceDetectorYN.create(str(model), "", (320, 320), 0.6, 0.3, 50)

    def run(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        det.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = det.detect(bgr)
        if faces is None:
            return np.zeros((0, 5), np.float32), np.zeros((0, 4, 2), np.float32)
        boxes = np.concatenate([faces[:, :2], faces[:, :2] + faces[:, 2:4], faces[:, 14:15]], 1)
        five = faces[:, 4:14].reshape(-1, 5, 2)
        four = np.concatenate([five[:, :3], five[:, 3:5].mean(1, keepdims=True)], 1)
        return boxes.astype(np.float32), four.astype(np.float32)

    return run


def detector_landmarks(model: str = "face_detector") -> Landmarker:
    """Our detector (the runtime path; the shipped one, or another model folder) as a landmark function."""
    from edgecam.detect import FaceDetector

    return FaceDetector(model)


def central_face(boxes: np.ndarray, landmarks: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """Landmarks (4, 2) of the detected face whose box centre is nearest the image centre, or None."""
    if len(boxes) == 0:
        return None
    centres = (boxes[:, :2] + boxes[:, 2:4]) / 2
    d = np.linalg.norm(centres - np.array([shape[1] / 2, shape[0] / 2]), axis=1)
    return landmarks[int(np.argmin(d))]


@dataclass
class CropSet:
    """Aligned crops (N, 112, 112, 3) RGB uint8 and per-crop metadata lists."""

    crops: np.ndarray
    meta: dict[str, list]

    @staticmethod
    def load(folder: Path | str, mmap: bool = True) -> CropSet:
        folder = Path(folder)
        crops = np.load(folder / "crops.npy", mmap_mode="r" if mmap else None)
        meta = json.loads((folder / "meta.json").read_text())
        return CropSet(crops, meta)

    def indices(self, source: str | None = None, split: str | None = None) -> np.ndarray:
        """Indices of crops from a source ('webfaces' | 'lfw') and/or an LFW split."""
        ok = np.ones(len(self.meta["source"]), bool)
        if source is not None:
            ok &= np.array(self.meta["source"]) == source
        if split is not None:
            ok &= np.array(self.meta["split"]) == split
        return np.flatnonzero(ok)


def build_crops(shared: Path, out: Path, landmarks: str, size: int = 112, detector: str = "face_detector") -> None:
    """Write ``crops.npy`` and ``meta.json``: every WebFaces face (ground truth) and every LFW image."""
    from training.detector.data import read_landmarks

    crops: list[np.ndarray] = []
    meta: dict[str, list] = {"source": [], "person": [], "split": [], "path": []}
    web = shared / "data/detection/webfaces"
    for name, lms in tqdm(sorted(read_landmarks(web).items()), desc="webfaces"):
        bgr = cv2.imread(str(web / "images" / name))
        if bgr is None:
            continue
        for k, lm in enumerate(lms):
            crops.append(align(bgr, lm, size)[:, :, ::-1])
            _append(meta, "webfaces", f"webfaces:{name}:{k}", "train", f"{name}#{k}")
    finder = yunet_landmarks(shared / "models/anchors/face_detection_yunet_2023mar_int8bq.onnx") \
        if landmarks == "yunet" else detector_landmarks(detector)
    people = lfw_people(shared / "data/identity/lfw")
    splits = split_people(list(people))
    missed = 0
    for person, paths in tqdm(people.items(), desc="lfw"):
        for p in paths:
            bgr = cv2.imread(str(p))
            lm = None if bgr is None else central_face(*finder(bgr), bgr.shape)
            if bgr is None or lm is None:
                missed += 1
                continue
            crops.append(align(bgr, lm, size)[:, :, ::-1])
            _append(meta, "lfw", person, splits[person], f"{person}/{p.name}")
    logger.info("lfw: %s images without a detected face skipped", missed)
    meta["landmarks"] = [landmarks]
    meta["lfw_missed"] = [missed]
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "crops.npy", np.stack(crops))
    (out / "meta.json").write_text(json.dumps(meta))
    print(f"{len(crops)} crops -> {out} (lfw without a face: {missed})")


def _append(meta: dict[str, list], source: str, person: str, split: str, path: str) -> None:
    meta["source"].append(source)
    meta["person"].append(person)
    meta["split"].append(split)
    meta["path"].append(path)


def same_face(found: np.ndarray, ref: np.ndarray, tolerance: float = 0.35) -> np.ndarray | None:
    """The landmarks (4, 2) among ``found`` (N, 4, 2) nearest ``ref`` (mean point distance), when within
    ``tolerance`` eye distances of it: our detector's view of that face; None when it has none."""
    if len(found) == 0:
        return None
    err = np.linalg.norm(found - ref[None], axis=2).mean(1)
    j = int(np.argmin(err))
    return found[j] if err[j] < tolerance * float(np.linalg.norm(ref[1] - ref[0])) else None


def build_runtime_views(shared: Path, out: Path, clean: Path | None) -> None:
    """Write ``views.npz``: the training faces as our detector aligns them, with clean teacher targets.

    - ``crops`` (M, 112, 112, 3) RGB: every WebFaces face that our detector finds (its landmarks within
      0.35 eye distances of the ground truth), aligned on the detector's landmarks — the crop the daemon
      will see, with the detector's landmark noise and bias;
    - ``index`` (M,): the crop in ``crops.npy`` (ground-truth aligned) whose cached teacher embedding is
      the target, so the student learns to give the clean crop's embedding for the detector's crop;
    - ``targets`` (N, 2, 128): the teacher targets of ``crops.npy``, where LFW crops take the embedding of
      the same image aligned on YuNet's landmarks (``clean``: a crop folder made with ``--landmarks yunet``)
      instead of our detector's, when that folder has the image.
    """
    from training.detector.data import read_landmarks

    meta = json.loads((out / "meta.json").read_text())
    targets = np.load(out / "teacher.npy")
    if clean is not None:
        cmeta = json.loads((clean / "meta.json").read_text())
        cteach = np.load(clean / "teacher.npy")
        where = {p: i for i, (p, s) in enumerate(zip(cmeta["path"], cmeta["source"], strict=True)) if s == "lfw"}
        for i, (p, s) in enumerate(zip(meta["path"], meta["source"], strict=True)):
            if s == "lfw" and p in where:
                targets[i] = cteach[where[p]]
    index_of = {p: i for i, p in enumerate(meta["path"])}
    det = detector_landmarks()
    web = shared / "data/detection/webfaces"
    crops, index = [], []
    for name, lms in tqdm(sorted(read_landmarks(web).items()), desc="detector views"):
        bgr = cv2.imread(str(web / "images" / name))
        if bgr is None:
            continue
        _, found = det(bgr)
        for k, lm in enumerate(lms):
            view = same_face(found, lm)
            if view is not None and f"{name}#{k}" in index_of:
                crops.append(align(bgr, view, 112)[:, :, ::-1])
                index.append(index_of[f"{name}#{k}"])
    np.savez(out / "views.npz", crops=np.stack(crops), index=np.array(index), targets=targets)
    print(f"{len(crops)} detector-aligned WebFaces views -> {out / 'views.npz'}")


def pair_sources(shared: Path, staged: Path, utkface: int) -> Iterator[tuple[str, str, str, str, Path, Any]]:
    """(source, person, split, path key, image, ground-truth landmarks or None) of every ``pairs`` photo.

    WebFaces faces (ground truth, no identity), the LFW ``train`` and ``calib`` people (never ``eval``), the
    CelebA ``train`` identities and the first ``utkface`` UTKFace photos (one person each) when staged.
    """
    from training.detector.data import read_landmarks

    web = shared / "data/detection/webfaces"
    for name, lms in sorted(read_landmarks(web).items()):
        yield "webfaces", f"webfaces:{name}", "train", name, web / "images" / name, lms
    people = lfw_people(shared / "data/identity/lfw")
    splits = split_people(list(people))
    for person, paths in people.items():
        if splits[person] != "eval":
            for p in paths:
                yield "lfw", person, splits[person], f"{person}/{p.name}", p, None
    ids = shared / "data/identity/celeba_first10k_identity.txt"
    if (staged / "celeba").is_dir() and ids.exists():
        who = {r[0]: r[1] for r in (line.split() for line in ids.read_text().splitlines()) if len(r) == 2}
        for name, split in sorted(celeba_split(ids).items()):
            if split == "train" and (staged / "celeba" / name).exists():
                yield "celeba", f"celeba:{who[name]}", "train", name, staged / "celeba" / name, None
    for p in sorted((staged / "utkface").glob("*.jpg"))[:utkface]:
        yield "utkface", f"utkface:{p.name}", "train", p.name, p, None


def build_pairs(shared: Path, staged: Path, out: Path, utkface: int, size: int = 112,
                detector: str = "face_detector") -> None:
    """Write ``crops.npy`` (the runtime crops: aligned on our detector's landmarks), ``clean.npy`` (the same
    faces aligned on YuNet's or the ground truth's landmarks: the teacher's input) and ``meta.json``.

    A face is kept when our detector finds it within 0.35 eye distances of the clean landmarks (on LFW,
    CelebA and UTKFace: YuNet's face nearest the centre). Photos that are a face and little else (CelebA, UTKFace)
    are padded by half their size first (mirrored), as a camera frame would show them. ``teacher`` then embeds
    ``clean.npy``, so the student learns the clean crop's embedding from the crop the daemon will see.
    """
    det = detector_landmarks(detector)
    yunet = yunet_landmarks(shared / "models/anchors/face_detection_yunet_2023mar_int8bq.onnx")
    crops, clean = [], []
    meta: dict[str, list] = {"source": [], "person": [], "split": [], "path": []}
    missed: dict[str, int] = {}
    for source, person, split, key, path, truth in tqdm(list(pair_sources(shared, staged, utkface)), desc="pairs"):
        bgr = cv2.imread(str(path))
        if bgr is None:
            continue
        if source in ("celeba", "utkface"):
            pad = max(bgr.shape[:2]) // 2
            bgr = cv2.copyMakeBorder(bgr, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
        refs = truth if truth is not None else [central_face(*yunet(bgr), bgr.shape)]
        _, found = det(bgr)
        for k, ref in enumerate(refs):
            view = None if ref is None else same_face(found, ref)
            if view is None:
                missed[source] = missed.get(source, 0) + 1
                continue
            crops.append(align(bgr, view, size)[:, :, ::-1])
            clean.append(align(bgr, ref, size)[:, :, ::-1])
            _append(meta, source, person, split, f"{key}#{k}" if truth is not None else key)
    meta["landmarks"] = ["detector"]
    meta["missed"] = [missed]
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "crops.npy", np.stack(crops))
    np.save(out / "clean.npy", np.stack(clean))
    (out / "meta.json").write_text(json.dumps(meta))
    counts = {s: meta["source"].count(s) for s in sorted(set(meta["source"]))}
    print(f"{len(crops)} pairs -> {out} {counts}; no face or landmarks off: {missed}")


def build_teacher(out: Path, threads: int, chunk: int = 512, reuse: Path | None = None) -> None:
    """Write ``teacher.npy`` (N, 2, 128): SFace embeddings of each crop and of its mirror (resumable); of each
    ``clean.npy`` crop where the folder has one (``pairs``).

    ``reuse``: an earlier ``pairs`` folder whose embeddings are taken for the photos both hold (same source and
    path: the clean crop does not depend on our detector, only which photos it keeps does), so a new detector's
    pairs cost the teacher only its new photos; 8 taken rows are re-embedded as a check.
    """
    from training.recognizer.teacher import OnnxTeacher

    crops = np.load(out / ("clean.npy" if (out / "clean.npy").exists() else "crops.npy"), mmap_mode="r")
    teacher = OnnxTeacher(threads=threads)
    emb = np.zeros((len(crops), 2, 128), np.float32)
    todo = np.arange(len(crops))
    if reuse is not None:
        have = dict(zip(_pair_keys(reuse), np.load(reuse / "teacher.npy"), strict=True))
        keys = _pair_keys(out)
        taken = np.array([k in have for k in keys])
        emb[taken] = [have[k] for k, t in zip(keys, taken, strict=True) if t]
        todo = np.flatnonzero(~taken)
        check = np.sort(np.random.default_rng(0).permutation(np.flatnonzero(taken))[:8])
        if len(check):
            again, kept = _batched(teacher, np.asarray(crops[check])), emb[check, 0]
            cos = (again * kept).sum(1) / np.linalg.norm(again, axis=1) / np.linalg.norm(kept, axis=1)
            if float(cos.min()) < 0.999:
                raise ValueError(f"{reuse}: its teacher embeddings are not of this folder's clean crops")
        logger.info("teacher: %d of %d rows taken from %s", int(taken.sum()), len(crops), reuse)
    parts = out / "teacher_parts"
    parts.mkdir(exist_ok=True)
    starts = range(0, len(todo), chunk)
    for s in tqdm(starts, desc="teacher"):
        part = parts / f"{s:07d}_{chunk}_{len(todo)}.npy"
        if not part.exists():
            x = np.asarray(crops[todo[s:s + chunk]])
            np.save(part, np.stack([_batched(teacher, x), _batched(teacher, x[:, :, ::-1])], 1).astype(np.float32))
        emb[todo[s:s + chunk]] = np.load(part)
    np.save(out / "teacher.npy", emb)
    print(f"teacher embeddings -> {out / 'teacher.npy'} ({len(todo)} embedded here)")


def _pair_keys(folder: Path) -> list[tuple[str, str]]:
    """(source, path) of every row of a data folder."""
    meta = json.loads((folder / "meta.json").read_text())
    return list(zip(meta["source"], meta["path"], strict=True))


def pack(data: Path, dest: Path, quality: int = 85) -> None:
    """The data folder as one file: WebP crops and views (eval people blank), float16 targets, metadata."""
    cs = CropSet.load(data)
    crops, meta = cs.crops, cs.meta
    views = np.load(data / "views.npz")
    train = np.array(meta["split"]) != "eval"

    def code(images: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        blobs = [cv2.imencode(".webp", np.ascontiguousarray(im[..., ::-1]), [cv2.IMWRITE_WEBP_QUALITY, quality])[1]
                 if k else np.zeros(0, np.uint8) for im, k in zip(tqdm(images, desc="pack"), keep, strict=True)]
        return np.concatenate(blobs), np.cumsum([0] + [len(b) for b in blobs])

    c, c_off = code(crops, train)
    v, v_off = code(views["crops"], train[views["index"]])
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dest, crops=c, crops_off=c_off, views=v, views_off=v_off, views_index=views["index"],
             views_targets=views["targets"].astype(np.float16),
             teacher=np.load(data / "teacher.npy").astype(np.float16),
             meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    logger.info("%s: %.1f MB", dest, dest.stat().st_size / 1e6)


def unpack(src: Path, out: Path, size: int = 112) -> None:
    """A data folder (crops.npy, meta.json, teacher.npy, views.npz) from a ``pack`` file."""
    from concurrent.futures import ThreadPoolExecutor

    z = np.load(src)

    def decode(blob: np.ndarray, off: np.ndarray) -> np.ndarray:
        def one(i: int) -> np.ndarray:
            if off[i] == off[i + 1]:
                return np.zeros((size, size, 3), np.uint8)
            im = cv2.imdecode(blob[off[i]:off[i + 1]], cv2.IMREAD_COLOR)
            if im is None:
                raise ValueError(f"crop {i} of the packed set does not decode")
            return im[..., ::-1]

        with ThreadPoolExecutor() as ex:
            return np.stack(list(ex.map(one, range(len(off) - 1))))

    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "crops.npy", decode(z["crops"], z["crops_off"]))
    np.save(out / "teacher.npy", z["teacher"].astype(np.float32))
    np.savez(out / "views.npz", crops=decode(z["views"], z["views_off"]), index=z["views_index"],
             targets=z["views_targets"].astype(np.float32))
    (out / "meta.json").write_text(z["meta"].tobytes().decode())


def _batched(teacher: object, x: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([teacher(x[i:i + batch]) for i in range(0, len(x), batch)])  # type: ignore[operator]


def parser() -> argparse.ArgumentParser:
    """The data steps' command line (``training.recognizer.chain`` builds these commands from its run config)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["crops", "pairs", "teacher", "views", "pack", "unpack"])
    ap.add_argument("--to", type=Path, default=None, help="pack/unpack: the packed file")
    ap.add_argument("--clean", type=Path, default=None,
                    help="views: a crop folder made with --landmarks yunet, for clean LFW targets (default: none)")
    ap.add_argument("--shared", type=Path, default=SHARED, help="the ../shared folder (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    ap.add_argument("--landmarks", choices=["detector", "yunet"], default="detector",
                    help="landmark source for LFW (default: detector, the runtime path)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads for the teacher (default: 1)")
    ap.add_argument("--staged", type=Path, default=REPO / "runs/data",
                    help="pairs: the fetched sets (training.fetched; CelebA, UTKFace) (default: %(default)s)")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="teacher: an earlier pairs folder; its embeddings of the same photos are used (default: none)")
    ap.add_argument("--utkface", type=int, default=12000, help="pairs: UTKFace photos used (default: %(default)s)")
    ap.add_argument("--detector", default="face_detector",
                    help="crops/pairs: detector model folder whose landmarks align the runtime crops (default: the "
                         "shipped one)")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.step == "crops":
        build_crops(args.shared, args.out, args.landmarks, detector=args.detector)
    elif args.step == "pairs":
        build_pairs(args.shared, args.staged, args.out, args.utkface, detector=args.detector)
    elif args.step == "views":
        build_runtime_views(args.shared, args.out, args.clean)
    elif args.step in ("pack", "unpack"):
        if args.to is None:
            ap.error(f"{args.step} needs --to FILE")
        pack(args.out, args.to) if args.step == "pack" else unpack(args.to, args.out)
    else:
        build_teacher(args.out, args.threads, reuse=args.reuse)


if __name__ == "__main__":
    main()
