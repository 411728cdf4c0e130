"""YuNet pseudo-labels for the faces WebFaces leaves unlabelled (profile, tiny, background people).

Runs the YuNet anchor (``cv2.FaceDetectorYN``) on every train image at 1x and 2x (the 2x pass finds tiny
faces), merges the two with NMS, and drops detections that match a labelled face (centre inside its
convention box, or IoU >= 0.3). What is left becomes:
  * a pseudo face when YuNet's score >= ``--face-score``: YuNet's box and its landmarks (eyes, nose, the
    mean of the two mouth corners), trained at half landmark weight;
  * an ignore region when ``--ignore-score`` <= score < ``--face-score``: no loss pushes our score down there.
YuNet only teaches; it never ships. Output: JSON {image: {"boxes", "landmarks", "scores", "ignore"}}.

    python -m training.detector.pseudo_label --out runs/detector/pseudo_train.json   # ~4 min on 1 core

``train.py`` runs this itself when its ``--pseudo`` file does not exist yet.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edgecam.detect import nms
from training.detector.data import boxes_from_landmarks, iou, read_bgr, read_landmarks, read_split

YUNET = "../shared/models/anchors/face_detection_yunet_2023mar_int8bq.onnx"


def yunet_detect(det: cv2.FaceDetectorYN, bgr: np.ndarray, scale: float) -> np.ndarray:
    """YuNet on ``bgr`` resized by ``scale``: (N, 13) x1,y1,x2,y2, 4 landmarks x,y, score in original pixels."""
    img = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR) if scale != 1 else bgr
    det.setInputSize((img.shape[1], img.shape[0]))
    _, faces = det.detect(img)
    if faces is None:
        return np.zeros((0, 13), np.float32)
    f = faces.astype(np.float32) / np.array([scale] * 14 + [1], np.float32)
    boxes = np.hstack([f[:, :2], f[:, :2] + f[:, 2:4]])
    lm = f[:, 4:14].reshape(-1, 5, 2)
    lm4 = np.concatenate([lm[:, :3], lm[:, 3:5].mean(1, keepdims=True)], 1).reshape(-1, 8)
    return np.hstack([boxes, lm4, f[:, 14:15]])


def unmatched(dets: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Detections (N, 13) that match no labelled box (centre inside it or IoU >= 0.3)."""
    if len(gt) == 0 or len(dets) == 0:
        return dets
    ctr = (dets[:, :2] + dets[:, 2:4]) / 2
    inside = np.all((ctr[:, None] >= gt[None, :, :2]) & (ctr[:, None] <= gt[None, :, 2:]), axis=2)
    return dets[~(inside.any(1) | (iou(dets[:, :4], gt) >= 0.3).any(1))]


def pseudo_labels(root: Path, split: str = "train", yunet: str = YUNET, face_score: float = 0.6,
                  ignore_score: float = 0.3) -> dict[str, dict[str, list]]:
    """{image: {"boxes", "landmarks", "ignore"}} for the faces of ``split`` that the WebFaces labels miss."""
    # 1. labelled faces and the teacher
    lms = read_landmarks(root)
    cv2.setNumThreads(1)
    det = cv2.FaceDetectorYN.create(yunet, "", (320, 320), ignore_score, 0.3, 5000)
    # 2. run the teacher at 1x and 2x, merge, keep what the labels miss
    out: dict[str, dict[str, list]] = {}
    for name in tqdm(read_split(root, split), desc="yunet pseudo-labels", mininterval=5):
        bgr = read_bgr(root / "images" / name)
        dets = np.concatenate([yunet_detect(det, bgr, 1.0), yunet_detect(det, bgr, 2.0)])
        dets = dets[nms(dets[:, :4], dets[:, 12], 0.4)] if len(dets) else dets
        extra = unmatched(dets, boxes_from_landmarks(lms.get(name, np.zeros((0, 4, 2), np.float32))))
        faces = extra[extra[:, 12] >= face_score]
        if len(extra):
            out[name] = {"boxes": faces[:, :4].round(2).tolist(), "landmarks": faces[:, 4:12].round(2).tolist(),
                         "scores": faces[:, 12].round(3).tolist(),
                         "ignore": extra[extra[:, 12] < face_score][:, :4].round(2).tolist()}
    return out


def write_pseudo_labels(path: Path, root: Path, **kwargs: object) -> None:
    """Compute the pseudo-labels and write them as JSON to ``path``."""
    out = pseudo_labels(root, **kwargs)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    n_face = sum(len(v["boxes"]) for v in out.values())
    n_ign = sum(len(v["ignore"]) for v in out.values())
    print(f"{path}: {n_face} pseudo faces, {n_ign} ignore regions in {len(out)} images")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/detection/webfaces",
                    help="WebFaces folder (default: %(default)s)")
    ap.add_argument("--split", default="train", help="split to label (default: %(default)s)")
    ap.add_argument("--yunet", default=YUNET, help="YuNet ONNX (default: %(default)s)")
    ap.add_argument("--face-score", type=float, default=0.6, help="min score of a pseudo face (default: %(default)s)")
    ap.add_argument("--ignore-score", type=float, default=0.3, help="min score of an ignore box (default: %(default)s)")
    ap.add_argument("--out", default="runs/detector/pseudo_train.json", help="output JSON (default: %(default)s)")
    args = ap.parse_args()
    write_pseudo_labels(Path(args.out), Path(args.data), split=args.split, yunet=args.yunet,
                        face_score=args.face_score, ignore_score=args.ignore_score)


if __name__ == "__main__":
    main()
