"""Train the face detector: from random init on the WebFaces train split (m3), or, with ``--init`` weights and
``--extra`` labelled folders, on faces of every kind (the shipped wild/wild2 runs).

    python -m training.detector.train --config training/detector/configs/wild.yaml   # the shipped model

A run config (YAML: ``TrainConfig`` fields, ``aug:`` for ``AugConfig``) sets the defaults; flags override it.

Runs the YuNet pseudo-labelling first (``pseudo_label.py``, ~4 min) when its JSON is missing; ``--pseudo ""``
trains on the WebFaces labels alone (the ablation).

Resumable: re-running the same command continues from ``OUT/ckpt.pt``. Seeded. Every checkpoint holds the
resolved config. Overrides: ``--iters 4000``, ``--aug.mosaic_p 0.5`` (any ``TrainConfig`` / ``AugConfig`` field).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from training.detector.augment import AugConfig, SamplePool, encode_targets, make_view
from training.detector.data import Sample, empty_sample, load_negatives, load_samples
from training.detector.model import create_model, grow
from training.detector.pseudo_label import write_pseudo_labels
from training.detector.scenes import load_folder
from training.runconfig import parse_run_config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (saved into each checkpoint)."""

    data: str = "../shared/data/detection/webfaces"  # WebFaces folder (train split only is used)
    negatives: str = "../shared/data/detection/negatives"  # face-free images ("" = none)
    pseudo: str = "runs/detector/pseudo_train.json"  # YuNet pseudo-labels (made if missing; "" = labels only)
    extra: str = ""  # more labelled folders (``scenes.py`` labels JSONs) as "path:weight,path:weight"
    webfaces_weight: float = 1.0  # pick weight of WebFaces beside the extras' weights
    extra_face_score: float = 0.7  # extras' faces under this YuNet score are ignore regions, not faces
    soft_pseudo: bool = False  # heatmap target of a pseudo face = YuNet's score (a soft teacher) instead of 1
    out: str = "runs/detector/main"  # checkpoints, log and loss curve go here
    cache: str = "runs/cache"  # decoded-image cache ("" = none)
    model: str = "tinyface_m"  # registered model name
    colour: bool = False  # BGR input (3 channels) instead of grey; ``init`` from a grey model spreads its stem
    iters: int = 6000  # optimiser steps
    batch: int = 64  # crops per step
    lr: float = 4e-3  # peak AdamW learning rate
    weight_decay: float = 5e-4
    warmup: int = 150  # linear warm-up steps
    restart_at: int = 0  # > 0: the first cosine ends here and a second one (SGDR warm restart) runs to ``iters``
    restart_lr: float = 1e-3  # peak learning rate of the second cosine
    ema: float = 0.998  # weight EMA decay (the EMA weights are exported)
    w_box: float = 1.0  # weight of the log-distance L1 box loss
    w_giou: float = 1.0  # weight of the GIoU box loss
    w_lm: float = 2.0  # weight of the landmark L1 loss
    pos_frac: float = 0.0  # positive radius around a face centre, as a fraction of the face size (cells);
    pos_min: float = 0.0  # ... at least this many cells; (0, 0, 0) = CenterNet's single positive cell (shipped)
    pos_max: float = 0.0  # ... at most this many cells; (0.08, 1, 2.5) = FCOS-like centre sampling
    seed: int = 0
    threads: int = 1  # torch intra-op threads
    limit: int = 0  # use only the first N train images (0 = all; CI uses a few)
    ckpt_every: int = 250  # steps between checkpoints
    init: str = ""  # start from these weights: a checkpoint (.pt, its EMA; a smaller model is grown) or a shipped ONNX
    int4: bool = False  # train with the convs export stores as int4 fake-quantised (all but the first and last)
    run_config: str = ""  # the run config file these values came from (set by ``--config``; export records it)
    aug: AugConfig = field(default_factory=AugConfig)


# ------------------------------------------------------------------------------------------------- losses


