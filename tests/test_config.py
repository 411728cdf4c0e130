"""Config: YAML -> pydantic models; each kind of mistake gives one line naming file, key path, value, problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgecam import MODELS_DIR
from edgecam.config import (
    Config,
    ConfigError,
    OpenCVSourceConfig,
    PiCamera2SourceConfig,
    ReplaySourceConfig,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "configs" / "example.yaml"


def problems(data: object, tmp_path: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "cfg.yaml", tmp_path)
    return info.value.problems


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_empty_config_gives_defaults() -> None:
    cfg = parse_config(None)
    assert isinstance(cfg, Config)
    assert isinstance(cfg.camera.source, OpenCVSourceConfig)
    assert cfg.camera.name == "camera" and cfg.recognizer is None and cfg.motion.enabled


def test_source_subclass_chosen_by_type(tmp_path: Path) -> None:
    clip = tmp_path / "a.mp4"
    clip.write_bytes(b"x")
    cfg = parse_config({"camera": {"source": {"type": "replay", "path": "a.mp4", "speed": "realtime"}}}, "c", tmp_path)
    assert isinstance(cfg.camera.source, ReplaySourceConfig)
    assert cfg.camera.source.path == tmp_path / "a.mp4"  # relative to the config file's folder
    cfg = parse_config({"camera": {"source": {"type": "picamera2", "width": 640, "height": 480}}})
    assert isinstance(cfg.camera.source, PiCamera2SourceConfig) and cfg.camera.source.width == 640


def test_unknown_key_is_named_with_its_path() -> None:
    [line] = problems({"motion": {"treshold": 10}})
    assert line == "cfg.yaml: motion.treshold: 10: Extra inputs are not permitted"


def test_unknown_section() -> None:
    [line] = problems({"motoin": {}})
    assert line.startswith("cfg.yaml: motoin: ")


def test_wrong_type() -> None:
    [line] = problems({"tracker": {"min_hits": "three"}})
    assert line.startswith("cfg.yaml: tracker.min_hits: 'three': ") and "integer" in line


def test_out_of_range() -> None:
    [line] = problems({"detector": {"score_threshold": 1.5}})
    assert line.startswith("cfg.yaml: detector.score_threshold: 1.5: ") and "less than 1" in line


def test_every_problem_is_reported() -> None:
    lines = problems({"motion": {"threshold": 0, "width": 5}, "tracker": {"max_age": -1}, "bogus": 1})
    keys = {line.split(": ")[1] for line in lines}
    assert keys == {"motion.threshold", "motion.width", "tracker.max_age", "bogus"}


def test_bad_source_type() -> None:
    [line] = problems({"camera": {"source": {"type": "webcam"}}})
    assert line.startswith("cfg.yaml: camera.source.type: 'webcam': must be one of")
    assert "opencv" in line and "picamera2" in line and "replay" in line


def test_missing_source_type() -> None:
    [line] = problems({"camera": {"source": {"device": 0}}})
    assert line.startswith("cfg.yaml: camera.source.type: (missing): ")


def test_missing_file_it_points_to(tmp_path: Path) -> None:
    [line] = problems({"camera": {"source": {"type": "replay", "path": "gone.mp4"}}}, tmp_path)
    assert line.startswith("cfg.yaml: camera.source.path: 'gone.mp4': file not found")


def test_missing_model_folder() -> None:
    [line] = problems({"detector": {"model": "no_such_model"}})
    assert line.startswith("cfg.yaml: detector.model: 'no_such_model': ") and "no such model folder" in line


def test_contradictions() -> None:
    [line] = problems({"camera": {"source": {"type": "opencv", "reconnect_initial_s": 10, "reconnect_max_s": 1}}})
    assert line.startswith("cfg.yaml: camera.source: ") and "reconnect_max_s" in line


def test_classifier_takes_no_gallery(tmp_path: Path) -> None:
    (tmp_path / "g.npz").write_bytes(b"x")
    [line] = problems({"recognizer": {"type": "classifier", "gallery": "g.npz", "model": str(tmp_path)}}, tmp_path)
    assert "recognizer" in line and "no gallery" in line


def test_polygon_needs_three_points() -> None:
    [line] = problems({"motion": {"zones": [[[0, 0], [10, 0]]]}})
    assert line.startswith("cfg.yaml: motion.zones.0: ") and "at least 3" in line


def test_bad_camera_name() -> None:
    [line] = problems({"camera": {"name": "front door/#"}})
    assert line.startswith("cfg.yaml: camera.name: 'front door/#': ")


def test_root_not_a_mapping() -> None:
    [line] = problems([1, 2])
    assert line == "cfg.yaml: (root): [1, 2]: must be a mapping of sections"


def test_env_substitution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAM_PW", "s3cret")
    cfg = parse_config({"camera": {"source": {"type": "opencv", "device": "rtsp://u:${CAM_PW}@cam/stream"}}})
    assert isinstance(cfg.camera.source, OpenCVSourceConfig)
    assert cfg.camera.source.device == "rtsp://u:s3cret@cam/stream"


def test_unset_env_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAM_PW", raising=False)
    lines = problems({"camera": {"source": {"type": "opencv", "device": "rtsp://u:${CAM_PW}@cam"}}})
    assert lines == ["cfg.yaml: camera.source.device: environment variable CAM_PW is not set"]


def test_secrets_are_masked_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAM_PW", "s3cret")
    lines = problems({"camera": {"source": {"type": "opencv", "device": "rtsp://u:${CAM_PW}@cam", "fps": 0}},
                      "password": "hunter2"})
    text = "\n".join(lines)
    assert "s3cret" not in text and "hunter2" not in text and "***" in text


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    p = write(tmp_path, "camera:\n  name: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    [line] = info.value.problems
    assert line.startswith(f"{p}: line ") and "invalid YAML" in line


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")


def test_binary_config_file(tmp_path: Path) -> None:
    p = tmp_path / "cfg.yaml"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(p)


def test_state_dir_must_not_be_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    [line] = problems({"state_dir": "f"}, tmp_path)
    assert line.startswith("cfg.yaml: state_dir: ") and "not a folder" in line


def test_example_config_round_trips() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    assert set(data) <= set(Config.model_fields)


@pytest.mark.skipif(not (MODELS_DIR / "face_detector" / "model.json").exists(), reason="detector not shipped yet")
def test_example_config_passes_check_config() -> None:
    r = subprocess.run([sys.executable, "-m", "edgecam", "check-config", str(EXAMPLE)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{EXAMPLE}: ok"


def test_check_config_cli_prints_every_problem_and_exits_2(tmp_path: Path) -> None:
    p = write(tmp_path, "motion:\n  threshold: 0\ntracker:\n  min_hits: x\n")
    r = subprocess.run([sys.executable, "-m", "edgecam", "check-config", str(p)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{p}: ") for line in lines)
    assert "Traceback" not in r.stderr


def test_opencv_file_device_is_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"x")
    cfg = parse_config({"camera": {"source": {"type": "opencv", "device": "clip.mp4"}}}, "c", tmp_path)
    assert cfg.camera.source.device == str(tmp_path / "clip.mp4")  # type: ignore[union-attr]
    cfg = parse_config({"camera": {"source": {"type": "opencv", "device": "rtsp://cam/stream"}}}, "c", tmp_path)
    assert cfg.camera.source.device == "rtsp://cam/stream"  # type: ignore[union-attr]


def test_overrides_camera_and_mqtt() -> None:
    from edgecam.config import apply_overrides

    cfg = apply_overrides(parse_config({}), mqtt_url="mqtt://bob@broker.lan:1884", camera="porch")
    assert cfg.camera.name == "porch" and cfg.mqtt is not None
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.username) == ("broker.lan", 1884, "bob")
    with pytest.raises(ConfigError, match="--camera"):
        apply_overrides(cfg, camera="bad name")


@pytest.mark.skipif(not (MODELS_DIR / "face_recognizer" / "model.json").exists(), reason="recognizer not shipped yet")
def test_demo_config_passes() -> None:
    cfg = load_config(REPO / "deploy" / "configs" / "demo.yaml")
    assert cfg.recognizer is not None and cfg.recognizer.gallery is None


def test_example_config_spells_out_the_mqtt_section_with_its_defaults() -> None:
    from edgecam.mqtt.config import MqttConfig

    data = yaml.safe_load(EXAMPLE.read_text())
    assert set(Config.model_fields) - set(data) == {"recognizer"}  # every section but the commented-out one
    mqtt = data["mqtt"]
    defaults = MqttConfig(host="x")
    assert mqtt["host"] == "127.0.0.1"
    for key, value in mqtt.items():
        if key != "host":
            assert value == getattr(defaults, key), key
    missing = set(MqttConfig.model_fields) - set(mqtt)  # shown commented out: optional, no default value
    assert missing == {"username", "password_file", "tls", "client_id"}


def test_run_config_help_says_it_is_required() -> None:
    r = subprocess.run([sys.executable, "-m", "edgecam", "run", "--help"], capture_output=True, text=True,
                       timeout=60)
    text = " ".join(r.stdout.split())
    assert "--config CONFIG YAML config file (required)" in text and "built-in defaults" not in text
    r = subprocess.run([sys.executable, "-m", "edgecam", "replay", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert "built-in defaults" in " ".join(r.stdout.split())
