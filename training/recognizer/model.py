"""Face embedding networks: the SFace teacher replica and its students (timm style).

SFace (OpenCV Zoo, 2021dec) is a MobileNet-v1 body — a 3x3 stem and 13 depthwise-separable blocks with
BatchNorm + PReLU — followed by BN, flatten of the 1024x7x7 map and a 50176 -> 128 linear layer with BN.
``FaceMobileNet`` reproduces it exactly (``sface_teacher`` loads the weights from the ONNX file, see
``training/recognizer/teacher.py``) and, with other widths / strides / heads, is the student family:

- ``stem_stride=2`` runs the body at half resolution (a quarter of the MACs) on the same 112x112 crop;
- ``head="flatten"`` is SFace's position-aware linear head; ``head="lowrank"`` is its per-channel low-rank
  factorisation (a depthwise HxW conv giving ``rank`` features per channel, then a linear layer), which is
  what ``training.compress.lowrank.factorize_flatten_head`` turns a flatten head into.

Input: (B, 3, H, W) RGB normalised as (pixel - 127.5) / 128. Output: (B, emb) embeddings (not normalised).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., FaceMobileNet]] = {}

# SFace body: (output channels, stride) of the 13 depthwise-separable blocks after a 32-channel stem.
SFACE_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


def register_model(fn: Callable[..., FaceMobileNet]) -> Callable[..., FaceMobileNet]:
    """Register a model constructor under its function name (timm style)."""
    _REGISTRY[fn.__name__] = fn
    return fn


def create_model(name: str, **kwargs: object) -> FaceMobileNet:
    """Build a registered model by name."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model '{name}' (registered: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name](**kwargs)


@dataclass(frozen=True)
class NetConfig:
    """Architecture of a FaceMobileNet (saved into every checkpoint, so a pruned model rebuilds exactly)."""

    stem: int = 32  # stem conv output channels
    blocks: tuple[tuple[int, int], ...] = SFACE_BLOCKS  # (out channels, stride) per depthwise-separable block
    stem_stride: int = 1  # 1 = SFace; 2 = body at half resolution
    input_size: int = 112  # square crop side
    emb: int = 128  # embedding size
    head: str = "flatten"  # "flatten" (SFace) | "lowrank" (per-channel low-rank of flatten) | "gdc"
    head_rank: int = 1  # features per channel for head="lowrank"
    pw_ranks: tuple[int, ...] = field(default_factory=tuple)  # per block: 0 = full 1x1 conv, r = two 1x1 of rank r
    in_chans: int = 3  # 3 = RGB crops, 1 = grey
    classes: int = 0  # > 0: a closed-set classifier (logits) after the embedding

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def feat_hw(self) -> int:
        """Side of the final feature map."""
        s = -(-self.input_size // self.stem_stride)
        for _, stride in self.blocks:
            s = -(-s // stride)
        return s


class ConvBnAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d (+ PReLU)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=1e-3),
        ]
        if act:
            layers.append(nn.PReLU(cout))
        super().__init__(*layers)


class Pointwise(nn.Sequential):
    """A 1x1 conv, full (one conv) or low-rank (cin -> rank -> cout, two convs), then BN + PReLU."""

    def __init__(self, cin: int, cout: int, rank: int = 0):
        convs: list[nn.Module] = [nn.Conv2d(cin, cout, 1, bias=False)] if rank <= 0 else [
            nn.Conv2d(cin, rank, 1, bias=False), nn.Conv2d(rank, cout, 1, bias=False)]
        super().__init__(*convs, nn.BatchNorm2d(cout, eps=1e-3), nn.PReLU(cout))


