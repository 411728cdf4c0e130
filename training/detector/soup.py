"""Average a fine-tuned detector with the model it started from, weight by weight (WiSE-FT's weight-space
ensemble): each conv's weight and bias with its BatchNorm folded in, so the average is of what the two models
compute, then written as a checkpoint ``export`` reads (BatchNorms given back by ``unfold_bn``).

A fine-tune that learns a new input (wild16: frames after local contrast equalisation) forgets some of what its
start knew; halfway between the two keeps both (the detector card, "Local contrast").

    python -m training.detector.soup --start runs/detector/wild13c.onnx --tuned runs/detector/wild16/ckpt.pt \\
        --alpha 0.5 --out runs/detector/wild16s/ckpt.pt
    python -m training.detector.export runs/detector/wild16s/ckpt.pt
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.compress.export import unfold_bn
from training.detector.export import fold_bn, in_channels
from training.detector.model import ConvBnAct
from training.detector.train import build_model, config_from_dict, init_weights


@torch.no_grad()
def soup(start: nn.Module, tuned: nn.Module, alpha: float, x: torch.Tensor) -> nn.Module:
    """``tuned``'s architecture computing, conv by conv, ``(1 - alpha) * start + alpha * tuned`` of the folded
    weights and biases; ``x`` (a batch) sets the BatchNorms' statistics (``unfold_bn``). Eval mode."""
    folded = [dict(fold_bn(copy.deepcopy(m).eval()).named_modules()) for m in (start, tuned)]
    out = copy.deepcopy(tuned)
    biases: dict[nn.modules.batchnorm._BatchNorm, np.ndarray] = {}
    for name, conv in out.named_modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        parent = out.get_submodule(name.rpartition(".")[0])
        bn = parent[1] if isinstance(parent, ConvBnAct) and parent[0] is conv else None
        a, b = folded[0][name], folded[1][name]  # the folded copies keep the conv's name
        assert isinstance(a, nn.Conv2d) and isinstance(b, nn.Conv2d) and a.bias is not None and b.bias is not None
        conv.weight.copy_((1 - alpha) * a.weight + alpha * b.weight)
        bias = (1 - alpha) * a.bias + alpha * b.bias
        if isinstance(bn, nn.BatchNorm2d):
            biases[bn] = bias.numpy()
        else:
            assert conv.bias is not None
            conv.bias.copy_(bias)
    unfold_bn(out, biases, x)
    return out.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", type=Path, required=True, help="the model the fine-tune started from (ckpt.pt or ONNX)")
    ap.add_argument("--tuned", type=Path, required=True, help="the fine-tune's checkpoint (its EMA weights)")
    ap.add_argument("--alpha", type=float, default=0.5, help="share of the fine-tune (default: %(default)s)")
    ap.add_argument("--out", type=Path, required=True,
                    help="checkpoint to write (the fine-tune's config; export records the recipe)")
    args = ap.parse_args()
    ck = torch.load(args.tuned, map_location="cpu", weights_only=False)
    cfg = config_from_dict(ck["config"])
    tuned, start = build_model(cfg), build_model(cfg)
    tuned.load_state_dict(ck["ema"])
    x = torch.randn(16, in_channels(tuned), cfg.aug.size, cfg.aug.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        init_weights(start, args.start, x)
    mixed = soup(start, tuned, args.alpha, x)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    recipe = {"start": str(args.start), "tuned": str(args.tuned), "alpha": args.alpha}
    torch.save({**ck, "ema": mixed.state_dict(), "model": mixed.state_dict(), "opt": None, "soup": recipe}, args.out)
    print(f"{args.out}: {1 - args.alpha:g} x {args.start} + {args.alpha:g} x {args.tuned}")


if __name__ == "__main__":
    main()
