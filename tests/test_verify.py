"""edgecam models verify / deploy/verify.py: shipped models pass; tampered files, wrong input specs, missing
manifest keys, model cards and broken graphs are each caught with a line naming the problem."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgecam import MODELS_DIR
from edgecam.tools.verify import check_input_spec, verify_model

REPO = Path(__file__).resolve().parents[1]
DETECTOR = MODELS_DIR / "face_detector"
needs_detector = pytest.mark.skipif(not (DETECTOR / "model.json").exists(),
                                    reason="the face detector is not shipped yet")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def copy_detector(tmp_path: Path, **manifest_changes: object) -> Path:
    folder = tmp_path / "det"
    shutil.copytree(DETECTOR, folder)
    if manifest_changes:
        m = json.loads((folder / "model.json").read_text())
        for key, value in manifest_changes.items():
            if value is None:
                m.pop(key)
            else:
                m[key] = value
        (folder / "model.json").write_text(json.dumps(m))
    return folder


@needs_detector
def test_every_shipped_model_verifies() -> None:
    """What CI guarantees about edgecam/models: the same command a user runs after installing."""
    r = run("-m", "edgecam", "models", "verify", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] and {"face_detector"} <= {m["model"] for m in report["models"]}
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]
    det = next(m for m in report["models"] if m["model"] == "face_detector")
    assert det["kind"] == "detector" and det["outputs"][0][1] == 13 and det["forward_ms"] > 0
    assert det["macs"] == 23123200  # 320x240 padded to 320x256, as the model card says


@needs_detector
def test_deploy_verify_script_table(tmp_path: Path) -> None:
    r = run("deploy/verify.py", str(DETECTOR))
    assert r.returncode == 0, r.stderr
    assert "face_detector" in r.stdout and " ok" in r.stdout


@needs_detector
def test_tampered_onnx_is_caught(tmp_path: Path) -> None:
    folder = copy_detector(tmp_path)
    data = bytearray((folder / "face_detector.onnx").read_bytes())
    data[-100] ^= 0xFF
    (folder / "face_detector.onnx").write_bytes(bytes(data))
    r = run("deploy/verify.py", str(folder))
    assert r.returncode == 2 and "sha256" in r.stdout and "does not match" in r.stdout
    assert "1 of 1 models failed verification: det" in r.stderr and "Traceback" not in r.stderr


@needs_detector
@pytest.mark.parametrize(("change", "problem"), [
    ({"input": {"name": "input", "layout": "NCHW", "color": "rgb", "size": None, "mean": [128.0], "std": [64.0],
                "pad_multiple": 32, "max_side": 640}}, "graph input has 1 channels, input.color rgb gives 3"),
    ({"input": {"name": "pixels", "layout": "NCHW", "color": "gray", "size": None, "mean": [128.0], "std": [64.0],
                "pad_multiple": 32, "max_side": 640}}, "input.name 'pixels' but the graph's input is 'input'"),
    ({"input": {"name": "input", "layout": "NCHW", "color": "gray", "size": None, "mean": [128.0], "std": [0.0],
                "pad_multiple": 32, "max_side": 640}}, "input.std has a zero"),
    ({"license": None}, "lacks key 'license'"),
    ({"metrics": {"ap": 0.9}}, "which command measured them"),
    ({"output": {"kind": "centernet", "stride": 4, "score_threshold": 0.5, "nms_threshold": 0.4,
                 "peak_kernel": 3, "top_k": 10, "name": "out"}, "labels": ["face"]}, ""),
])
def test_manifest_problems_are_named(tmp_path: Path, change: dict, problem: str) -> None:
    v = verify_model(copy_detector(tmp_path, **change))
    if problem:
        assert not v.ok and any(problem in p for p in v.problems), v.problems
    else:
        assert v.ok, v.problems  # a manifest change that still fits the graph passes


@needs_detector
def test_output_that_does_not_fit_the_kind_is_caught(tmp_path: Path) -> None:
    folder = copy_detector(tmp_path, output={"type": "embedding", "dim": 128, "thresholds": {"known": 1, "unknown": 0}},
                           input={"name": "input", "layout": "NCHW", "color": "gray", "size": [64, 64],
                                  "mean": [128.0], "std": [64.0]})
    v = verify_model(folder)
    assert not v.ok and any("outputs per crop" in p or "cannot run" in p for p in v.problems), v.problems


@needs_detector
def test_model_card_and_its_images(tmp_path: Path) -> None:
    folder = copy_detector(tmp_path)
    (folder / "pr_curve.png").unlink()
    v = verify_model(folder)
    assert any("pr_curve.png, which does not exist" in p for p in v.problems), v.problems
    (folder / "README.md").unlink()
    assert "no model card (README.md)" in verify_model(folder).problems


def test_input_spec_rules() -> None:
    good = {"layout": "NCHW", "color": "rgb", "size": [112, 112], "mean": [127.5] * 3, "std": [128.0]}
    assert check_input_spec(good) == []
    assert "input.layout 'CHW'" in check_input_spec({**good, "layout": "CHW"})[0]
    assert "input.color 'yuv'" in check_input_spec({**good, "color": "yuv"})[0]
    assert "input.size [112]" in check_input_spec({**good, "size": [112]})[0]
    assert "want 1 or 3 values" in check_input_spec({**good, "mean": [1.0, 2.0]})[0]


def test_missing_model_folder_is_exit_2(tmp_path: Path) -> None:
    r = run("-m", "edgecam", "models", "verify", str(tmp_path / "nope"))
    assert r.returncode == 2 and "no such model folder" in r.stdout and "Traceback" not in r.stderr