class DwSepBlock(nn.Module):
    """Depthwise 3x3 (stride s) + BN + PReLU, then pointwise + BN + PReLU."""

    def __init__(self, cin: int, cout: int, stride: int, rank: int = 0):
        super().__init__()
        self.dw = ConvBnAct(cin, cin, 3, stride, groups=cin)
        self.pw = Pointwise(cin, cout, rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class FaceMobileNet(nn.Module):
    """MobileNet-v1 face embedder (SFace layout) with configurable widths, strides and head."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = ConvBnAct(cfg.in_chans, cfg.stem, 3, cfg.stem_stride)
        ranks = list(cfg.pw_ranks) or [0] * len(cfg.blocks)
        blocks, cin = [], cfg.stem
        for (cout, stride), rank in zip(cfg.blocks, ranks, strict=True):
            blocks.append(DwSepBlock(cin, cout, stride, rank))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn_feat = nn.BatchNorm2d(cin, eps=2e-5)
        hw = cfg.feat_hw
        if cfg.head == "flatten":
            self.head_spatial: nn.Module = nn.Flatten()
            head_in = cin * hw * hw
        elif cfg.head == "lowrank":
            self.head_spatial = nn.Sequential(
                nn.Conv2d(cin, cin * cfg.head_rank, hw, groups=cin, bias=False), nn.Flatten())
            head_in = cin * cfg.head_rank
        elif cfg.head == "gdc":
            self.head_spatial = nn.Sequential(nn.Conv2d(cin, cin, hw, groups=cin, bias=False), nn.Flatten())
            head_in = cin
        else:
            raise ValueError(f"head '{cfg.head}' is not one of flatten, lowrank, gdc")
        self.fc = nn.Linear(head_in, cfg.emb)
        self.bn_emb = nn.BatchNorm1d(cfg.emb, eps=2e-5)
        self.classifier = nn.Linear(cfg.emb, cfg.classes) if cfg.classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised crops -> (B, C, h, w) final feature map (after bn_feat)."""
        return self.bn_feat(self.blocks(self.stem(x)))

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """Feature map -> (B, emb) embedding (or (B, classes) logits for a classifier)."""
        return self.classifier(self.bn_emb(self.fc(self.head_spatial(f))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class FlipFusion(nn.Module):
    """Test-time mirror fusion in the graph: the embedding is l2n(f(x)) + l2n(f(mirror(x))).

    A face and its mirror image are the same person, so a student that only approximates its teacher gets a
    steadier embedding from the two views at twice the MACs (one batched call). Exported as one ONNX graph,
    so the runtime needs nothing special.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.model(torch.cat([x, torch.flip(x, dims=[3])], 0))
        e = e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return e.reshape(2, -1, e.shape[1]).sum(0)


@register_model
def sface(**overrides: object) -> FaceMobileNet:
    """SFace's exact architecture (9.98 M parameters, ~0.57 GMACs at 112x112)."""
    return FaceMobileNet(NetConfig(**overrides))  # type: ignore[arg-type]


@register_model
def sface_s2(**overrides: object) -> FaceMobileNet:
    """SFace's widths with a stride-2 stem; the stride of block 12 is dropped to keep the 7x7 final map."""
    blocks = list(SFACE_BLOCKS)
    blocks[11] = (blocks[11][0], 1)
    return FaceMobileNet(NetConfig(stem_stride=2, blocks=tuple(blocks), **overrides))  # type: ignore[arg-type]


@register_model
def mbf_small(width: float = 0.5, **overrides: object) -> FaceMobileNet:
    """A from-scratch student: sface_s2 at a width multiplier with a low-rank head."""
    blocks = [(max(8, int(c * width)), s) for c, s in SFACE_BLOCKS]
    blocks[11] = (blocks[11][0], 1)
    cfg = dict(stem=max(8, int(32 * width)), blocks=tuple(blocks), stem_stride=2, head="lowrank", head_rank=2)
    cfg.update(overrides)
    return FaceMobileNet(NetConfig(**cfg))  # type: ignore[arg-type]


@register_model
def crop_classifier(classes: int = 40, width: float = 0.25, input_size: int = 64, in_chans: int = 1,
                    **overrides: object) -> FaceMobileNet:
    """A closed-set crop classifier (the daemon's ``classifier`` kind): SFace's layout at a width multiplier,
    a small grey input, a global depthwise head, a 64-d embedding and a linear classifier."""
    blocks = tuple((max(8, int(c * width)), s) for c, s in SFACE_BLOCKS)
    cfg = dict(stem=max(8, int(32 * width)), blocks=blocks, stem_stride=1, input_size=input_size, in_chans=in_chans,
               head="gdc", emb=64, classes=classes)
    cfg.update(overrides)
    return FaceMobileNet(NetConfig(**cfg))  # type: ignore[arg-type]


def count_params(model: nn.Module) -> int:
    """Number of parameters (BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def input_shape(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) input of a FaceMobileNet (3, 112, 112 for anything else)."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        return (3, 112, 112)
    return (cfg.in_chans, cfg.input_size, cfg.input_size)


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one input of (C, H, W)."""
    macs = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        macs += int(out[0].numel()) * k

    def lin_hook(m: nn.Linear, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        macs += m.in_features * m.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_size))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return macs
