"""Second task for the same toolkit: a closed-set crop classifier of ORL's 40 people (the ``classifier`` kind).

    make orl      # = python -m training.recognizer.orl --config training/recognizer/configs/orl.yaml (~17 min)
    python -m training.recognizer.orl --config training/recognizer/configs/orl.yaml --seed 1 --work runs/orl_s1

The run config (``OrlConfig``) sets every knob; flags override it. Resumable: rerun the same command.

1. crops: every ORL image (92x112 grey, padded by 40 px so the detector sees a whole head) -> detector
   landmarks -> aligned crops, 112x112 RGB for the teacher and 64x64 for the student; per person a seeded
   split of the 10 images into 6 train, 2 val, 2 test.
2. teacher: SFace embeddings + a nearest-centroid cosine classifier of the train images (logits = 10 cos).
   Its logits on 16 augmented variants of every train image are cached for distillation.
3. stages, all with the ``training.compress`` toolkit: student (``crop_classifier``: SFace layout at width
   0.25, 64x64 grey input) trained on labels only; the same student distilled (KL on softened teacher
   logits + labels); structured pruning (half the channels) + distillation; low-rank (1x1 convs by SVD:
   95 % energy, at most 60 % of the parameters) + distillation; int8 (``edgecam.tools.quantize``) both ways:
   static (int8 weights and activations) and int8 weights only (folded to fp32 at load: shipped, as this
   tiny PReLU net ran many times slower in onnxruntime's integer kernels than in fp32).
4. the unknown threshold: the softmax probability that 5 % of LFW ``calib`` faces (people not in ORL)
   reach, so that 95 % of strangers come out ``unknown``.
5. ``edgecam/models/orl_classifier/``: int8 ``.onnx``, ``model.json`` (labels s1..s40), card with the table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from edgecam.crops import align
from edgecam.manifest import sha256_file, to_tensor
from edgecam.tools.quantize import run as quantize
from training.compress import report as table
from training.compress.distill import DistillConfig, load_model, train
from training.compress.export import export_onnx, ort_session
from training.compress.lowrank import factorize_model
from training.compress.prune import prune
from training.compress.size import sizes
from training.recognizer.data import SHARED, CropSet, central_face, detector_landmarks, yunet_landmarks
from training.recognizer.model import count_macs, count_params, create_model, input_shape
from training.recognizer.teacher import SFACE_PATH, OnnxTeacher
from training.recognizer.train import augment
from training.runconfig import parse_run_config

REPO = Path(__file__).resolve().parents[2]
SIZE = 64
SPEC = {"name": "input", "layout": "NCHW", "color": "gray", "size": [SIZE, SIZE], "mean": [127.5], "std": [128.0]}
VARIANTS = 16
COMMAND = "python -m training.recognizer.orl"
RUN_CONFIG = "training/recognizer/configs/orl.yaml"


@dataclass(frozen=True)
class OrlConfig:
    """One ORL run (``training/recognizer/configs/orl.yaml`` is the shipped one; flags override it)."""

    landmarks: str = "detector"  # landmark source of the crops: detector (the runtime path) | yunet
    data: str = "runs/recognizer/data"  # crop set with the LFW calib people (strangers for the unknown threshold)
    work: str = "runs/orl"  # run folder: crops, teacher cache, stage checkpoints, ONNX files, report
    out: str = "edgecam/models/orl_classifier"  # model folder written
    steps: int = 600  # steps of the labels and KD stages; the pruning and low-rank fine-tunes run half as many
    batch: int = 32  # crops per step
    lr: float = 3e-3  # peak learning rate of every stage
    keep: float = 0.5  # pruning: share of channels kept
    energy: float = 0.95  # low-rank: SVD energy kept in 1x1 convs
    max_ratio: float = 0.6  # low-rank: a factorised layer keeps at most this share of its parameters
    stranger_share: float = 0.05  # share of strangers (LFW calib faces) that reach the unknown threshold
    seed: int = 0  # torch init; the augmented variants use seed + 1 and the batches seed + 9
    threads: int = 1  # torch threads
    run_config: str = ""  # the run config file (set by --config)


# -------------------------------------------------------------------------------------------------- data


def orl_split(root: Path) -> list[tuple[Path, list[Path], np.ndarray]]:
    """Per person (s1..s40): folder, image paths, and the seeded part of each image (0 train, 1 val, 2 test)."""
    people = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: int(d.name[1:]))
    rng = np.random.default_rng(5)
    out = []
    for person in people:
        paths = sorted(person.glob("*.pgm"), key=lambda p: int(p.stem))
        part = np.zeros(len(paths), int)
        order = rng.permutation(len(paths))
        part[order[6:8]], part[order[8:]] = 1, 2
        out.append((person, paths, part))
    return out


def build_crops(root: Path, landmarks: str) -> dict[str, Any]:
    """ORL -> aligned crops (112 RGB and 64 BGR), labels, split (0 train, 1 val, 2 test)."""
    finder = yunet_landmarks(SHARED / "models/anchors/face_detection_yunet_2023mar_int8bq.onnx") \
        if landmarks == "yunet" else detector_landmarks()
    split_parts = orl_split(root)
    people = [person for person, _, _ in split_parts]
    c112, c64, labels, split, missed = [], [], [], [], 0
    for k, (_, paths, part) in enumerate(split_parts):
        for p, s in zip(paths, part, strict=True):
            im = cv2.imread(str(p))
            if im is None:
                raise FileNotFoundError(f"{p}: not a readable image")
            bgr = cv2.copyMakeBorder(im, 40, 40, 40, 40, cv2.BORDER_REPLICATE)
            lm = central_face(*finder(bgr), bgr.shape)
            if lm is None:
                missed += 1
                continue
            c112.append(align(bgr, lm, 112)[:, :, ::-1])
            c64.append(align(bgr, lm, SIZE))
            labels.append(k)
            split.append(s)
    print(f"ORL: {len(labels)} crops, {missed} images without a detected face")
    return {"c112": np.stack(c112), "c64": np.stack(c64), "labels": np.array(labels), "split": np.array(split),
            "names": np.array([d.name for d in people])}


def variants(c112: np.ndarray, seed: int) -> np.ndarray:
    """(N, V, 112, 112, 3) RGB augmented copies (variant 0 is the crop itself, 1 its mirror)."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(c112), VARIANTS, *c112.shape[1:]), np.uint8)
    out[:, 0], out[:, 1] = c112, c112[:, :, ::-1]
    for v in range(2, VARIANTS):
        flip = rng.random(len(c112)) < 0.5
        x = c112.copy()
        x[flip] = x[flip, :, ::-1]
        t = augment(x, rng, strength=0.7) * 128 + 127.5
        out[:, v] = t.clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()
    return out


