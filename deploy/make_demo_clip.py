"""Re-encode the CC BY 4.0 Intel corridor clips into the small bundled demo clip ``edgecam/data/corridor.mp4``.

Step by step:
1. decode ``face-demographics-walking-and-pause.gif`` then ``face-demographics-walking.gif`` (480x270 GIF
   previews from intel-iot-devkit/sample-videos; people walk up a corridor toward the camera);
2. write them back to back, unchanged in size, as one MPEG-4 Part 2 (``mp4v``) file at the GIFs' 12.5 fps;
3. read it back and print frames, size and PSNR against the GIF frames.

Usage: python deploy/make_demo_clip.py [--video-dir ../shared/data/video] [--out edgecam/data/corridor.mp4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

CLIPS = ("intel_face-demographics-walking-and-pause.gif", "intel_face-demographics-walking.gif")
FPS = 12.5


def read_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if not frames:
        raise SystemExit(f"{path}: no frames decoded")
    return frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video-dir", type=Path, default=Path("../shared/data/video"), help="(default: %(default)s)")
    ap.add_argument("--out", type=Path, default=Path("edgecam/data/corridor.mp4"), help="(default: %(default)s)")
    args = ap.parse_args()

    # 1. decode
    frames = [f for name in CLIPS for f in read_frames(args.video_dir / name)]
    h, w = frames[0].shape[:2]
    # 2. encode
    out = cv2.VideoWriter(str(args.out), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (w, h))
    if not out.isOpened():
        raise SystemExit(f"{args.out}: cannot open an mp4v writer")
    for f in frames:
        out.write(f)
    out.release()
    # 3. check
    back = read_frames(args.out)
    psnr = [cv2.PSNR(a, b) for a, b in zip(frames, back, strict=True)]
    print(f"{args.out}: {len(back)} frames {w}x{h} at {FPS} fps, {args.out.stat().st_size} bytes, "
          f"PSNR vs GIF mean {np.mean(psnr):.1f} dB, min {np.min(psnr):.1f} dB")


if __name__ == "__main__":
    main()
