"""Quality gate and snapshots (additions to crops.py): size, blur, pose; snapshot crop bounds."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgecam.crops import QualityGate, snapshot_crop, yaw

FRONTAL = np.array([[40, 50], [72, 50], [56, 70], [56, 90]], np.float32)  # eyes, nose, mouth


def textured(size: int = 112, blur: int = 0) -> np.ndarray:
    img = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (blur, blur), 0) if blur else img


def test_yaw_is_zero_frontal_and_grows_with_turn() -> None:
    assert yaw(FRONTAL) == pytest.approx(0.0)
    turned = FRONTAL.copy()
    turned[2, 0] += 12  # nose 12 px toward one eye on a 32 px eye distance
    assert yaw(turned) == pytest.approx(12 / 32)


def test_yaw_ignores_roll_and_scale() -> None:
    turned = FRONTAL.copy()
    turned[2, 0] += 8
    rot = cv2.getRotationMatrix2D((56, 70), 30, 2.0)
    rolled = np.hstack([turned, np.ones((4, 1), np.float32)]) @ rot.T
    assert yaw(rolled) == pytest.approx(yaw(turned), abs=1e-5)


def test_degenerate_landmarks_count_as_turned() -> None:
    assert yaw(np.zeros((4, 2), np.float32)) == 1.0


def test_gate_passes_a_good_crop() -> None:
    q = QualityGate(min_size_px=24, min_sharpness=20, max_yaw=0.35)(textured(), np.array([0, 0, 60, 70]), FRONTAL)
    assert q.ok and q.reason == "" and q.size == 60 and q.sharpness > 20


@pytest.mark.parametrize(("crop", "box", "lm", "reason"), [
    (textured(), np.array([0, 0, 20, 60]), FRONTAL, "small"),
    (textured(blur=15), np.array([0, 0, 60, 60]), FRONTAL, "blurred"),
    (textured(), np.array([0, 0, 60, 60]), FRONTAL + np.array([[0, 0], [0, 0], [15, 0], [0, 0]], np.float32), "turned"),
])
def test_gate_rejects_with_reason(crop: np.ndarray, box: np.ndarray, lm: np.ndarray, reason: str) -> None:
    q = QualityGate()(crop, box, lm)
    assert not q.ok and q.reason == reason
    assert q.as_dict()["reason"] == reason


def test_snapshot_crop_clips_and_shrinks() -> None:
    img = np.zeros((480, 640, 3), np.uint8)
    crop = snapshot_crop(img, np.array([600, 440, 700, 520]), margin=0.5, max_size=32)
    assert crop.shape[2] == 3 and max(crop.shape[:2]) <= 32
    big = snapshot_crop(img, np.array([100, 100, 200, 220]), margin=0.25, max_size=1000)
    assert big.shape[:2] == (180, 150)
