"""Motion gate on synthetic frames: still scenes are skipped, motion runs the detector, zones and masks count."""

from __future__ import annotations

import numpy as np

from edgecam.config import MotionConfig
from edgecam.motion import MotionGate, watch_mask

H, W = 240, 320


def scene(square_at: int | None = None) -> np.ndarray:
    """A textured still background, with a bright 40x40 square at x = square_at when given."""
    rng = np.random.default_rng(0)
    img = np.repeat(rng.integers(40, 80, (H, W, 1), dtype=np.uint8), 3, axis=2)
    if square_at is not None:
        img[100:140, square_at:square_at + 40] = 230
    return img


def gate(**kw: object) -> MotionGate:
    defaults: dict[str, object] = {"force_every": 0, "hold_frames": 0}
    return MotionGate(MotionConfig(**{**defaults, **kw}))


def test_first_frame_runs_then_still_frames_are_skipped() -> None:
    g = gate()
    assert g(scene()).reason == "first"
    results = [g(scene()) for _ in range(20)]
    assert not any(r.run for r in results)
    assert g.stats.frames == 21 and g.stats.skipped == 20


def test_moving_square_runs_the_detector() -> None:
    g = gate()
    g(scene())
    r = g(scene(square_at=50))
    assert r.run and r.reason == "motion" and r.fraction > 0.01


def test_sensor_noise_below_threshold_is_still() -> None:
    g = gate()
    g(scene())
    noisy = np.clip(scene().astype(int) + np.random.default_rng(1).integers(-6, 7, (H, W, 3)), 0, 255)
    assert not g(noisy.astype(np.uint8)).run


def test_forced_run_every_n_frames() -> None:
    g = gate(force_every=5)
    runs = [g(scene()).run for _ in range(21)]
    assert [i for i, r in enumerate(runs) if r] == [0, 5, 10, 15, 20]
    assert g.stats.forced == 4


def test_hold_frames_after_motion() -> None:
    g = gate(hold_frames=3)
    g(scene())
    g(scene(square_at=50))
    g(scene(square_at=50))  # background still differs here: motion
    reasons = [g(scene(square_at=50)).reason for _ in range(30)]
    assert "hold" in reasons and reasons[-1] == "still"
    last_motion = max(i for i, r in enumerate(reasons) if r == "motion")
    assert reasons[last_motion + 1:last_motion + 4] == ["hold"] * 3


def test_mask_hides_motion() -> None:
    g = gate(masks=[[[40, 80], [110, 80], [110, 160], [40, 160]]])
    g(scene())
    assert not g(scene(square_at=50)).run
    assert g(scene(square_at=200)).run


def test_zone_limits_where_motion_counts() -> None:
    g = gate(zones=[[[180, 0], [320, 0], [320, 240], [180, 240]]])
    g(scene())
    assert not g(scene(square_at=50)).run
    assert g(scene(square_at=220)).run


def test_disabled_gate_always_runs() -> None:
    g = gate(enabled=False)
    assert all(g(scene()).run for _ in range(5))
    assert g.stats.skipped == 0


def test_frame_size_change_resets_background() -> None:
    g = gate()
    g(scene())
    r = g(np.zeros((120, 160, 3), np.uint8))
    assert r.run and r.reason == "first"


def test_watch_mask_scales_polygons() -> None:
    m = watch_mask((320, 240), (160, 120), zones=[[[0, 0], [160, 0], [160, 240], [0, 240]]], masks=[])
    assert m[:, :70].all() and not m[:, 90:].any()
