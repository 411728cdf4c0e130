"""Low-rank factorisation: truncated SVD of linear / 1x1-conv layers, and of a flatten -> linear head.

- ``factorize_model`` replaces every ``nn.Linear`` and dense 1x1 ``nn.Conv2d`` whose truncated SVD keeps
  ``energy`` of the squared singular values with fewer parameters than the layer has, by two layers
  (``in -> rank`` then ``rank -> out``, the singular values split evenly between them). A budget can be given
  instead as ``max_ratio`` (rank chosen so the pair has at most that share of the original parameters).
- ``factorize_flatten_head`` handles the head ``Flatten(C, H, W) -> Linear(C*H*W, O)`` (SFace's, 6.4 M of
  its 9.6 M parameters): per channel c the (O, H*W) block W_c is replaced by its rank-r SVD U_c V_c, i.e.
  a depthwise HxW conv with r outputs per channel (V) followed by a Linear(C*r, O) (U) — a Tucker-2 style
  factorisation that turns the position-aware head into MobileFaceNet's global depthwise conv when r = 1.

Fine-tune after factorising; the rank is chosen by energy or by a parameter budget.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def rank_for(s: torch.Tensor, energy: float | None, max_params: int | None, per_rank: int) -> int:
    """Smallest rank keeping ``energy`` of sum(s^2), capped so rank * per_rank <= max_params."""
    r = len(s)
    if energy is not None:
        cum = torch.cumsum(s**2, 0) / (s**2).sum().clamp_min(1e-12)
        r = int(torch.searchsorted(cum, torch.tensor(energy)).item()) + 1
    if max_params is not None:
        r = min(r, max_params // per_rank)
    return max(1, min(r, len(s)))


def svd_split(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w (O, I) ~= a (O, r) @ b (r, I), singular values split as sqrt into both factors."""
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def factorize_linear(m: nn.Linear, rank: int) -> nn.Sequential:
    """Linear(I, O) -> Linear(I, r, no bias) + Linear(r, O)."""
    a, b = svd_split(m.weight.detach(), rank)
    first, second = nn.Linear(m.in_features, rank, bias=False), nn.Linear(rank, m.out_features, m.bias is not None)
    first.weight.data, second.weight.data = b.clone(), a.clone()
    if m.bias is not None and second.bias is not None:  # second has a bias exactly when m has one
        second.bias.data = m.bias.detach().clone()
    return nn.Sequential(first, second)


def factorize_conv1x1(m: nn.Conv2d, rank: int) -> nn.Sequential:
    """Dense 1x1 Conv2d(I, O) -> Conv2d(I, r, 1) + Conv2d(r, O, 1)."""
    a, b = svd_split(m.weight.detach()[:, :, 0, 0], rank)
    first = nn.Conv2d(m.in_channels, rank, 1, (m.stride[0], m.stride[1]), bias=False)
    second = nn.Conv2d(rank, m.out_channels, 1, bias=m.bias is not None)
    first.weight.data, second.weight.data = b[:, :, None, None].clone(), a[:, :, None, None].clone()
    if m.bias is not None and second.bias is not None:  # second has a bias exactly when m has one
        second.bias.data = m.bias.detach().clone()
    return nn.Sequential(first, second)


def _candidates(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear | nn.Conv2d]]:
    out: list[tuple[nn.Module, str, nn.Linear | nn.Conv2d]] = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear) or (isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1)
                                                and child.groups == 1):
                out.append((parent, name, child))
    return out


@torch.no_grad()
def factorize_model(model: nn.Module, energy: float | None = 0.9, max_ratio: float | None = None,
                    min_saving: float = 0.1, skip: tuple[str, ...] = ()) -> dict[str, tuple[int, int, int]]:
    """Factorise every linear / 1x1 layer where it saves at least ``min_saving`` of its parameters.

    Returns {layer name: (in, out, rank)} of the layers replaced.
    """
    names = {id(m): n for n, m in model.named_modules()}
    done = {}
    for parent, name, child in _candidates(model):
        full = names[id(child)]
        if any(full.startswith(s) for s in skip):
            continue
        w = child.weight.detach().reshape(child.weight.shape[0], -1)
        o, i = w.shape
        s = torch.linalg.svdvals(w)
        budget = int(max_ratio * o * i) if max_ratio is not None else None
        r = rank_for(s, energy, budget, o + i)
        if r * (o + i) > (1 - min_saving) * o * i:
            continue
        new = factorize_linear(child, r) if isinstance(child, nn.Linear) else factorize_conv1x1(child, r)
        setattr(parent, name, new)
        done[full] = (i, o, r)
        logger.info("factorised %s (%s -> %s) at rank %s", full, i, o, r)
    return done


@torch.no_grad()
def factorize_flatten_head(linear: nn.Linear, channels: int, hw: tuple[int, int], rank: int) -> tuple[
        nn.Conv2d, nn.Linear]:
    """Per-channel rank-r SVD of a Linear reading a flattened (C, H, W) map -> (depthwise conv, Linear).

    The depthwise conv has C * r outputs (kernel H x W, no padding): output c*r + k is V_c[k] . x_c; the
    Linear(C * r, O) holds U_c in its columns c*r .. c*r + r - 1 and keeps the bias.
    """
    h, w = hw
    o = linear.out_features
    weight = linear.weight.detach().reshape(o, channels, h * w)
    dw = nn.Conv2d(channels, channels * rank, (h, w), groups=channels, bias=False)
    fc = nn.Linear(channels * rank, o, bias=linear.bias is not None)
    for c in range(channels):
        a, b = svd_split(weight[:, c, :], rank)  # (O, r), (r, HW)
        dw.weight.data[c * rank:(c + 1) * rank, 0] = b.reshape(rank, h, w)
        fc.weight.data[:, c * rank:(c + 1) * rank] = a
    if linear.bias is not None:
        fc.bias.data = linear.bias.detach().clone()
    return dw, fc
