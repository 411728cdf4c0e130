"""TinyFace: a grey-input (or BGR), anchor-free (CenterNet-style) face detector small enough for 50 KB at int8.

Backbone: a stride-2 stem and MobileNet-style depthwise-separable stages at strides 4/8/16/32. Neck: a
top-down path (1x1 laterals, nearest 2x upsampling, add, depthwise-separable smoothing) back to stride 4.
Head: one stride-4 map of 13 channels: face heatmap logit, 4 box distances (log l,t,r,b over the stride) and
8 landmark offsets (over the face size). ``DeployHead`` wraps a model for export: sigmoid on the heatmap.

timm-style: typed constructor, ``forward_features`` / ``forward_head``, variants built by ``@register_model``
functions and looked up by name with ``create_model``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

HEAD_CHANNELS = 13  # heat(1), box l,t,r,b (4), landmarks x,y * 4 (8)
GREY_FROM_BGR = (0.114, 0.587, 0.299)  # cv2.COLOR_BGR2GRAY: the weights of B, G, R


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model constructor under its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model by name."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model '{name}' (have: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name](**kwargs)


def list_models() -> list[str]:
    """Names of the registered models."""
    return sorted(_REGISTRY)


class ConvBnAct(nn.Sequential):
    """Conv (no bias) + BatchNorm + optional ReLU."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SepBlock(nn.Module):
    """Depthwise kxk (stride s) + pointwise conv; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int = 1, k: int = 3):
        super().__init__()
        self.dw = ConvBnAct(cin, cin, k, stride, groups=cin, act=False)
        self.pw = ConvBnAct(cin, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(self.dw(x))
        return x + y if self.residual else y


class TinyFace(nn.Module):
    """Grey-input (``in_chans`` 1; 3: BGR) CenterNet-style face detector (see module docstring)."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 48, 64), depths: tuple[int, ...] = (1, 2, 2, 2),
                 neck: int = 24, in_chans: int = 1, big_kernel: int = 5):
        super().__init__()
        self.stride = 4
        self.stem = ConvBnAct(in_chans, widths[0], 3, 2)
        stages = []
        for i, d in enumerate(depths):
            k = 3 if i < 2 else big_kernel  # larger depthwise kernels where maps are small: cheap receptive field
            blocks = [SepBlock(widths[i], widths[i + 1], 2, k)]
            blocks += [SepBlock(widths[i + 1], widths[i + 1], 1, k) for _ in range(d - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.laterals = nn.ModuleList([ConvBnAct(w, neck, 1) for w in widths[1:]])
        self.smooth = nn.ModuleList([SepBlock(neck, neck, 1, 3) for _ in widths[1:-1]])
        self.head_block = SepBlock(neck, neck, 1, 3)
        self.head = nn.Conv2d(neck, HEAD_CHANNELS, 1)
        assert self.head.bias is not None  # Conv2d's bias is Optional; this one has bias=True
        nn.init.constant_(self.head.bias, 0.0)
        nn.init.constant_(self.head.bias[:1], -4.6)  # prior p = 0.01 for the heatmap

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone maps at strides 4, 8, 16, 32."""
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward_head(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Top-down fusion to stride 4 and the raw (B, 13, H/4, W/4) head map."""
        p = self.laterals[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            p = self.laterals[i](feats[i]) + F.interpolate(p, scale_factor=2.0, mode="nearest")
            p = self.smooth[i](p)
        return self.head(self.head_block(p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@torch.no_grad()
def grow(model: nn.Module, small: dict[str, torch.Tensor]) -> None:
    """Embed a smaller TinyFace's weights (a state dict) in ``model`` so that it computes the same function.

    Each tensor goes into the leading corner of the larger one; a conv's old output channels get zero weights
    from the channels the small model lacks, and an added residual block starts as the identity (its last
    BatchNorm scale is zero); the new channels and blocks start from the usual random init and learn from there.
    A grey stem going into a colour (BGR) one is spread over the channels by the weights of the BGR -> grey
    conversion: on a colour image the model computes what the grey one did on its grey.
    """
    state = model.state_dict()
    for name, t in state.items():
        if name not in small:
            continue
        s = small[name]
        if name == "stem.0.weight" and s.shape[1] == 1 and t.shape[1] == 3:
            s = s * torch.tensor(GREY_FROM_BGR).view(1, 3, 1, 1)
        if s.ndim != t.ndim or any(a > b for a, b in zip(s.shape, t.shape, strict=True)):
            raise ValueError(f"{name}: {tuple(s.shape)} does not fit in {tuple(t.shape)}")
        if t.ndim == 4 and t.shape[1] > 1:  # a dense conv: old outputs ignore the new inputs
            t[: s.shape[0], s.shape[1]:] = 0
        t[tuple(slice(0, n) for n in s.shape)] = s
    for name, mod in model.named_modules():
        if isinstance(mod, SepBlock) and f"{name}.pw.0.weight" not in small:
            if not mod.residual:
                raise ValueError(f"{name}: a new block must be residual to start as the identity")
            bn = mod.pw[1]
            assert isinstance(bn, nn.BatchNorm2d)
            bn.weight.zero_()


class DeployHead(nn.Module):
    """Export wrapper: sigmoid on the heatmap channel, raw box and landmark channels."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return torch.cat([torch.sigmoid(y[:, :1]), y[:, 1:]], 1)


@register_model
def tinyface_s(**kwargs: object) -> nn.Module:
    """27 K parameters (the first shipped model)."""
    return TinyFace(**kwargs)  # type: ignore[arg-type]


@register_model
def tinyface_m(**kwargs: object) -> nn.Module:
    """The shipped size: 35.6 K parameters, about 45 KB at int8."""
    cfg: dict[str, object] = {"widths": (8, 16, 32, 56, 88), "depths": (1, 2, 2, 2), "neck": 24}
    return TinyFace(**{**cfg, **kwargs})  # type: ignore[arg-type]


@register_model
def tinyface_w(**kwargs: object) -> nn.Module:
    """tinyface_m's budget moved from stride 32 to strides 2-16 (wider stem, 24/48 ch at strides 4/8, three
    blocks at 16, one at 32): 37.0 K parameters, about 49.4 KB at int8."""
    cfg: dict[str, object] = {"widths": (12, 24, 48, 64, 72), "depths": (1, 2, 3, 1), "neck": 24}
    return TinyFace(**{**cfg, **kwargs})  # type: ignore[arg-type]


@register_model
def tinyface_n(**kwargs: object) -> nn.Module:
    """A 32-channel top-down path and head, paid for by a slimmer stride-32 stage: 33.6 K parameters."""
    cfg: dict[str, object] = {"widths": (8, 16, 40, 56, 64), "depths": (1, 2, 3, 1), "neck": 32}
    return TinyFace(**{**cfg, **kwargs})  # type: ignore[arg-type]


@register_model
def tinyface_l(**kwargs: object) -> nn.Module:
    """tinyface_m grown for int4 pointwise weights: wider strides 16-32, a third block at stride 16 and a 32-channel
    top-down path: 62.1 K parameters, 36.7 M MACs per 320x256 (1.6x tinyface_m). ``grow`` embeds tinyface_m."""
    cfg: dict[str, object] = {"widths": (8, 16, 40, 72, 112), "depths": (1, 2, 3, 2), "neck": 32}
    return TinyFace(**{**cfg, **kwargs})  # type: ignore[arg-type]


@register_model
def tinyface_xs(**kwargs: object) -> nn.Module:
    """A smaller variant for quick experiments and CI."""
    cfg: dict[str, object] = {"widths": (8, 12, 24, 32, 48), "depths": (1, 1, 1, 1), "neck": 16}
    return TinyFace(**{**cfg, **kwargs})  # type: ignore[arg-type]
