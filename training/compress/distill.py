"""Knowledge distillation (and the label-only baseline) as one resumable training loop.

Losses on embeddings (any model that maps a batch to (B, D) vectors; the teacher's outputs come cached):

- ``embedding_loss``: 1 - cos(student, teacher), the student reproduces the teacher's direction;
- ``relational_loss``: MSE between the student's and the teacher's (B, B) cosine-similarity matrices, so
  the student keeps the teacher's geometry between faces (relational KD, Park et al. 2019);
- ``CosFace``: large-margin cosine loss on identity labels, for the student trained without a teacher;
- ``kl_loss``: Hinton et al.'s softened-logit distillation for a classifier (with ``w_ce`` on labels).

``train`` runs AdamW with linear warm-up and cosine decay, checkpoints (whole model: pruned or factorised
models change structure) every ``ckpt_every`` steps and resumes from the checkpoint if it exists, so a long
run survives interruptions and can be continued in a later session with more steps.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]  # inputs, teacher embeddings, labels


@dataclass(frozen=True)
class DistillConfig:
    """Training hyper-parameters (saved into every checkpoint)."""

    steps: int = 2000  # optimiser steps in total (resume continues up to this)
    lr: float = 2e-3  # peak AdamW learning rate
    min_lr: float = 1e-5  # end of the cosine decay
    weight_decay: float = 5e-5  # AdamW weight decay
    warmup: int = 100  # linear warm-up steps
    w_cos: float = 1.0  # weight of 1 - cos(student, teacher)
    w_rel: float = 1.0  # weight of the pairwise-similarity (relational) loss
    w_label: float = 0.0  # weight of the CosFace identity loss (needs labels)
    w_kl: float = 0.0  # weight of KL(teacher || student) on softened logits (classifier distillation)
    w_ce: float = 0.0  # weight of cross-entropy of the model's logits on labels (classifier)
    temperature: float = 4.0  # softening temperature of the KL term
    classes: int = 0  # identity classes for CosFace (0: no label loss)
    margin: float = 0.35  # CosFace margin
    scale: float = 30.0  # CosFace scale
    ckpt_every: int = 100  # steps between checkpoints
    eval_every: int = 500  # steps between evaluations (0: only at the end)
    seed: int = 0  # seed of the batch sampler


def embedding_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(s_i, t_i)."""
    return (1 - F.cosine_similarity(s, t, dim=1)).mean()


def relational_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """MSE between the off-diagonal cosine-similarity matrices of student and teacher batches."""
    s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
    gs, gt = s @ s.T, t @ t.T
    off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    return F.mse_loss(gs[off], gt[off])


def kl_loss(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t / T) || softmax(s / T)) * T^2 (Hinton et al. 2015)."""
    return F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1),
                    reduction="batchmean") * temperature**2


class CosFace(nn.Module):
    """Large-margin cosine classifier: logits s * (cos(w_y, x) - m) for the true class."""

    def __init__(self, dim: int, classes: int, margin: float = 0.35, scale: float = 30.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.margin, self.scale = margin, scale

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).T
        cos = cos - self.margin * F.one_hot(labels, cos.shape[1])
        return F.cross_entropy(self.scale * cos, labels)


def lr_at(step: int, cfg: DistillConfig) -> float:
    """Warm-up then cosine learning rate."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, p)))


def loss_terms(model: nn.Module, head: CosFace | None, batch: Batch, cfg: DistillConfig) -> dict[str, torch.Tensor]:
    """The weighted loss terms of one batch."""
    x, t, y = batch
    s = model(x)
    terms: dict[str, torch.Tensor] = {}
    if t is not None and cfg.w_cos > 0:
        terms["cos"] = cfg.w_cos * embedding_loss(s, t)
    if t is not None and cfg.w_rel > 0:
        terms["rel"] = cfg.w_rel * relational_loss(s, t)
    if head is not None and y is not None and cfg.w_label > 0 and bool((y >= 0).any()):
        terms["label"] = cfg.w_label * head(s[y >= 0], y[y >= 0])  # -1: a crop without an identity
    if t is not None and cfg.w_kl > 0:
        terms["kl"] = cfg.w_kl * kl_loss(s, t, cfg.temperature)
    if y is not None and cfg.w_ce > 0:
        terms["ce"] = cfg.w_ce * F.cross_entropy(s, y)
    return terms