def to_student(rgb112: np.ndarray) -> torch.Tensor:
    """(N, 112, 112, 3) RGB uint8 -> (N, 1, 64, 64) normalised grey (as edgecam feeds the classifier)."""
    bgr = [cv2.resize(np.ascontiguousarray(c[:, :, ::-1]), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
           for c in rgb112]
    return torch.from_numpy(to_tensor(bgr, SPEC))


# ---------------------------------------------------------------------------------------------- teacher


def teacher_logits(emb: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest-centroid cosine logits (10 cos) of L2-normalised embeddings."""
    e = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    return 10.0 * e @ centroids.T


def fit_teacher(d: dict[str, np.ndarray], work: Path, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Class centroids of SFace train embeddings; SFace embeddings of every variant (``seed``) of the train crops."""
    cache = work / "teacher.npz"
    if cache.exists():
        z = np.load(cache)
        return z["centroids"], z["var_emb"]
    teacher = OnnxTeacher()
    train_idx = np.flatnonzero(d["split"] == 0)
    var = variants(d["c112"][train_idx], seed=seed)
    var_emb = np.stack([np.concatenate([teacher(var[i:i + 1, v]) for i in range(len(var))])
                        for v in range(VARIANTS)], 1)  # (N, V, 128)
    e = var_emb[:, :2] / np.linalg.norm(var_emb[:, :2], axis=-1, keepdims=True)
    lab = d["labels"][train_idx]
    centroids = np.stack([e[lab == k].reshape(-1, e.shape[-1]).mean(0) for k in range(lab.max() + 1)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    np.savez(cache, centroids=centroids, var_emb=var_emb)
    return centroids, var_emb


# ----------------------------------------------------------------------------------------------- stages


class OrlBatches:
    """Per-step batches of cached variants: student input, teacher logits, labels."""

    def __init__(self, var: np.ndarray, logits: np.ndarray | None, labels: np.ndarray, batch: int = 32,
                 seed: int = 9) -> None:
        self.var, self.logits, self.labels, self.batch, self.seed = var, logits, labels, batch, seed
        n, v = var.shape[:2]
        self.x = to_student(var.reshape(n * v, *var.shape[2:])).reshape(n, v, 1, SIZE, SIZE)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        i = rng.integers(len(self.var), size=self.batch)
        v = rng.integers(VARIANTS, size=self.batch)
        x = self.x[i, v]
        gain = torch.from_numpy(rng.uniform(0.8, 1.2, (self.batch, 1, 1, 1))).float()
        x = x * gain + torch.from_numpy(rng.uniform(-0.15, 0.15, (self.batch, 1, 1, 1))).float()
        t = torch.from_numpy(self.logits[i, v]).float() if self.logits is not None else None
        return x, t, torch.from_numpy(self.labels[i])


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: np.ndarray) -> float:
    model.eval()
    return float((model(x).argmax(1).numpy() == y).mean())


def run_stage(name: str, model: torch.nn.Module, batches: OrlBatches, work: Path, steps: int, kd: bool,
              val: tuple[torch.Tensor, np.ndarray], lr: float = 3e-3) -> torch.nn.Module:
    cfg = DistillConfig(steps=steps, lr=lr, warmup=min(50, steps // 10), w_cos=0, w_rel=0,
                        w_kl=1.0 if kd else 0.0, w_ce=1.0, ckpt_every=200, eval_every=0)
    model, _ = train(model, batches, cfg, work / name / "ckpt.pt",
                     lambda m: {"val_acc": accuracy(m, *val)}, {"stage": name})
    return model


def export(model: torch.nn.Module, path: Path) -> None:
    export_onnx(model, path, torch.zeros(2, *input_shape(model)), "input", "logits")


def onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    s = ort_session(path)
    return np.concatenate([s.run(None, {"input": x[i:i + 64]})[0] for i in range(0, len(x), 64)])


def ms_per_crop(path: Path, x: np.ndarray, n: int = 200) -> float:
    import time

    s = ort_session(path)
    for _ in range(10):
        s.run(None, {"input": x[:1]})
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        s.run(None, {"input": x[:1]})
        t.append(time.perf_counter() - t0)
    return float(np.median(t) * 1000)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# ------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    cfg, command = parse_run_config(OrlConfig, COMMAND, __doc__, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger(__name__).info("config: %s", json.dumps(dataclasses.asdict(cfg)))
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    work, out, data = REPO / cfg.work, REPO / cfg.out, REPO / cfg.data
    work.mkdir(parents=True, exist_ok=True)

    # 1. crops and split
    cache = work / f"crops_{cfg.landmarks}.npz"
    if not cache.exists():
        np.savez(cache, **build_crops(SHARED / "data/identity/orl", cfg.landmarks))
    d = dict(np.load(cache))
    tr, va, te = (np.flatnonzero(d["split"] == s) for s in (0, 1, 2))
    x_val, x_test = to_student(d["c112"][va]), to_student(d["c112"][te])
    y_val, y_test = d["labels"][va], d["labels"][te]

    # 2. teacher: SFace + centroids; logits of the cached variants
    centroids, var_emb = fit_teacher(d, work, seed=cfg.seed + 1)
    var = variants(d["c112"][tr], seed=cfg.seed + 1)
    t_logits = teacher_logits(var_emb, centroids)
    sface = OnnxTeacher()
    t_test = teacher_logits(np.concatenate([sface(d["c112"][i:i + 1]) for i in te]), centroids)
    classes = len(d["names"])

    # 3. stages
    kd_batches = OrlBatches(var, t_logits, d["labels"][tr], cfg.batch, seed=cfg.seed + 9)
    val = (x_val, y_val)
    stages: dict[str, torch.nn.Module] = {}
    stages["labels"] = run_stage("labels", create_model("crop_classifier", classes=classes), kd_batches,
                                 work, cfg.steps, False, val, cfg.lr)
    stages["kd"] = run_stage("kd", create_model("crop_classifier", classes=classes), kd_batches, work,
                             cfg.steps, True, val, cfg.lr)
    calib = [x_val[:64]]
    if not (work / "prune/ckpt.pt").exists():
        m = load_model(work / "kd/ckpt.pt")
        prune(m, x_val[:2], calib, cfg.keep)
    else:
        m = load_model(work / "prune/ckpt.pt")
    stages["prune"] = run_stage("prune", m, kd_batches, work, cfg.steps // 2, True, val, cfg.lr)
    if not (work / "lowrank/ckpt.pt").exists():
        m = load_model(work / "prune/ckpt.pt")
        factorize_model(m, energy=cfg.energy, max_ratio=cfg.max_ratio, min_saving=0.2, skip=("classifier",))
    else:
        m = load_model(work / "lowrank/ckpt.pt")
    stages["lowrank"] = run_stage("lowrank", m, kd_batches, work, cfg.steps // 2, True, val, cfg.lr)

    # 4. export, int8, figures
    onnx_dir = work / "onnx"
    for k, m in stages.items():
        export(m.eval(), onnx_dir / k / f"orl_{k}.onnx")
    fp32_dir = onnx_dir / "lowrank"
    (fp32_dir / "model.json").write_text(json.dumps(manifest(fp32_dir / "orl_lowrank.onnx", 0.5, d["names"], {})))
    calib_dir = work / "calib_crops"
    shutil.rmtree(calib_dir, ignore_errors=True)
    calib_dir.mkdir()
    for i in tr:
        cv2.imwrite(str(calib_dir / f"{i:04d}.png"), d["c64"][i])
    for kind, weights_only in (("int8_static", False), ("int8", True)):  # the second one is shipped
        command = (f"python deploy/quantize.py {fp32_dir} --calib {calib_dir} --out {onnx_dir / kind} "
                   f"--name orl_classifier.onnx" + (" --weights-only" if weights_only else ""))
        quantize(fp32_dir, calib_dir, onnx_dir / kind, None, 300, "percentile", name="orl_classifier.onnx",
                 weights_only=weights_only, command=command)
    int8 = onnx_dir / "int8" / "orl_classifier.onnx"
    files = {"student, labels only": onnx_dir / "labels/orl_labels.onnx", "student + KD": onnx_dir / "kd/orl_kd.onnx",
             "+ pruning": onnx_dir / "prune/orl_prune.onnx", "+ low-rank": fp32_dir / "orl_lowrank.onnx",
             "+ int8 static (weights + activations)": onnx_dir / "int8_static" / "orl_classifier.onnx",
             "+ int8 weights (shipped)": int8}
    xt = x_test.numpy()
    rows = [{"stage": "teacher: SFace + centroids", "top1": float((t_test.argmax(1) == y_test).mean()),
             "file": SFACE_PATH.stat().st_size, "note": "SFace int8bq file + 40x128 centroids"}]
    for name, path in files.items():
        rows.append({"stage": name, **sizes(path), "top1": float((onnx_logits(path, xt).argmax(1) == y_test).mean()),
                     "ms": ms_per_crop(path, xt)})
    for r, key in zip(rows[1:], ["labels", "kd", "prune", "lowrank", "lowrank", "lowrank"], strict=True):
        r["params"], r["macs"] = count_params(stages[key]), count_macs(stages[key], input_shape(stages[key]))

    # 5. the unknown threshold from LFW calib people (strangers to ORL), and the folder
    thr, reject = unknown_threshold(int8, data, cfg.stranger_share)
    known = float((softmax(onnx_logits(int8, xt)).max(1) >= thr).mean())
    rows[-1]["known_rate"] = known
    md = table.write(rows, work / "report", "stages", "ORL classifier: size vs test top-1")
    print(md)
    write_model_folder(out, int8, thr, d["names"], rows, reject, known, command, cfg.run_config or RUN_CONFIG)
    shutil.copy(work / "report/stages.png", out / "stages.png")


def unknown_threshold(int8: Path, data_dir: Path, share: float = 0.05) -> tuple[float, float]:
    """Probability reached by ``share`` of LFW calib faces (strangers); returns it and the share rejected."""
    crops = CropSet.load(data_dir)
    idx = crops.indices("lfw", "calib")
    p = softmax(onnx_logits(int8, to_student(np.asarray(crops.crops[idx])).numpy())).max(1)
    thr = float(math.ceil(np.quantile(p, 1 - share) * 1000) / 1000)
    return thr, float((p < thr).mean())


def manifest(onnx_path: Path, thr: float, names: np.ndarray, extra: dict) -> dict:
    return {"name": "orl_classifier", "file": onnx_path.name, "sha256": sha256_file(onnx_path), "input": SPEC,
            "output": {"name": "logits", "type": "classifier", "activation": "softmax", "threshold": thr},
            "labels": [str(n) for n in names], **extra}


def write_model_folder(out: Path, int8: Path, thr: float, names: np.ndarray, rows: list[dict], reject: float,
                       known: float, command: str = COMMAND, run_config: str = RUN_CONFIG) -> None:
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(int8, out / "orl_classifier.onnx")
    shipped = rows[-1]
    extra = {"metrics": {"test_top1": shipped["top1"], "teacher_test_top1": rows[0]["top1"],
                         "known_rate_at_threshold": known, "lfw_strangers_rejected": reject,
                         "file_bytes": shipped["file"], "ms_per_crop": shipped["ms"], "params": shipped["params"],
                         "protocol": "ORL: per person a seeded 6/2/2 train/val/test split of the 10 images; "
                                     "threshold = softmax probability reached by 5 % of LFW calib faces",
                         "command": command},
             "training": {"config": run_config},
             "training_data": "AT&T / ORL faces (research use, credit Olivetti Research Lab); not redistributed",
             "license": "Apache-2.0 (weights); trained on research-only data"}
    quant = json.loads((int8.parent / "model.json").read_text())
    extra["quantization"] = quant["quantization"]
    if "session_config" in quant:  # int8 weights folded to fp32 at load
        extra["session_config"] = quant["session_config"]
    (out / "model.json").write_text(json.dumps(manifest(out / "orl_classifier.onnx", thr, names, extra), indent=2)
                                    + "\n")
    card = out / "README.md"
    text = card.read_text() if card.exists() else ""
    start, end = "<!-- stages:start -->", "<!-- stages:end -->"
    if start in text and end in text:
        md = (int8.parents[2] / "report/stages.md").read_text()
        card.write_text(text[: text.index(start) + len(start)] + "\n" + md + text[text.index(end):])


if __name__ == "__main__":
    main()