def heat_loss(logit: torch.Tensor, gt: torch.Tensor, pos: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """CenterNet focal loss (alpha 2, beta 4), ignore weight ``w`` on negatives, per positive.

    At the positive cells the loss is the quality focal loss BCE(p, t) * |t - p|^2 against the target ``t``
    there: CenterNet's -log(p) (1 - p)^2 when t = 1, a soft teacher target when t < 1.
    """
    p = torch.sigmoid(logit)
    pos_l = (F.binary_cross_entropy_with_logits(logit, gt, reduction="none") * (gt - p).abs() ** 2)[pos].sum()
    neg_l = -(F.logsigmoid(-logit) * p**2 * (1 - gt) ** 4 * w)[~pos].sum()
    return (pos_l + neg_l) / pos.sum().clamp(min=1)


def giou_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """1 - GIoU of boxes given as (P, 4) distances l,t,r,b from the same point."""
    pl, pt, pr, pb = pred.unbind(1)
    gl, gt_, gr, gb = gt.unbind(1)
    inter = (torch.min(pl, gl) + torch.min(pr, gr)) * (torch.min(pt, gt_) + torch.min(pb, gb))
    union = (pl + pr) * (pt + pb) + (gl + gr) * (gt_ + gb) - inter
    hull = (torch.max(pl, gl) + torch.max(pr, gr)) * (torch.max(pt, gt_) + torch.max(pb, gb))
    iou = inter / union.clamp(min=1e-6)
    return 1 - iou + (hull - union) / hull.clamp(min=1e-6)


def detection_loss(out: torch.Tensor, t: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Heatmap focal loss + box (log-L1, GIoU) + landmark L1 losses; ``total`` is their weighted sum."""
    heat = heat_loss(out[:, 0], t["heat"], t["pos"], t["heat_w"])
    rw, lw = t["reg_w"], t["lm_w"]
    pos = rw > 0
    pred_box, gt_box = out[:, 1:5].permute(0, 2, 3, 1)[pos], t["reg"][:, :4].permute(0, 2, 3, 1)[pos]
    wpos = rw[pos]
    norm = wpos.sum().clamp(min=1e-6)
    box = ((pred_box - gt_box).abs().sum(1) * wpos).sum() / norm
    giou = (giou_loss(pred_box.clamp(max=6).exp(), gt_box.exp()) * wpos).sum() / norm
    lm = ((out[:, 5:] - t["reg"][:, 4:]).abs().sum(1) * lw).sum() / lw.sum().clamp(min=1e-6)
    total = heat + cfg.w_box * box + cfg.w_giou * giou + cfg.w_lm * lm
    return {"total": total, "heat": heat, "box": box, "giou": giou, "lm": lm}


# -------------------------------------------------------------------------------------------------- batches


def make_batch(samples: SamplePool, negatives: list[Sample], cfg: TrainConfig, rng: np.random.Generator,
               stride: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A batch of augmented crops (B, 1, S, S), or (B, 3, S, S) BGR for a colour model (its grey crops repeated),
    normalised as the manifest says, and their targets."""
    views = [make_view(samples, negatives, cfg.aug, rng) for _ in range(cfg.batch)]
    targets = [encode_targets(v, stride, (cfg.pos_frac, cfg.pos_min, cfg.pos_max)) for v in views]
    if cfg.colour:
        imgs = np.stack([v.image if v.image.ndim == 3 else np.repeat(v.image[:, :, None], 3, 2) for v in views])
        x = torch.from_numpy(imgs.astype(np.float32)).permute(0, 3, 1, 2)
    else:
        x = torch.from_numpy(np.stack([v.image for v in views])[:, None].astype(np.float32))
    t = {k: torch.from_numpy(np.stack([tt[k] for tt in targets])) for k in targets[0]}
    return normalise(x).contiguous(memory_format=torch.channels_last), t


INPUT_MEAN, INPUT_STD = 128.0, 64.0  # input normalisation (every channel), written to model.json by export


def int4_weights(model: torch.nn.Module) -> list[str]:
    """Names of the conv weights stored as int4 when a model is trained with ``int4``: every conv but the first
    (the stem, 72 weights) and the last (the head's 1x1, whose box and landmark outputs want the precision)."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    return [f"{n}.weight" for n in names[1:-1]]


def fake_quant(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel quantisation of ``w`` to ``bits``, straight-through gradient."""
    qmax = 2 ** (bits - 1) - 1
    scale = w.detach().abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True).clamp_min(1e-8) / qmax
    return w + ((w / scale).round().clamp(-qmax, qmax) * scale - w).detach()


def forward(model: torch.nn.Module, x: torch.Tensor, int4: bool) -> torch.Tensor:
    """The model's raw output; with ``int4`` its int4-stored weights fake-quantised (quantisation-aware training)."""
    if not int4:
        return model(x)
    params = dict(model.named_parameters())
    return torch.func.functional_call(model, {n: fake_quant(params[n], 4) for n in int4_weights(model)}, (x,))


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, pool: SamplePool, negatives: list[Sample], cfg: TrainConfig,
                   stride: int, batches: int = 50) -> None:
    """BatchNorm statistics measured anew on ``batches`` training batches, the int4 weights rounded as export will.

    The EMA copies its statistics from the trained weights, and at int4 the EMA's rounded weights differ from
    those by whole steps: with the copied statistics the exported wild9 found a third of the faces (train F1
    0.32 against 0.77 for the trained weights). Seeded, so re-running a finished training gives the same file.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over the batches
    model.train()
    rng = np.random.default_rng([cfg.seed, 1])
    for _ in tqdm(range(batches), desc="BatchNorm statistics", mininterval=10):
        forward(model, make_batch(pool, negatives, cfg, rng, stride)[0], cfg.int4)
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
    model.eval()


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Pixels 0..255 -> the network's input range."""
    return (x - INPUT_MEAN) / INPUT_STD


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    """The run's model: ``cfg.model`` with one input channel, or three (BGR) when ``cfg.colour``."""
    return create_model(cfg.model, in_chans=3 if cfg.colour else 1)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to 2 % of the peak; with ``restart_at`` a second cosine from
    ``restart_lr`` over the remaining steps (the first one then ends at ``restart_at``)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.restart_at and step >= cfg.restart_at:
        peak, start, end = cfg.restart_lr, cfg.restart_at, cfg.iters
    else:
        peak, start, end = cfg.lr, cfg.warmup, cfg.restart_at or cfg.iters
    frac = (step - start) / max(1, end - start)
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))


