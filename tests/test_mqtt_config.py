"""MqttConfig validation, --mqtt URLs, secrets kept out of logs, command payload validation (no broker)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edgecam.mqtt.config import (
    MqttConfig,
    MqttSecretError,
    MqttUrlError,
    SecretFilter,
    config_from_url,
    mask_secrets,
    parse_mqtt_url,
    register_secret,
)
from edgecam.mqtt.topics import CommandError, Topics, device_id, discovery_topic, parse_command


def errors(**kw: object) -> str:
    with pytest.raises(ValidationError) as e:
        MqttConfig.model_validate(kw)
    return str(e.value)


def test_defaults() -> None:
    cfg = MqttConfig(host="broker.lan")
    assert (cfg.port, cfg.prefix, cfg.qos, cfg.discovery_prefix, cfg.allow_enroll) == (
        1883,
        "edgecam",
        1,
        "homeassistant",
        False,
    )
    assert cfg.broker_label() == "mqtt://broker.lan:1883"
    assert MqttConfig(host="b", tls={}).port == 8883
    assert MqttConfig(host="b", tls={}, port=1884).port == 1884


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"host": "b", "colour": "red"}, "colour"),
        ({"host": "b", "port": 0}, "port"),
        ({"host": "b", "port": "x"}, "port"),
        ({"host": "mqtt://b"}, "bare host"),
        ({"host": ""}, "host"),
        ({"host": "b", "prefix": "a/#"}, "wildcards"),
        ({"host": "b", "prefix": "/a"}, "leading"),
        ({"host": "b", "qos": 0}, "qos"),
        ({"host": "b", "keepalive": 1}, "keepalive"),
        ({"host": "b", "reconnect_min_s": 10, "reconnect_max_s": 2}, "reconnect_min_s"),
        ({"host": "b", "tls": {"cert": "/etc/hostname"}}, "tls.cert is set but tls.key is not"),
        ({"host": "b", "tls": {"ca": "/no/such/ca.pem"}}, "file not found: /no/such/ca.pem"),
        ({"host": "b", "password_file": "/no/such/pw"}, "file not found"),
        ({"host": "b", "password": "hunter2"}, "password"),  # the password itself never goes in the file
        ({"host": "b", "password_env": "1BAD"}, "password_env"),
    ],
)
def test_config_errors_name_the_problem(kw: dict[str, object], needle: str) -> None:
    assert needle in errors(**kw)


def test_relative_files_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    cfg = MqttConfig.model_validate({"host": "b", "tls": {"ca": "ca.pem"}}, context={"base": tmp_path})
    assert cfg.tls is not None and cfg.tls.ca == tmp_path / "ca.pem"


def test_password_from_env_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret-from-file\nignored\n")
    cfg = MqttConfig(host="b", username="u", password_file=pw)
    monkeypatch.delenv("EDGECAM_MQTT_PASSWORD", raising=False)
    assert cfg.resolve_password() == "s3cret-from-file"
    monkeypatch.setenv("EDGECAM_MQTT_PASSWORD", "s3cret-from-env")
    assert cfg.resolve_password() == "s3cret-from-env"
    assert "s3cret" not in repr(cfg) + cfg.model_dump_json() + cfg.broker_label()
    pw.write_text("\n")
    monkeypatch.delenv("EDGECAM_MQTT_PASSWORD")
    with pytest.raises(MqttSecretError, match="empty"):
        cfg.resolve_password()
    assert MqttConfig(host="b").resolve_password() is None


def test_parse_urls() -> None:
    assert parse_mqtt_url("mqtt://b.lan") == {"host": "b.lan", "port": 1883, "username": None, "tls": False}
    assert parse_mqtt_url("mqtts://cam%40home@b:8884") == {
        "host": "b",
        "port": 8884,
        "username": "cam@home",
        "tls": True,
    }
    assert parse_mqtt_url("mqtt://[::1]:1999/")["host"] == "::1"


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://b", "scheme"),
        ("b:1883", "scheme"),
        ("mqtt://", "no host"),
        ("mqtt://b:99999", "Port out of range"),
        ("mqtt://b:port", "Port"),
        ("mqtt://b/topic", "path"),
        ("mqtt://u:hunter2@b", "no password in the URL"),
    ],
)
def test_bad_urls(url: str, needle: str) -> None:
    with pytest.raises(MqttUrlError, match=needle) as e:
        parse_mqtt_url(url)
    assert "hunter2" not in str(e.value)


def test_url_overrides_keep_the_rest(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    base = MqttConfig(host="old", username="olduser", prefix="home", tls={"ca": tmp_path / "ca.pem"})
    plain = config_from_url("mqtt://new:1999", base)
    assert (plain.host, plain.port, plain.username, plain.prefix, plain.tls) == ("new", 1999, "olduser", "home", None)
    secure = base.with_url("mqtts://me@new")
    assert secure.port == 8883 and secure.username == "me" and secure.tls is not None
    assert secure.tls.ca == tmp_path / "ca.pem"
    assert config_from_url("mqtts://x").tls is not None


def test_secret_filter_masks_urls_and_registered_secrets(caplog: pytest.LogCaptureFixture) -> None:
    register_secret("pa55word-xyz")
    log = logging.getLogger("edgecam.test.secrets")
    caplog.handler.addFilter(SecretFilter())
    with caplog.at_level(logging.INFO):
        log.info("connecting to %s", "mqtts://bob:hunter2@broker:8883")
        log.info("rtsp://admin:admin123@cam/stream and the password pa55word-xyz")
        try:
            raise RuntimeError("failed with pa55word-xyz")
        except RuntimeError:
            log.exception("boom")
    text = caplog.text
    assert "hunter2" not in text and "admin123" not in text and "pa55word-xyz" not in text
    assert "mqtts://bob:***@broker:8883" in text and "rtsp://admin:***@cam" in text
    assert mask_secrets("mqtt://u@b:1") == "mqtt://u@b:1"


def test_parse_command() -> None:
    assert parse_command("detection", b" on ") == b"ON"
    assert parse_command("detection", b"OFF") == b"OFF"
    assert parse_command("snapshot", b"anything") == b""
    assert parse_command("enroll", b'{"name": "Ann-Marie O\'Neil"}', allow_enroll=True) == b"Ann-Marie O'Neil"
    for cmd, payload, allow in [
        ("detection", b"1", False),
        ("detection", b"", False),
        ("snapshot", b"x" * 5000, False),
        ("enroll", b'{"name": "x"}', False),
        ("enroll", b'{"name": "a/b"}', True),
        ("enroll", b'{"name": ""}', True),
        ("enroll", b"\xff", True),
        ("shutdown", b"", True),
    ]:
        with pytest.raises(CommandError):
            parse_command(cmd, payload, allow)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30), st.binary(max_size=2000), st.booleans())
def test_parse_command_never_crashes(command: str, payload: bytes, allow: bool) -> None:
    try:
        value = parse_command(command, payload, allow)
    except CommandError:
        return
    assert isinstance(value, bytes)
    assert command in ("detection", "snapshot", "enroll")


def test_topics_and_ids() -> None:
    t = Topics("edgecam", "front door")
    assert t.events == "edgecam/front door/events" and t.state("face") == "edgecam/front door/face"
    assert t.command_name("edgecam/front door/set/detection") == "detection"
    assert t.command_name("edgecam/other/set/detection") is None
    assert device_id("front door").startswith("edgecam_front_door_")
    assert device_id("door") == "edgecam_door"
    assert discovery_topic("homeassistant", "door") == "homeassistant/device/edgecam_door/config"
    with pytest.raises(ValueError, match="camera name"):
        Topics("edgecam", "a/b")
