"""training.recognizer.calibrate: threshold rules on made-up scores, and one real run on a tiny subset of ../shared
(thresholds written into a copy of the shipped recognizer folder, which the runtime then loads)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="matplotlib is a training extra (pip install -e '.[train]')")
pytest.importorskip("tqdm", reason="tqdm is a training extra (pip install -e '.[train]')")
pytest.importorskip("torch", reason="torch is a training extra (pip install -e '.[train]')")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
NEEDED = [SHARED / "data/identity/lfw", SHARED / "data/identity/lfw_few",
          SHARED / "models/anchors/face_recognition_sface_2021dec_int8bq_ort.onnx"]
MISSING = [p for p in NEEDED if not p.exists()]
SKIP_REASON = f"{MISSING[0] if MISSING else ''} absent (../shared not mounted)"


def test_threshold_at_lets_at_most_the_target_share_of_impostors_through() -> None:
    from training.recognizer.openset import rate, threshold_at

    scores = np.random.default_rng(0).normal(0.2, 0.1, 1000)
    for fpir in (0.0, 0.01, 0.05, 0.5):
        t = threshold_at(scores, fpir)
        assert rate(scores, t) <= fpir
        assert rate(scores, t - 2e-4) > fpir or t - 2e-4 < scores.min()  # and it is the smallest such (1e-4 grid)
    assert threshold_at(np.array([0.3, 0.3, 0.3]), 0.4) > 0.3  # ties: none may pass when one may


def test_each_calibration_population_is_held_to_the_target_by_the_higher_threshold() -> None:
    from training.recognizer.calibrate import CalibConfig, population_thresholds
    from training.recognizer.openset import OpenSet, rate

    rng = np.random.default_rng(1)
    empty = np.zeros(0)

    def impostors(name: str, scores: np.ndarray) -> OpenSet:
        return OpenSet(40, empty, empty, empty, {name: scores})

    web, low_res = rng.normal(0.2, 0.1, 2000), rng.normal(0.3, 0.1, 500)  # low-resolution strangers score higher
    sets = {"calib": impostors("strangers_calib", web)}
    alone = population_thresholds(sets, CalibConfig())
    assert set(alone) == {"lfw_few"} and rate(low_res, alone["lfw_few"]["known"]) > 0.03  # web-only misses them
    sets["celeba_calib"] = impostors("celeba_people", low_res)
    pops = population_thresholds(sets, CalibConfig())
    assert pops["lfw_few"] == alone["lfw_few"] and pops["celeba"]["impostor_probes"] == 500
    known = max(p["known"] for p in pops.values())
    assert known == pops["celeba"]["known"] and rate(low_res, known) <= 0.01 and rate(web, known) <= 0.01


def test_runtime_rule_names_nobody_until_a_good_crop_where_the_rule_before_announced_a_stranger() -> None:
    from edgecam.config import Config, RecognizerConfig
    from edgecam.track import Vote
    from training.recognizer.tracks import count_rule, runtime_rule

    rule = runtime_rule(Config(recognizer=RecognizerConfig()))
    bad = [Vote("unknown", "unknown", 0.2, weight=0.05)] * 3
    good = [Vote("alice", "known", 0.7, weight=1.0)] * 2
    assert rule([])[1] == "uncertain" and count_rule([])[1] == "unknown"  # confirmed before any crop passed
    assert rule(bad)[1] == "uncertain"  # three blurred far crops: no verdict yet
    assert count_rule(bad)[1] == "unknown"  # one vote per crop announces a stranger
    assert rule(bad + good)[:2] == ("alice", "known")
    assert count_rule(bad + good)[0] == "unknown"


@pytest.mark.shared
@pytest.mark.skipif(bool(MISSING), reason=SKIP_REASON)
def test_calibrate_tiny_subset_writes_thresholds_the_runtime_uses(tmp_path: Path) -> None:
    from edgecam.recognize import EmbeddingRecognizer, make_recognizer
    from training.recognizer.calibrate import main

    model = tmp_path / "face_recognizer"
    shutil.copytree(REPO / "edgecam/models/face_recognizer", model)
    shipped = json.loads((model / "model.json").read_text())["output"]["thresholds"]
    r = main(["--config", str(REPO / "training/recognizer/configs/calibrate.yaml"), "--recognizer", str(model),
              "--out", str(tmp_path / "out"), "--cache", "false", "--lfw_people", "20", "--lfw_photos", "6",
              "--strangers", "300", "--teacher_strangers", "60", "--celeba_people", "0", "--celeba_calib_people", "0",
              "--track_repeats", "1",
              "--stranger_tracks", "4", "--teacher_tracks", "3", "--track.frames", "8"])
    saved = json.loads((tmp_path / "out/calibrate.json").read_text())
    assert saved["seconds"] == r["seconds"] and (tmp_path / "out/fpir.png").stat().st_size > 10_000

    # 1. thresholds: before = what the folder had; after = the calibration strangers' 1 % / 5 % points
    s, t = saved["models"]["student"], saved["models"]["teacher"]
    before = shipped.get("provisional", shipped)  # ship.py's thresholds, kept once calibrate replaced them
    assert s["thresholds_before"] == {"known": before["known"], "unknown": before["unknown"]}
    for m in (s, t):
        assert 0 < m["thresholds"]["unknown"] < m["thresholds"]["known"] < 1
        assert m["after"]["calib_gallery"]["fpir_strangers_calib"] <= 0.01
        assert m["after"]["calib_gallery"]["not_unknown_strangers_calib"] <= 0.05
    assert s["strangers_embedded"]["calibration"] > 100 and t["strangers_embedded"]["calibration"] == 60
    assert t["check_vs_int8bq_file_min_cosine"] > 0.999

    # 2. held-out figures are rates; the teacher is the better embedder
    for m in (s, t):
        g = m["after"]["eval_gallery"]
        assert all(0 <= g[k] <= 1 for k in ("fpir_eval_people", "fpir_strangers_heldout", "dir", "wrong_person"))
    assert t["verification"]["lfw_acc"] > 0.95 and s["verification"]["lfw_acc"] > 0.75
    assert t["verification"]["lfw_acc"] >= s["verification"]["lfw_acc"]

    # 3. tracks: every pass scored; the replay of the runtime rule mostly reproduces the pipeline's events
    tr = saved["tracks"]
    assert tr["student"]["runtime"]["genuine"]["tracks"] == 10 and tr["teacher"]["runtime"]
    assert tr["student"]["replay_matches_pipeline"] >= 0.7
    gen = tr["student"]["runtime"]["genuine"]
    assert gen["named_right"] + gen["named_wrong"] + gen["not_named"] == pytest.approx(1.0, abs=1e-3)

    # 4. the folder: thresholds and figures in model.json, the card section, and the runtime loads them
    mj = json.loads((model / "model.json").read_text())
    assert mj["output"]["thresholds"]["known"] == s["thresholds"]["known"]
    assert mj["output"]["thresholds"]["command"].startswith("python -m training.recognizer.calibrate --config")
    assert mj["output"]["thresholds"]["provisional"] == s["thresholds_before"]
    assert mj["metrics"]["calibration"]["held_out_at_thresholds"]["student"]["known"] == s["thresholds"]["known"]
    assert "shipped" in mj["metrics"]  # report.py's figures stay
    card = (model / "README.md").read_text()
    assert "| FPIR, held-out strangers vs LFW eval gallery" in card and (model / "calibration.png").exists()
    rec = EmbeddingRecognizer(model)
    assert (rec.t_known, rec.t_unknown) == (s["thresholds"]["known"], s["thresholds"]["unknown"])
    stricter = make_recognizer("identity", model, threshold=0.6)  # a deployment's recognizer.threshold
    assert stricter.t_known == 0.6  # type: ignore[attr-defined]
    assert stricter.t_known - stricter.t_unknown == pytest.approx(rec.t_known - rec.t_unknown)  # type: ignore[attr-defined]
