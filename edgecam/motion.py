"""Motion gate: decide per frame whether the face detector needs to run.

Each frame is converted to grey, downscaled to ``width`` and blurred, then compared with a running-average
background. The fraction of watched pixels (inside the zones, outside the masks) whose grey level moved more
than ``threshold`` is the motion measure; at ``min_area`` or above the frame has motion. The detector runs on
the first frame, on frames with motion, for ``hold_frames`` frames after motion stops (so a person who leaves
is seen to leave) and at least every ``force_every`` frames (a person standing still is still seen). Every
other frame is skipped and counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from edgecam.config import MotionConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MotionResult:
    """The gate's decision for one frame: run the detector or not, why, and the moving fraction."""

    run: bool
    reason: str  # first | motion | hold | forced | disabled | still
    fraction: float


@dataclass
class MotionStats:
    """Frames seen, frames whose detector run was skipped, and runs that were only forced."""

    frames: int = 0
    skipped: int = 0
    forced: int = 0


def small_grey(bgr: np.ndarray, width: int) -> np.ndarray:
    """Grey, downscaled to ``width`` (aspect kept), blurred float32 copy of a BGR frame."""
    h, w = bgr.shape[:2]
    height = max(1, round(h * width / w))
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if bgr.ndim == 3 else bgr
    small = cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(small, (5, 5), 0).astype(np.float32)


def watch_mask(frame_wh: tuple[int, int], small_wh: tuple[int, int], zones: list[list[list[float]]],
               masks: list[list[list[float]]]) -> np.ndarray:
    """Boolean (h, w) mask at the small size: inside any zone (all when none) and outside every mask.

    Polygons are in frame pixels; they are scaled to the small frame before rasterising.
    """
    sx, sy = small_wh[0] / frame_wh[0], small_wh[1] / frame_wh[1]

    def fill(polygons: list[list[list[float]]]) -> np.ndarray:
        out = np.zeros((small_wh[1], small_wh[0]), np.uint8)
        for poly in polygons:
            pts = np.round(np.asarray(poly, np.float64) * [sx, sy]).astype(np.int32)
            cv2.fillPoly(out, [pts], 1)
        return out.astype(bool)

    inside = fill(zones) if zones else np.ones((small_wh[1], small_wh[0]), bool)
    return inside & ~fill(masks)


class MotionGate:
    """Running-background frame differencing in front of the detector (see the module docstring)."""

    def __init__(self, cfg: MotionConfig) -> None:
        self.cfg = cfg
        self.stats = MotionStats()
        self._background: np.ndarray | None = None
        self._mask: np.ndarray | None = None
        self._frame_wh: tuple[int, int] | None = None
        self._since_motion = 1 << 30
        self._since_run = 0

    def __call__(self, bgr: np.ndarray) -> MotionResult:
        """Update the background with ``bgr`` and decide whether the detector runs on it."""
        self.stats.frames += 1
        if not self.cfg.enabled:
            return self._decide(True, "disabled", 0.0)
        small = small_grey(bgr, self.cfg.width)
        frame_wh = (bgr.shape[1], bgr.shape[0])
        if self._background is None or frame_wh != self._frame_wh:
            self._reset(small, frame_wh)
            return self._decide(True, "first", 0.0)
        fraction = self._moving_fraction(small)
        if fraction >= self.cfg.min_area and fraction > 0:
            self._since_motion = 0
            return self._decide(True, "motion", fraction)
        self._since_motion += 1
        if self._since_motion <= self.cfg.hold_frames:
            return self._decide(True, "hold", fraction)
        if self.cfg.force_every and self._since_run + 1 >= self.cfg.force_every:
            self.stats.forced += 1
            return self._decide(True, "forced", fraction)
        return self._decide(False, "still", fraction)

    def _reset(self, small: np.ndarray, frame_wh: tuple[int, int]) -> None:
        if self._frame_wh is not None:
            logger.info("frame size changed from %s to %s: motion background reset", self._frame_wh, frame_wh)
        self._background, self._frame_wh = small.copy(), frame_wh
        self._mask = watch_mask(frame_wh, (small.shape[1], small.shape[0]), self.cfg.zones, self.cfg.masks)
        self._since_motion = 0

    def _moving_fraction(self, small: np.ndarray) -> float:
        assert self._background is not None and self._mask is not None
        moving = np.abs(small - self._background) > self.cfg.threshold
        cv2.accumulateWeighted(small, self._background, self.cfg.background_alpha)
        watched = int(self._mask.sum())
        return float((moving & self._mask).sum()) / watched if watched else 0.0

    def _decide(self, run: bool, reason: str, fraction: float) -> MotionResult:
        if run:
            self._since_run = 0
        else:
            self._since_run += 1
            self.stats.skipped += 1
        return MotionResult(run, reason, fraction)
