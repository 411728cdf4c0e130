"""Hard negatives: what a trained detector fires on in the training scenes where YuNet saw no face.

Bootstrapping (as for the Viola-Jones cascades): run a detector over the labelled training folders
(``scenes.py`` labels) and the face-free negatives; every detection scoring >= ``--score`` that overlaps none
of YuNet's faces or ignore regions (IoU < 0.1, centre outside) is a hard negative: a back of a head, a logo, a
lamp. Each is cut out with ``--context`` times its size around it (YuNet's faces in that window kept as faces)
and written as a labelled folder of its own, so a run weights these views up like any other extra
(``extra: runs/detector/labels/hardneg.json:0.1``). A contact sheet of the crops is written beside the labels:
look at it, a crop that shows a real face (a profile YuNet missed) must not become a negative.

    python -m training.detector.hardneg --model runs/detector/wild4/model --out runs/detector/labels/hardneg.json \\
        runs/detector/labels/worksite.json runs/detector/labels/voc_shwd.json ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edgecam.detect import FaceDetector
from training.detector.data import iou
from training.detector.figures import contact_sheet
from training.detector.scenes import IMAGE_SUFFIXES, read_stored


def unexplained(boxes: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Mask of ``boxes`` (N, 4+) that overlap none of ``known`` (M, 4): IoU < 0.1 and centre outside each."""
    if not len(known) or not len(boxes):
        return np.ones(len(boxes), bool)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    inside = ((cx[:, None] >= known[None, :, 0]) & (cx[:, None] <= known[None, :, 2])
              & (cy[:, None] >= known[None, :, 1]) & (cy[:, None] <= known[None, :, 3]))
    return ~((iou(boxes[:, :4], known) >= 0.1) | inside).any(1)


def window(box: np.ndarray, context: float, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Square window of ``context`` times the box's larger side around its centre, clipped to the image."""
    side = context * max(box[2] - box[0], box[3] - box[1], 16.0)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    return x0, y0, int(min(shape[1], cx + side / 2)), int(min(shape[0], cy + side / 2))


def cut_labels(lab: dict, x0: int, y0: int, x1: int, y1: int) -> dict:
    """The labels of the faces and ignore regions whose centre lies in the window, in the window's pixels."""
    out: dict[str, list] = {"boxes": [], "landmarks": [], "scores": [], "ignore": []}
    shift = np.array([x0, y0], np.float32)
    for key in ("boxes", "ignore"):
        for k, b in enumerate(np.array(lab.get(key, []), np.float32).reshape(-1, 4)):
            c = (b[:2] + b[2:]) / 2
            if not (x0 <= c[0] < x1 and y0 <= c[1] < y1):
                continue
            out[key].append((b - np.tile(shift, 2)).round(1).tolist())
            if key == "boxes":
                lm = np.array(lab["landmarks"][k], np.float32).reshape(4, 2) - shift
                out["landmarks"].append(lm.reshape(-1).round(1).tolist())
                out["scores"].append(lab["scores"][k])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("labels", nargs="+", help="scenes.py labels JSONs of training folders")
    ap.add_argument("--model", required=True, help="detector model folder (an export of the run to bootstrap)")
    ap.add_argument("--negatives", default="../shared/data/detection/negatives", help="face-free images ('' = none)")
    ap.add_argument("--out", default="runs/detector/labels/hardneg.json", help="labels JSON to write")
    ap.add_argument("--crops", default="runs/data/hardneg", help="folder for the cut-out windows")
    ap.add_argument("--score", type=float, default=0.4, help="least detection score kept (default: %(default)s)")
    ap.add_argument("--context", type=float, default=4.0, help="window side / detection side (default: %(default)s)")
    args = ap.parse_args()

    det = FaceDetector(args.model, score_threshold=args.score, max_side=100_000, coarse_side=0)
    crops, out = Path(args.crops), Path(args.out)
    crops.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, np.ndarray, dict]] = []
    for path in map(Path, args.labels):
        spec = json.loads(path.read_text())
        jobs += [(f"{path.stem}/{name}", read_stored(Path(spec["folder"]) / name, spec["max_side"]), lab)
                 for name, lab in tqdm(spec["images"].items(), desc=f"read {path.stem}", mininterval=10)]
    if args.negatives:
        jobs += [(f"negatives/{p.name}", read_stored(p, 100_000), {}) for p in sorted(Path(args.negatives).rglob("*"))
                 if p.suffix.lower() in IMAGE_SUFFIXES]
    images, sheet = {}, []
    for name, bgr, lab in tqdm(jobs, desc="detect", mininterval=10):
        boxes, _ = det(bgr)
        known = np.concatenate([np.array(lab.get(k, []), np.float32).reshape(-1, 4) for k in ("boxes", "ignore")])
        for k, b in enumerate(boxes[unexplained(boxes, known)]):
            x0, y0, x1, y1 = window(b, args.context, bgr.shape)
            file = f"{name.replace('/', '_').rsplit('.', 1)[0]}_{k}.png"
            cv2.imwrite(str(crops / file), bgr[y0:y1, x0:x1])
            images[file] = cut_labels(lab, x0, y0, x1, y1)
            sheet.append((bgr[int(b[1]):int(b[3]) + 1, int(b[0]):int(b[2]) + 1], f"{name.split('/')[0]} {b[4]:.2f}"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"folder": str(crops), "max_side": 100_000, "mined_by": args.model,
                               "score": args.score, "context": args.context, "images": images}))
    contact_sheet(sorted(sheet, key=lambda s: -float(s[1].split()[-1])), out.with_suffix(".png"),
                  f"hard negatives of {args.model} (score >= {args.score})", limit=200)
    print(f"{len(images)} hard negatives from {len(jobs)} images -> {out}, sheet {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