def train(model: nn.Module, batch_fn: Callable[[int], Batch], cfg: DistillConfig, ckpt: Path,
          evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
          meta: dict[str, Any] | None = None, device: str = "cpu",
          centres: torch.Tensor | None = None) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train ``model`` for ``cfg.steps`` steps on ``device``; if ``ckpt`` exists, continue the model saved
    there instead.

    ``centres`` (classes, D): fixed CosFace class weights (e.g. the teacher's mean embedding per identity),
    so the label loss pulls a face towards its identity's centre and away from the others' in the teacher's
    space; without them the head is learnt.

    ``batch_fn(step)`` returns the batch of that step (deterministic per step, so a resumed run sees the
    same data). Returns the trained model and the history (one dict per logged step and per evaluation).
    Checkpoints load on the CPU whatever device wrote them.
    """
    state = torch.load(ckpt, map_location="cpu", weights_only=False) if ckpt.exists() else None
    if state is not None:
        model = state["model"]
    model = model.to(device)
    head = CosFace(_out_dim(model), cfg.classes, cfg.margin, cfg.scale).to(device) if cfg.classes else None
    if head is not None and centres is not None:
        head.weight = nn.Parameter(centres.to(device), requires_grad=False)
    params = list(model.parameters()) + (list(head.parameters()) if head and centres is None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, history = 0, []
    if state is not None:
        opt.load_state_dict(state["opt"])
        if head is not None and state.get("head") is not None:
            head.load_state_dict(state["head"])
        start, history = state["step"], state["history"]
        logger.info("resumed %s at step %s", ckpt, start)
    model.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=ckpt.stem)
    t0, seen = time.time(), 0
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        batch = tuple(None if v is None else v.to(device, non_blocking=True) for v in batch_fn(step))
        terms = loss_terms(model, head, batch, cfg)  # type: ignore[arg-type]
        loss = torch.stack(list(terms.values())).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(batch[0]) if batch[0] is not None else 0
        if step % 20 == 0:
            rec = {"step": step, "loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()},
                   "img_per_s": seen / max(1e-6, time.time() - t0)}
            history.append(rec)
            bar.set_postfix({k: f"{v:.4f}" for k, v in rec.items() if k != "step"})
        last = step + 1 == cfg.steps
        if evaluate is not None and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last):
            res = evaluate(model)
            model.train()
            history.append({"step": step + 1, **res})
            logger.info("step %s eval %s", step + 1, json.dumps(res))
        if (step + 1) % cfg.ckpt_every == 0 or last:
            save_checkpoint(ckpt, model, opt, head, step + 1, history, cfg, meta)
    return model, history


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer | None, head: nn.Module | None,
                    step: int, history: list, cfg: DistillConfig, meta: dict[str, Any] | None) -> None:
    """Write a checkpoint atomically: the whole model, optimiser, step, history and resolved config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model, "opt": opt.state_dict() if opt else None,
                "head": head.state_dict() if head else None, "step": step, "history": history,
                "config": asdict(cfg), "meta": meta or {}}, tmp)
    tmp.replace(path)


def load_model(path: Path) -> nn.Module:
    """The whole model saved in a checkpoint, in eval mode."""
    return torch.load(path, map_location="cpu", weights_only=False)["model"].eval()


def _out_dim(model: nn.Module) -> int:
    was = model.training
    model.eval()
    p = next(model.parameters())
    with torch.no_grad():
        d = int(model(torch.zeros(1, *_input_shape(model), device=p.device)).shape[1])
    model.train(was)
    return d


def _input_shape(model: nn.Module) -> tuple[int, int, int]:
    cfg = getattr(model, "cfg", None)
    size = getattr(cfg, "input_size", 112)
    return (getattr(cfg, "in_chans", 3), size, size)
