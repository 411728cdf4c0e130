"""Detector training data beyond WebFaces: fetched sets, YuNet-labelled folders, weighted sources, run configs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch", reason="torch is a training extra (pip install -e '.[train]')")
YUNET = Path(__file__).resolve().parents[2] / "shared/models/anchors/face_detection_yunet_2023mar_int8bq.onnx"


def grace_hopper() -> np.ndarray:
    import matplotlib.cbook as cbook

    return cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def test_stage_copies_a_set_and_records_its_source(tmp_path: Path) -> None:
    from training import fetched

    repo = tmp_path / "mirror" / "someone+faces" / "work"
    (repo / "imgs" / "sub").mkdir(parents=True)
    for name in ("a_jpg.rf.1.jpg", "a_jpg.rf.2.jpg", "b_jpg.rf.3.jpg", "sub/c.png", "notes.txt"):
        (repo / "imgs" / name).write_bytes(b"x")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "images"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "mirror" / "someone+faces" / "repo").symlink_to(repo / ".git")
    fetched.SETS["t"] = fetched.FetchedSet("someone/faces", "imgs", keep=fetched._one_per_original)
    try:
        out = fetched.stage("t", tmp_path / "mirror", tmp_path / "data")
    finally:
        del fetched.SETS["t"]
    assert sorted(p.name for p in out.iterdir()) == ["SOURCE.json", "a_jpg.rf.1.jpg", "b_jpg.rf.3.jpg", "sub__c.png"]
    src = json.loads((out / "SOURCE.json").read_text())
    assert src["repository"] == "someone/faces" and src["commit"] == commit and src["path"] == "imgs"


def test_video_frames_replaces_a_video_by_every_nth_frame(tmp_path: Path) -> None:
    """A video set (LivePortrait's talking heads) is staged as JPEG frames named after the video and frame."""
    from training.fetched import video_frames

    face = cv2.resize(grace_hopper(), (160, 208))
    video = tmp_path / "d0.mp4"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25, (160, 208))
    for k in range(10):
        w.write(np.roll(face, 3 * k, axis=1))
    w.release()
    video_frames(video, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d0__f00000.jpg", "d0__f00004.jpg", "d0__f00008.jpg"]
    assert cv2.imread(str(tmp_path / "d0__f00004.jpg")).shape == (208, 160, 3)
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(RuntimeError, match="bad.mp4"):
        video_frames(tmp_path / "bad.mp4", 4)


def test_stage_without_a_snapshot_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from training import fetched

    with pytest.raises(SystemExit) as e:
        fetched.main(["--set", "worksite", "--mirror", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fetch tool" in err


@pytest.mark.parametrize("flag", ["--turned-from", "--celeba-identities"])
def test_scenes_missing_file_is_one_line_exit_2(flag: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from training.detector import scenes

    with pytest.raises(SystemExit) as e:
        scenes.main(["--folder", str(tmp_path), flag, str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"{flag} {tmp_path / 'nope.txt'}" in err[-1] and not (tmp_path / "o.json").exists()


@pytest.mark.shared
@pytest.mark.skipif(not YUNET.is_file(), reason=f"{YUNET} absent (shared reference models not mounted)")
def test_label_folder_finds_upright_rolled_and_filling_faces(tmp_path: Path) -> None:
    from training.detector.scenes import label_folder, load_folder

    img = grace_hopper()
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 40, 1.0)
    cv2.imwrite(str(tmp_path / "upright.jpg"), cv2.resize(img, None, fx=0.5, fy=0.5))
    cv2.imwrite(str(tmp_path / "rolled.jpg"), cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REPLICATE))
    cv2.imwrite(str(tmp_path / "close.jpg"), img[150:420, 140:380])  # the face fills the photo
    cv2.imwrite(str(tmp_path / "empty.png"), np.full((200, 300, 3), 90, np.uint8))
    spec = label_folder(tmp_path, max_side=300, roll=30, workers=1, pad=True, yunet=str(YUNET))
    faces = {k: len(v["boxes"]) for k, v in spec["images"].items()}
    assert faces == {"close.jpg": 1, "empty.png": 0, "rolled.jpg": 1, "upright.jpg": 1}, spec
    # labels are in the stored (long side 300) image's pixels: the rolled face's landmarks lie inside it
    lm = np.array(spec["images"]["rolled.jpg"]["landmarks"]).reshape(4, 2)
    assert np.all((lm > 0) & (lm < 300))
    (tmp_path / "labels.json").write_text(json.dumps(spec))
    samples = load_folder(tmp_path / "labels.json", tmp_path / "cache", face_score=0.0)
    cached = load_folder(tmp_path / "labels.json", tmp_path / "cache", face_score=1.1)
    assert [len(s.boxes) for s in samples] == [1, 0, 1, 1] and max(samples[0].image.shape[:2]) <= 300
    assert [len(s.boxes) for s in cached] == [0, 0, 0, 0] and len(cached[0].ignore) >= 1  # strict cut: ignored
    np.testing.assert_array_equal(cached[2].image, samples[2].image)


def test_sample_pool_picks_sources_by_weight() -> None:
    from training.detector.augment import SamplePool
    from training.detector.data import empty_sample

    a = [empty_sample(np.zeros((4, 4, 2), np.uint8))]
    b = [empty_sample(np.ones((4, 4, 2), np.uint8)) for _ in range(50)]
    pool = SamplePool([a, b, []], [0.8, 0.2, 5.0])  # an empty source is skipped, whatever its weight
    rng = np.random.default_rng(0)
    share_a = np.mean([pool.pick(rng).image[0, 0, 0] == 0 for _ in range(2000)])
    assert 0.76 < share_a < 0.84


def test_run_config_file_sets_defaults_and_flags_override(tmp_path: Path) -> None:
    from training.detector.train import parse_config

    path = tmp_path / "run.yaml"
    path.write_text("iters: 123\nextra: a.json:0.5\naug:\n  roll_p: 0.25\n  size: 96\n")
    cfg = parse_config(["--config", str(path), "--aug.size", "128"])
    assert cfg.iters == 123 and cfg.extra == "a.json:0.5" and cfg.run_config == str(path)
    assert cfg.aug.roll_p == 0.25 and cfg.aug.size == 128


def test_shipped_run_config_parses() -> None:
    from training.detector.train import parse_config

    cfg = parse_config(["--config", "training/detector/configs/wild.yaml"])
    assert cfg.aug.roll_max == 45.0 and len(cfg.extra.split(",")) == 6
