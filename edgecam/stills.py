"""Still images for the CLI (``detect``, ``identify``, ``enroll``): read them, go through a batch, draw the faces.

``read_still`` decodes whatever OpenCV's image codecs read, whatever the file is called (JPEG, PNG, BMP, GIF,
WebP, TIFF, AVIF, JPEG 2000, PNM; a name without an extension is fine): the content decides, never the
suffix. A GIF that the image codecs refuse (OpenCV builds before 4.11 have no GIF codec) is read as a video:
its first frame. ``Batch`` walks the images of one command: an unreadable file is reported on stderr in one
line and the rest still run; ``finish()`` then gives exit code 2. ``draw_faces`` draws boxes, landmarks and labels.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgecam import EdgecamError
from edgecam.sources import SourceError, check_image, read_image

GIF_MAGIC = (b"GIF87a", b"GIF89a")
COLOURS = {"known": (80, 200, 60), "uncertain": (0, 170, 255), "unknown": (60, 60, 230), "": (80, 200, 60)}  # BGR


def read_still(path: Path) -> np.ndarray:
    """A BGR uint8 image from any file OpenCV reads; SourceError naming the file and why not."""
    path = Path(path)
    try:
        return read_image(path)
    except SourceError:
        frame = _first_gif_frame(path)
        if frame is None:
            raise
        return check_image(frame, str(path))


def _first_gif_frame(path: Path) -> np.ndarray | None:
    """The first frame of a GIF through FFmpeg (None when ``path`` is not a GIF or FFmpeg cannot read it)."""
    try:
        with path.open("rb") as f:
            if f.read(6) not in GIF_MAGIC:
                return None
    except OSError:
        return None
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        ok, frame = cap.read() if cap.isOpened() else (False, None)
    finally:
        cap.release()
    return frame if ok and frame is not None and frame.ndim == 3 else None


class Batch:
    """The images of one command, read one at a time; unreadable ones are reported and skipped.

    Iterating yields ``(path, bgr)`` for each readable image and prints ``edgecam COMMAND: PATH: why`` on
    stderr for each other one. ``draw_dir``: where ``save_drawing`` writes the annotated stills.
    """

    def __init__(self, paths: Sequence[str], command: str, draw_dir: str | None = None) -> None:
        self.paths, self.command = list(paths), command
        self.failed: list[str] = []
        self.draw_dir = Path(draw_dir) if draw_dir else None
        self._written: set[str] = set()
        if self.draw_dir is not None:
            if self.draw_dir.exists() and not self.draw_dir.is_dir():
                raise EdgecamError(f"--draw {self.draw_dir}: not a folder")
            self.draw_dir.mkdir(parents=True, exist_ok=True)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for p in self.paths:
            try:
                bgr = read_still(Path(p))
            except SourceError as e:
                self.failed.append(p)
                print(f"edgecam {self.command}: {e}", file=sys.stderr, flush=True)
                continue
            yield p, bgr

    def save_drawing(self, path: str, bgr: np.ndarray, faces: list[dict[str, Any]]) -> Path | None:
        """With a draw folder: ``bgr`` with ``faces`` drawn, as ``DIR/<name>.jpg`` (``-2``, ... on a clash)."""
        if self.draw_dir is None:
            return None
        stem, k = Path(path).stem or "image", 1
        name = f"{stem}.jpg"
        while name in self._written:
            k += 1
            name = f"{stem}-{k}.jpg"
        self._written.add(name)
        out = self.draw_dir / name
        if not cv2.imwrite(str(out), draw_faces(bgr, faces)):
            raise EdgecamError(f"--draw {self.draw_dir}: cannot write {out.name}")
        return out

    def finish(self) -> int:
        """The exit code: 0, or 2 when an image could not be read (with a summary line when there were several)."""
        if not self.failed:
            return 0
        if len(self.paths) > 1:
            more = ", ..." if len(self.failed) > 3 else ""
            print(f"edgecam {self.command}: {len(self.failed)} of {len(self.paths)} images could not be read "
                  f"({', '.join(self.failed[:3])}{more}); the other {len(self.paths) - len(self.failed)} were "
                  "processed", file=sys.stderr, flush=True)
        return 2


def face_label(face: dict[str, Any]) -> str:
    """``alice 0.62`` (name and similarity), ``alice? 0.46`` for an uncertain candidate, else the score."""
    if "name" not in face:
        return f"{face['score']:.2f}"
    sim = face.get("similarity")
    sim_text = f" {sim:.2f}" if isinstance(sim, (int, float)) else ""
    if face.get("status") == "uncertain":
        return f"{face.get('candidate', '?')}?{sim_text}"
    return f"{face['name']}{sim_text}"


def draw_faces(bgr: np.ndarray, faces: list[dict[str, Any]]) -> np.ndarray:
    """A copy of ``bgr`` with each face's box, landmarks and label (``face_label``) drawn."""
    out = bgr.copy()
    thick = max(1, round(max(out.shape[:2]) / 400))
    for f in faces:
        colour = COLOURS.get(str(f.get("status", "")), COLOURS[""])
        x1, y1, x2, y2 = (round(v) for v in f["box"])
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick, cv2.LINE_AA)
        for x, y in f.get("landmarks", []):
            cv2.circle(out, (round(x), round(y)), thick + 1, (255, 255, 0), -1, cv2.LINE_AA)
        label, scale = face_label(f), 0.4 + 0.2 * thick
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        top = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else y2 + 2  # above the box, else below it
        cv2.rectangle(out, (x1, top), (x1 + tw + 4, top + th + base + 2), colour, -1)
        cv2.putText(out, label, (x1 + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                    cv2.LINE_AA)
    return out
