"""Structured (channel) pruning: the saved model really has fewer filters, so it is smaller and faster.

Generic over plain feed-forward CNNs: ``channel_groups`` traces the model with ``torch.fx`` and, for every
dense conv (``groups == 1``), follows its output channels through BatchNorm, per-channel PReLU, depthwise
convs (also with a channel multiplier) and Flatten to the layers that consume them (dense Conv2d or
Linear). Such a set — producer, pass-through layers, consumers — must keep the same channels; it is a
``ChannelGroup``. A channel that reaches an op the tracer does not know (an ``add`` of a residual, a
concat, the model output) makes its group unprunable, so pruning never breaks a graph it does not
understand.

Importance of a channel (``channel_importance``): mean |activation| at the end of its pass-through chain on
calibration batches, times the L2 norm of the consumers' weights that read it (a data-aware L1 criterion:
a channel matters if it is both active and read). ``prune`` keeps the most important ``keep`` share of each
group (rounded to a multiple of ``multiple``) and slices every layer in place; fine-tune afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeGuard

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

logger = logging.getLogger(__name__)


@dataclass
class ChannelGroup:
    """Layers that share one set of channels: a producer conv, pass-through layers, and consumers."""

    name: str
    producer: nn.Conv2d
    passthrough: list[tuple[nn.Module, int]] = field(default_factory=list)  # (layer, channel multiplier)
    consumers: list[tuple[nn.Conv2d | nn.Linear, int]] = field(default_factory=list)  # (layer, columns per channel)
    last: nn.Module | None = None  # module whose output is measured for importance

    @property
    def channels(self) -> int:
        return self.producer.out_channels


_PASS = (nn.BatchNorm2d, nn.PReLU, nn.ReLU, nn.ReLU6, nn.Dropout, nn.Identity)


def _is_depthwise(m: nn.Module) -> TypeGuard[nn.Conv2d]:
    return isinstance(m, nn.Conv2d) and m.groups == m.in_channels and m.groups > 1


def _flatten_factor(node: fx.Node) -> int:
    """Columns per channel after a Flatten node (H * W of its input)."""
    shape = node.args[0].meta["tensor_meta"].shape  # type: ignore[union-attr]
    return int(torch.tensor(shape[2:]).prod()) if len(shape) > 2 else 1


def _follow(node: fx.Node, mods: dict[str, nn.Module], group: ChannelGroup, factor: int) -> bool:
    """Walk the users of ``node``; fill the group. False when a channel reaches an unknown op."""
    for user in node.users:
        m = mods.get(str(user.target)) if user.op == "call_module" else None
        if m is not None and (isinstance(m, _PASS) and not (isinstance(m, nn.PReLU) and m.num_parameters == 1)):
            group.passthrough.append((m, factor))
            group.last = m
            if not _follow(user, mods, group, factor):
                return False
        elif m is not None and _is_depthwise(m):
            mult = m.out_channels // m.in_channels
            group.passthrough.append((m, factor * mult))
            group.last = m
            if not _follow(user, mods, group, factor * mult):
                return False
        elif (m is not None and isinstance(m, nn.Flatten)) or (
                user.op == "call_function" and user.target in (torch.flatten,)):
            if not _follow(user, mods, group, factor * _flatten_factor(user)):
                return False
        elif m is not None and isinstance(m, nn.Conv2d) and m.groups == 1 and factor == 1:
            group.consumers.append((m, 1))
        elif m is not None and isinstance(m, nn.Linear):
            group.consumers.append((m, factor))
        else:
            return False
    return bool(group.consumers)


def channel_groups(model: nn.Module, example: torch.Tensor) -> list[ChannelGroup]:
    """Every prunable channel group of ``model`` (traced on an example input)."""
    gm = fx.symbolic_trace(model)
    was = model.training
    model.eval()
    ShapeProp(gm).propagate(example)
    model.train(was)
    mods = dict(model.named_modules())  # fx keeps the qualified names of the original model
    groups = []
    for node in gm.graph.nodes:
        m = mods.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(m, nn.Conv2d) and m.groups == 1:
            g = ChannelGroup(str(node.target), m)
            if _follow(node, mods, g, 1):
                groups.append(g)
    return groups


@torch.no_grad()
def channel_importance(model: nn.Module, groups: list[ChannelGroup], batches: Iterable[torch.Tensor]) -> list[
        torch.Tensor]:
    """Per group, (C,) importance: mean |activation| at the chain end x L2 norm of the consumer weights."""
    sums: dict[int, torch.Tensor] = {}
    hooks = []
    for k, g in enumerate(groups):
        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor, k: int = k) -> None:
            a = out.detach().abs().mean(dim=[d for d in range(out.dim()) if d != 1])
            sums[k] = sums.get(k, 0) + a
        hooks.append((g.last or g.producer).register_forward_hook(hook))
    was = model.training
    model.eval()
    for x in batches:
        model(x)
    model.train(was)
    for h in hooks:
        h.remove()
    out = []
    for k, g in enumerate(groups):
        act = sums[k].reshape(g.channels, -1).mean(1)  # a depthwise multiplier gives C * mult outputs
        out.append(act * _consumer_norm(g))
    return out


def _consumer_norm(g: ChannelGroup) -> torch.Tensor:
    """(C,) L2 norm of the consumer weights that read each channel."""
    sq = torch.zeros(g.channels)
    for m, f in g.consumers:
        w = m.weight.detach()
        sq += w.reshape(w.shape[0], g.channels, -1).pow(2).sum(dim=(0, 2)) if isinstance(m, nn.Conv2d) \
            else w.reshape(w.shape[0], g.channels, f).pow(2).sum(dim=(0, 2))
    return sq.sqrt()


def _slice_param(p: nn.Parameter | torch.Tensor | nn.Module | None, dim: int, idx: torch.Tensor) -> torch.Tensor:
    """``p`` (a parameter or buffer of a layer) cut to the entries ``idx`` along ``dim``."""
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"expected a tensor to slice, got {type(p).__name__}")
    return p.detach().index_select(dim, idx).clone()


def _expand(idx: torch.Tensor, factor: int) -> torch.Tensor:
    """Channel indices -> column indices when each channel spans ``factor`` consecutive columns."""
    return (idx[:, None] * factor + torch.arange(factor)[None]).reshape(-1)


def apply_keep(g: ChannelGroup, keep: torch.Tensor) -> None:
    """Slice every layer of a group to the kept channel indices (sorted), in place."""
    keep = keep.sort().values
    p = g.producer
    p.weight = nn.Parameter(_slice_param(p.weight, 0, keep))
    if p.bias is not None:
        p.bias = nn.Parameter(_slice_param(p.bias, 0, keep))
    p.out_channels = len(keep)
    for m, f in g.passthrough:
        _slice_passthrough(m, _expand(keep, f))
    for m, f in g.consumers:
        cols = _expand(keep, f)
        m.weight = nn.Parameter(_slice_param(m.weight, 1, cols))
        if isinstance(m, nn.Conv2d):
            m.in_channels = len(cols)
        else:
            m.in_features = len(cols)


def _slice_passthrough(m: nn.Module, idx: torch.Tensor) -> None:
    if isinstance(m, nn.BatchNorm2d):
        for name in ("weight", "bias"):
            setattr(m, name, nn.Parameter(_slice_param(getattr(m, name), 0, idx)))
        m.running_mean = _slice_param(m.running_mean, 0, idx)
        m.running_var = _slice_param(m.running_var, 0, idx)
        m.num_features = int(len(idx))
    elif isinstance(m, nn.PReLU):
        m.weight = nn.Parameter(_slice_param(m.weight, 0, idx))
        m.num_parameters = len(idx)
    elif isinstance(m, nn.Conv2d):  # depthwise: output channel j reads input channel j // mult
        mult = m.out_channels // m.in_channels
        m.weight = nn.Parameter(_slice_param(m.weight, 0, idx))
        if m.bias is not None:
            m.bias = nn.Parameter(_slice_param(m.bias, 0, idx))
        m.in_channels = m.groups = len(idx) // mult
        m.out_channels = len(idx)


def keep_count(channels: int, keep: float, multiple: int = 8) -> int:
    """Channels kept for a keep ratio, rounded to a multiple (at least one multiple)."""
    return max(multiple, min(channels, int(round(channels * keep / multiple)) * multiple))


def prune(model: nn.Module, example: torch.Tensor, batches: Iterable[torch.Tensor],
          keep: float | Callable[[ChannelGroup], float], multiple: int = 8) -> dict[str, tuple[int, int]]:
    """Prune every group to the most important ``keep`` share of channels; returns {group: (before, after)}."""
    groups = channel_groups(model, example)
    scores = channel_importance(model, groups, batches)
    changes = {}
    for g, s in zip(groups, scores, strict=True):
        ratio = keep(g) if callable(keep) else keep
        n = keep_count(g.channels, ratio, multiple)
        before = g.channels
        if n < before:
            apply_keep(g, torch.topk(s, n).indices)
        changes[g.name] = (before, g.channels)
        logger.info("pruned %s: %s -> %s channels", g.name, before, g.channels)
    return changes