# -------------------------------------------------------------------------------------------------- config


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """``TrainConfig`` from ``--config FILE`` (YAML) with ``--field value`` / ``--aug.field value`` overrides."""
    return parse_run_config(TrainConfig, "python -m training.detector.train", __doc__, argv)[0]


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Rebuild a ``TrainConfig`` saved with ``dataclasses.asdict``."""
    return TrainConfig(**{**d, "aug": AugConfig(**d["aug"])})


# ---------------------------------------------------------------------------------------------------- train


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) training; returns the final checkpoint path."""
    # 1. setup: threads, seeds, output folder
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"

    # 2. data: train split only (+ pseudo-labels), negatives
    pseudo = Path(cfg.pseudo) if cfg.pseudo else None
    if pseudo is not None and not pseudo.is_file():
        write_pseudo_labels(pseudo, Path(cfg.data))
    cache = Path(cfg.cache) if cfg.cache else None
    samples = load_samples(Path(cfg.data), "train", cache, pseudo, limit=cfg.limit or None,
                           soft_pseudo=cfg.soft_pseudo, colour=cfg.colour)
    negatives = ([empty_sample(im) for im in load_negatives(Path(cfg.negatives), cfg.colour)] if cfg.negatives
                 else [])
    sources, weights = [samples], [cfg.webfaces_weight]
    for item in filter(None, (i.strip() for i in cfg.extra.split(","))):
        path, _, w = item.rpartition(":")
        sources.append(load_folder(Path(path), cache, cfg.extra_face_score, cfg.colour))
        weights.append(float(w))
    for src, weight in zip(sources, weights, strict=True):
        logger.info("source of weight %.2f: %d images, %d faces", weight, len(src), sum(len(s.boxes) for s in src))
    logger.info("%d negatives", len(negatives))
    pool = SamplePool(sources, weights)

    # 3. model, EMA copy, optimiser
    # ~1.7x faster on CPU; Module.to takes memory_format at runtime, its typed overloads omit it
    model = build_model(cfg).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    ema = build_model(cfg)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    step, history = 0, []
    rng = np.random.default_rng(cfg.seed)

    # 4. resume, or start from --init weights
    if cfg.init and not ckpt_path.is_file():
        init_weights(model, Path(cfg.init), make_batch(pool, negatives, cfg, rng, model.stride)[0])
        ema.load_state_dict(model.state_dict())
        logger.info("initialised from %s", cfg.init)
    if ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        step, history = ck["step"], ck["history"]
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        logger.info("resumed from %s at step %d", ckpt_path, step)

    # 5. loop
    model.train()
    t0 = time.time()
    bar = tqdm(total=cfg.iters, initial=step, desc="train", mininterval=10)
    while step < cfg.iters:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        x, t = make_batch(pool, negatives, cfg, rng, model.stride)
        losses = detection_loss(forward(model, x, cfg.int4), t, cfg)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        update_ema(ema, model, cfg.ema if step > cfg.warmup else 0.0)
        history.append({k: round(float(v.detach()), 5) for k, v in losses.items()} | {"step": step})
        step += 1
        bar.update(1)
        bar.set_postfix({k: f"{v.item():.3f}" for k, v in losses.items()}, refresh=False)
        if step % cfg.ckpt_every == 0 or step == cfg.iters:
            save_checkpoint(ckpt_path, model, ema, opt, step, history, rng, cfg)
    bar.close()
    logger.info("done: %d steps in %.0f s this session", step, time.time() - t0)
    if cfg.int4:
        recalibrate_bn(ema, pool, negatives, cfg, model.stride)
        save_checkpoint(ckpt_path, model, ema, opt, step, history, rng, cfg)
    write_curve(out, history)
    return ckpt_path


