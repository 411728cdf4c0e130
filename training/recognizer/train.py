"""Train one stage of the compressed face recognizer (read top to bottom).

Stages (each resumable: rerun the same command, or raise ``--steps`` to continue a finished run):

    # student without the teacher: identity labels of the LFW train people only (CosFace)
    python -m training.recognizer.train labels --arch mbf_small --steps 1500 --out runs/recognizer/labels
    # the same student distilled from SFace's cached embeddings (cosine + relational loss)
    python -m training.recognizer.train kd --arch mbf_small --steps 1500 --out runs/recognizer/kd_scratch
    # SFace's own weights with a stride-2 stem (1/3 of the MACs), distilled back to SFace
    python -m training.recognizer.train kd --arch sface_s2 --init teacher --steps 800 --out runs/recognizer/kd
    # structured pruning of a checkpoint (keep share of channels), then distillation fine-tuning
    python -m training.recognizer.train prune --from runs/recognizer/kd/ckpt.pt --keep 0.5 --out ...
    # low-rank: per-channel SVD of the flatten head, SVD of 1x1 convs by energy, then fine-tuning
    python -m training.recognizer.train lowrank --from .../ckpt.pt --head-rank 2 --energy 0.9 --out ...
    # more distillation of a checkpoint, here on the faces as our detector aligns them (clean targets)
    python -m training.recognizer.train finetune --from .../ckpt.pt --p-view 0.5 --out ...
    # ... or of the shipped file, on many more people as our detector aligns them (``data pairs``)
    python -m training.recognizer.train finetune --from edgecam/models/face_recognizer/face_recognizer.onnx \
        --data runs/recognizer/pairs --out runs/recognizer/pairs_ft

Data: ``runs/recognizer/data`` from ``training.recognizer.data`` (crops + cached teacher embeddings). The
training pool is every crop of the ``train`` split (WebFaces, the LFW ``train`` people; CelebA ``train`` and
UTKFace in a ``pairs`` folder); progress is measured on the ``calib``
people (the ``eval`` people are only touched by ``training.recognizer.report``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.compress.distill import Batch, DistillConfig, load_model, train
from training.compress.lowrank import factorize_flatten_head, factorize_model
from training.compress.prune import prune
from training.recognizer.data import DEFAULT_OUT, CropSet
from training.recognizer.evaluate import evaluate
from training.recognizer.model import FaceMobileNet, Pointwise, count_macs, count_params, create_model
from training.recognizer.ship import student_from_onnx
from training.recognizer.teacher import normalize_input, sface_teacher

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- augmentation


def augment(rgb: np.ndarray, rng: np.random.Generator, strength: float = 1.0, device: str = "cpu") -> torch.Tensor:
    """(B, 112, 112, 3) uint8 crops -> normalised (B, 3, 112, 112) with alignment and camera jitter.

    Half of the batch gets a small similarity jitter (rotation 6 deg, scale 7 %, shift 3 px: detector
    landmark noise); then brightness / contrast, 20 % greyscale (IR cameras), 20 % low resolution (a face
    20-40 px wide upscaled). The teacher target stays that of the clean crop, so the student learns to be
    stable where the runtime crops wobble. The arithmetic runs on ``device``; the random draws do not
    depend on it.
    """
    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)

    b = len(rgb)
    x = t(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float()
    jit = t(rng.random(b) < 0.5 * strength)
    ang = t(rng.uniform(-6, 6, b)).float() * math.pi / 180 * jit
    sc = 1 + t(rng.uniform(-0.07, 0.07, b)).float() * jit
    sh = t(rng.uniform(-0.055, 0.055, (b, 2))).float() * jit[:, None]
    theta = torch.stack([torch.stack([sc * torch.cos(ang), -sc * torch.sin(ang), sh[:, 0]], 1),
                         torch.stack([sc * torch.sin(ang), sc * torch.cos(ang), sh[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    gain = t(rng.uniform(1 - 0.3 * strength, 1 + 0.3 * strength, (b, 1, 1, 1))).float()
    bias = t(rng.uniform(-25 * strength, 25 * strength, (b, 1, 1, 1))).float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * gain + mean + bias
    grey = t(rng.random(b) < 0.2 * strength)
    x[grey] = x[grey].mean(1, keepdim=True).expand(-1, 3, -1, -1)
    low = np.flatnonzero(rng.random(b) < 0.2 * strength)
    for i in low:
        side = int(rng.integers(28, 56))
        small = F.interpolate(x[i:i + 1], size=(side, side), mode="area")
        x[i:i + 1] = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return (x.clamp(0, 255) - 127.5) / 128.0


# -------------------------------------------------------------------------------------------- batches


class Batches:
    """Deterministic per-step batches: crops (+ mirror with the mirrored teacher target), labels.

    ``online`` (the teacher: (B, 112, 112, 3) uint8 RGB crops -> (B, D) embeddings) replaces the cached targets by the
    teacher's embedding of the clean crops, computed each step; then ``mix`` of a batch's rows become mixups of
    two faces (weight uniform in 0..1; Beyer et al. 2022, "a good teacher is patient and consistent"): the
    student sees the mix of the two runtime crops, the teacher embeds the same mix of the two clean crops, so
    the student is taught the teacher's function between faces too, not only at the 41 K training faces.
    """

    def __init__(self, data: CropSet, teacher: np.ndarray | None, pool: np.ndarray, batch: int,
                 labels: np.ndarray | None, seed: int, views: Path | None = None, p_view: float = 0.0,
                 device: str = "cpu", online: Callable[[np.ndarray], np.ndarray] | None = None,
                 clean: np.ndarray | None = None, mix: float = 0.0):
        self.crops = np.asarray(data.crops)  # load into memory (about 0.6 GB)
        self.teacher, self.pool, self.batch, self.labels, self.seed = teacher, pool, batch, labels, seed
        self.views, self.view_of, self.p_view, self.device = None, {}, p_view, device
        self.online, self.clean, self.mix = online, clean, mix
        if views is not None and p_view > 0:  # detector-aligned views of the same faces, clean targets
            z = np.load(views)
            self.views, self.teacher = z["crops"], z["targets"]
            self.view_of = {int(i): k for k, i in enumerate(z["index"])}

    def __call__(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, step])
        idx = rng.choice(self.pool, self.batch, replace=False)
        flip = rng.random(self.batch) < 0.5
        rgb = self.crops[idx].copy()
        if self.views is not None:
            use = rng.random(self.batch) < self.p_view
            for j in np.flatnonzero(use):
                k = self.view_of.get(int(idx[j]))
                if k is not None:
                    rgb[j] = self.views[k]
        rgb[flip] = rgb[flip, :, ::-1]
        t: torch.Tensor | None = None
        if self.online is not None and self.clean is not None:
            clean = self.clean[idx]
            clean[flip] = clean[flip, :, ::-1]
            rows = np.flatnonzero(rng.random(self.batch) < self.mix)
            other = (rows + rng.integers(1, self.batch, len(rows))) % self.batch  # another row
            lam = rng.uniform(0, 1, (len(rows), 1, 1, 1))
            for a in (rgb, clean):
                a[rows] = np.rint(lam * a[rows] + (1 - lam) * a[other]).astype(np.uint8)
            t = torch.from_numpy(self.online(clean))
        elif self.teacher is not None:
            t = torch.from_numpy(self.teacher[idx, flip.astype(int)])
        x = augment(rgb, rng, device=self.device)
        y = torch.from_numpy(self.labels[idx]) if self.labels is not None else None
        return x, t, y


def identity_labels(data: CropSet, pool: np.ndarray, min_crops: int = 1) -> tuple[np.ndarray, int]:
    """Class index per crop (people with at least ``min_crops`` crops in the pool numbered 0..K-1; -1
    elsewhere) and K."""
    persons = np.array(data.meta["person"])
    found, counts = np.unique(persons[pool], return_counts=True)
    names = sorted(str(n) for n in found[counts >= min_crops])
    index = {n: k for k, n in enumerate(names)}
    return np.array([index.get(str(p), -1) for p in persons], np.int64), len(names)


def online_teacher(out: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """SFace in fp32 (exported once into ``out``/teacher): (B, 112, 112, 3) uint8 RGB -> (B, 128) embeddings."""
    import onnxruntime as ort

    from edgecam.manifest import session_options
    from training.recognizer.calibrate import teacher_folder
    from training.recognizer.teacher import SFACE_PATH

    out.mkdir(parents=True, exist_ok=True)
    sess = ort.InferenceSession(str(teacher_folder(out, SFACE_PATH) / "sface_fp32.onnx"), session_options(threads),
                                providers=["CPUExecutionProvider"])
    return lambda rgb: sess.run(None, {"input": normalize_input(rgb).numpy()})[0].astype(np.float32)


# ------------------------------------------------------------------------------------------- evaluation


def torch_embedder(model: nn.Module, batch: int = 64) -> object:
    """(N, 112, 112, 3) RGB uint8 -> (N, D) embeddings of a torch model in eval mode (on its device)."""

    @torch.no_grad()
    def run(rgb: np.ndarray) -> np.ndarray:
        model.eval()
        dev = next(model.parameters()).device
        return torch.cat([model(normalize_input(rgb[i:i + batch]).to(dev)).cpu()
                          for i in range(0, len(rgb), batch)]).numpy()

    return run


def calib_eval(data: CropSet) -> Callable[[nn.Module], dict[str, float]]:
    """The eval ``train`` runs every ``eval_every`` steps: verification and DIR on the calib people."""

    def run(model: nn.Module) -> dict[str, float]:
        r = evaluate(torch_embedder(model), data, "calib")  # type: ignore[arg-type]
        return {"calib_acc": r.lfw_acc, "calib_dir": r.dir_at_far}

    return run


# --------------------------------------------------------------------------------------- model building


def build(args: argparse.Namespace, data: CropSet) -> nn.Module:
    """The stage's starting model: a new architecture, the teacher's weights, or a transformed checkpoint."""
    if args.stage in ("labels", "kd"):
        model: nn.Module = create_model(args.arch, **json.loads(args.arch_kwargs))
        if args.init == "teacher":
            model.load_state_dict(sface_teacher().state_dict())
        return model
    src = Path(args.from_ckpt)
    example = normalize_input(np.asarray(data.crops[:1]))
    if src.suffix == ".onnx":  # a shipped file whose checkpoint is gone: its student, rebuilt
        model = student_from_onnx(src, normalize_input(np.asarray(data.crops[np.linspace(
            0, len(data.crops) - 1, 256).astype(int)])))
    else:
        model = load_model(src)
    if args.stage == "prune":
        calib = [normalize_input(np.asarray(data.crops[i:i + 64])) for i in range(0, 512, 64)]
        keep_last = args.keep_last if args.keep_last is not None else args.keep

        def keep_of(g: object) -> float:  # the last two blocks (7x7 maps, most parameters) may keep less
            parts = str(getattr(g, "name", "")).split(".")
            return keep_last if parts[0] == "blocks" and parts[1] in ("11", "12") else args.keep

        changes = prune(model, example, calib, keep_of)  # type: ignore[arg-type]
        logger.info("pruning: %s", changes)
    elif args.stage == "lowrank":
        lowrank_head(model, args.head_rank)
        done = factorize_model(model, energy=args.energy, min_saving=args.min_saving, skip=("fc",))
        logger.info("low-rank: %s", done)
    elif args.grow:  # finetune: the checkpoint's model as it is, or grown
        logger.info("grown: %s", grow(model, args.head_rank, args.seed))  # type: ignore[arg-type]
    return model


def lowrank_head(model: nn.Module, rank: int) -> None:
    """Replace a FaceMobileNet flatten head by its per-channel rank-r factorisation (in place)."""
    assert isinstance(model, FaceMobileNet)
    if model.cfg.head != "flatten":
        return
    hw = model.cfg.feat_hw
    channels = model.fc.in_features // (hw * hw)
    dw, fc = factorize_flatten_head(model.fc, channels, (hw, hw), rank)
    model.head_spatial = nn.Sequential(dw, nn.Flatten())
    model.fc = fc
    model.cfg = replace(model.cfg, head="lowrank", head_rank=rank)


@torch.no_grad()
def grow(model: FaceMobileNet, head_rank: int, seed: int = 0) -> list[str]:
    """More capacity where it costs little time, computing the same function (in place): every low-rank 1x1
    pair merged back into one conv (their product), and a low-rank head given ``head_rank`` features per channel
    (the new depthwise filters small and random, their columns of the linear layer zero)."""
    done = []
    for i, block in enumerate(model.blocks):
        pw = cast(nn.Sequential, block.pw)
        if isinstance(pw[1], nn.Conv2d):
            first, second = cast(nn.Conv2d, pw[0]), pw[1]
            full = Pointwise(first.in_channels, second.out_channels).train(pw.training)
            product = second.weight[:, :, 0, 0] @ first.weight[:, :, 0, 0]
            cast(nn.Conv2d, full[0]).weight.copy_(product[:, :, None, None])
            full[1].load_state_dict(pw[2].state_dict())
            full[2].load_state_dict(pw[3].state_dict())
            block.pw = full
            done.append(f"blocks.{i}.pw: rank {first.out_channels} -> full")
    old = model.cfg.head_rank
    if model.cfg.head == "lowrank" and head_rank > old:
        dw_old, channels = cast(nn.Conv2d, cast(nn.Sequential, model.head_spatial)[0]), model.fc.in_features // old
        hw = model.cfg.feat_hw
        dw = nn.Conv2d(channels, channels * head_rank, hw, groups=channels, bias=False)
        fc = nn.Linear(channels * head_rank, model.fc.out_features)
        gen = torch.Generator().manual_seed(seed)
        dw.weight.copy_(torch.randn(dw.weight.shape, generator=gen) * 0.1 * dw_old.weight.std())
        fc.weight.zero_()
        fc.bias.copy_(model.fc.bias)
        for c in range(channels):
            dw.weight[c * head_rank:c * head_rank + old] = dw_old.weight[c * old:(c + 1) * old]
            fc.weight[:, c * head_rank:c * head_rank + old] = model.fc.weight[:, c * old:(c + 1) * old]
        model.head_spatial = nn.Sequential(dw, nn.Flatten())
        model.fc = fc
        done.append(f"head: {old} -> {head_rank} features per channel")
    model.cfg = replace(model.cfg, pw_ranks=(0,) * len(model.blocks), head_rank=max(old, head_rank))
    return done


# ------------------------------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    """The stage's command line (``training.recognizer.chain`` builds these commands from its run config)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["labels", "kd", "prune", "lowrank", "finetune"])
    ap.add_argument("--out", type=Path, required=True, help="run folder (ckpt.pt, history.json)")
    ap.add_argument("--data", type=Path, default=DEFAULT_OUT, help="crops + teacher cache (default: %(default)s)")
    ap.add_argument("--arch", default="mbf_small", help="registered model for labels/kd (default: %(default)s)")
    ap.add_argument("--arch-kwargs", default="{}", help="JSON overrides of the architecture (default: {})")
    ap.add_argument("--init", choices=["scratch", "teacher"], default="scratch",
                    help="kd: random init or SFace's weights (same widths only) (default: scratch)")
    ap.add_argument("--from", dest="from_ckpt",
                    help="prune/lowrank/finetune: checkpoint to start from (finetune: or a shipped .onnx)")
    ap.add_argument("--keep", type=float, default=0.5, help="prune: share of channels kept (default: 0.5)")
    ap.add_argument("--keep-last", type=float, default=None,
                    help="prune: share kept in the last two blocks (default: --keep)")
    ap.add_argument("--head-rank", type=int, default=2,
                    help="lowrank (and finetune --grow): features per channel in the head (default: 2)")
    ap.add_argument("--energy", type=float, default=0.9, help="lowrank: SVD energy kept in 1x1 convs (default: 0.9)")
    ap.add_argument("--min-saving", type=float, default=0.2,
                    help="lowrank: factorise a layer only if it saves this share (default: 0.2)")
    ap.add_argument("--grow", action="store_true",
                    help="finetune: first merge low-rank 1x1 pairs into full convs and widen the head to --head-rank "
                         "(the same function, more to learn with)")
    ap.add_argument("--steps", type=int, default=1000, help="optimiser steps in total (default: 1000)")
    ap.add_argument("--batch", type=int, default=48, help="batch size (default: 48)")
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: 2e-3)")
    ap.add_argument("--w-rel", type=float, default=1.0, help="relational loss weight (default: 1.0)")
    ap.add_argument("--w-label", type=float, default=0.0,
                    help="distillation stages: weight of a CosFace loss on the people with 2+ crops in the pool, "
                         "its class weights fixed at the teacher's mean embedding of each (default: 0, none)")
    ap.add_argument("--eval-every", type=int, default=500, help="steps between calib evaluations (default: 500)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: cpu)")
    ap.add_argument("--p-view", type=float, default=0.0,
                    help="share of WebFaces crops replaced by their detector-aligned view, with clean "
                         "targets (needs <data>/views.npz from 'data views') (default: 0)")
    ap.add_argument("--fused-target", action="store_true",
                    help="distil towards the teacher's mirror-fused embedding (the mean of a face and its mirror, "
                         "normalised) for both views: a target free of the teacher's left-right noise")
    ap.add_argument("--teacher-online", action="store_true",
                    help="run the teacher (SFace re-exported in fp32) on each batch's clean crops instead of "
                         "reading teacher.npy (needs <data>/clean.npy, a 'data pairs' folder)")
    ap.add_argument("--mix", type=float, default=0.0,
                    help="with --teacher-online: share of each batch replaced by mixups of two faces, the teacher "
                         "embedding the same mix of their clean crops (default: 0)")
    ap.add_argument("--seed", type=int, default=0, help="torch init and batch sampling (default: 0)")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = parser()
    args = ap.parse_args(argv)
    if args.mix > 0 and not args.teacher_online:
        ap.error("--mix needs --teacher-online (the teacher embeds the mixed clean crops)")
    if args.teacher_online and (args.fused_target or args.w_label > 0 or args.stage == "labels"):
        ap.error("--teacher-online goes with plain distillation only (not --fused-target, --w-label, labels)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    # 1. data: crops, cached teacher embeddings, the training pool
    data = CropSet.load(args.data)
    pool = data.indices(split="train")  # WebFaces, the LFW train people (and CelebA, UTKFace in ``pairs``)
    online = online_teacher(args.out, args.threads) if args.teacher_online else None
    teacher = np.load(args.data / "teacher.npy") if online is None else None  # (N, 2, D): each face and its mirror
    if args.fused_target and teacher is not None:
        fused = teacher.sum(1)
        fused /= np.linalg.norm(fused, axis=1, keepdims=True)
        teacher = np.stack([fused, fused], 1)
    labels, classes, centres = None, 0, None
    if args.stage == "labels":
        pool = data.indices("lfw", "train")
        labels, classes = identity_labels(data, pool)
        teacher = None
    elif args.w_label > 0 and teacher is not None:  # identity-aware distillation: people with 2+ photos
        labels, classes = identity_labels(data, pool, min_crops=2)
        sums = np.zeros((classes, teacher.shape[2]), np.float32)
        np.add.at(sums, labels[labels >= 0], teacher[labels >= 0].sum(1))
        centres = torch.from_numpy(sums / np.linalg.norm(sums, axis=1, keepdims=True))
        logger.info("label loss: %d people, %d crops", classes, int((labels[pool] >= 0).sum()))

    # 2. model: new, from the teacher, or pruned / factorised from a checkpoint (skipped when resuming)
    ckpt = args.out / "ckpt.pt"
    model = build(args, data) if not ckpt.exists() else load_model(ckpt)

    # 3. train (distillation, or labels only)
    distil = teacher is not None or online is not None
    cfg = DistillConfig(steps=args.steps, lr=args.lr, w_rel=args.w_rel if distil else 0.0, w_cos=1.0 if distil else 0.0,
                        w_label=1.0 if args.stage == "labels" else args.w_label,
                        classes=classes, eval_every=args.eval_every, warmup=min(100, args.steps // 10),
                        seed=args.seed)
    views = args.data / "views.npz" if args.p_view > 0 else None
    batches = Batches(data, teacher, pool, args.batch, labels, seed=cfg.seed, views=views, p_view=args.p_view,
                      device=args.device, online=online, mix=args.mix,
                      clean=np.load(args.data / "clean.npy", mmap_mode="r") if online is not None else None)
    meta = {"args": {k: str(v) for k, v in vars(args).items()}}
    model, history = train(model, batches, cfg, ckpt, calib_eval(data), meta, device=args.device, centres=centres)
    model = model.cpu()

    # 4. record what the stage produced
    size = getattr(getattr(model, "cfg", None), "input_size", 112)
    summary = {"params": count_params(model), "macs": count_macs(model, (3, size, size)), "config": asdict(cfg),
               "history": history}
    (args.out / "history.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "history"} | {"last": history[-1]}))


if __name__ == "__main__":
    main()