@torch.no_grad()
def init_weights(model: torch.nn.Module, path: Path, x: torch.Tensor) -> None:
    """Load a checkpoint's EMA weights, or the weights of an exported ONNX file of the same model.

    An export has its BatchNorms folded into the convs (``export.fold_bn``) and int8 weights: each conv gets the
    dequantized weight, and its BatchNorm is set so that it reproduces the folded bias exactly in eval mode and,
    with running statistics measured on ``x`` (a training batch), nearly so in training mode.
    """
    if path.suffix == ".pt":
        small = torch.load(path, map_location="cpu", weights_only=False)["ema"]
        if {k: v.shape for k, v in small.items()} == {k: v.shape for k, v in model.state_dict().items()}:
            model.load_state_dict(small)
        else:  # a smaller model of the family: grow it
            grow(model, small)
        return
    from training.compress.export import onnx_weights, unfold_bn

    g, arrays = onnx_weights(path)
    weights = [(arrays[n.input[1]], arrays[n.input[2]]) for n in g.node if n.op_type == "Conv"]
    convs = _convs_in_run_order(model, x)
    if len(convs) != len(weights):
        raise ValueError(f"{path}: {len(weights)} convs, the model has {len(convs)} (another architecture?)")
    folded = {}
    for (conv, bn), (w, b) in zip(convs, weights, strict=True):
        if tuple(conv.weight.shape) != w.shape:
            raise ValueError(f"{path}: conv weight {w.shape} where the model has {tuple(conv.weight.shape)}")
        conv.weight.copy_(torch.from_numpy(w))
        if bn is None:
            assert conv.bias is not None  # a conv without BatchNorm has a bias
            conv.bias.copy_(torch.from_numpy(b))
        else:
            folded[bn] = b
    unfold_bn(model, folded, x)


def _convs_in_run_order(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[torch.nn.Conv2d, Any]]:
    """(conv, its BatchNorm or None) in the order a forward pass runs them (the exported graph's order)."""
    from training.detector.model import ConvBnAct

    bn_of = {m[0]: m[1] for m in model.modules() if isinstance(m, ConvBnAct)}
    order: list[torch.nn.Conv2d] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in model.modules()
             if isinstance(m, torch.nn.Conv2d)]
    model.eval()(x[:1])
    for h in hooks:
        h.remove()
    return [(c, bn_of.get(c)) for c in order]


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """EMA of parameters; buffers (BatchNorm statistics) are copied."""
    for e, m in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
        if e.dtype.is_floating_point:
            e.mul_(decay).add_(m.detach(), alpha=1 - decay)
        else:
            e.copy_(m)


def save_checkpoint(path: Path, model: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer,
                    step: int, history: list[dict], rng: np.random.Generator, cfg: TrainConfig) -> None:
    """Atomic checkpoint with the resolved config."""
    ck = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
          "history": history, "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
          "config": dataclasses.asdict(cfg)}
    tmp = path.with_suffix(".tmp")
    torch.save(ck, tmp)
    tmp.replace(path)


def write_curve(out: Path, history: list[dict]) -> None:
    """Loss curve as JSON and PNG (smoothed over 50 steps)."""
    (out / "loss.json").write_text(json.dumps(history))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("total", "heat", "box", "giou", "lm"):
        v = np.array([h[key] for h in history])
        k = min(50, len(v))
        ax.plot(np.convolve(v, np.ones(k) / k, mode="valid"), label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = parse_config(argv)
    logger.info("config: %s", json.dumps(dataclasses.asdict(cfg)))
    train(cfg)


if __name__ == "__main__":
    main()
