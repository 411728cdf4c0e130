"""CLI contract: exit codes and one-line errors (0 ok, 2 bad usage/input, 1 other)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgecam.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgecam", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_subcommand() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("detect", "enroll", "identify", "gallery", "replay", "run", "check-config", "bench"):
        assert cmd in r.stdout


def test_no_command_is_usage_error() -> None:
    assert run_cli().returncode == 2


def test_unknown_command_is_usage_error() -> None:
    r = run_cli("frobnicate")
    assert r.returncode == 2
    assert "frobnicate" in r.stderr


def test_detect_missing_image_is_one_line_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    r = run_cli("detect", str(missing))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert str(missing) in r.stderr and "Traceback" not in r.stderr


def test_detect_text_file_as_image_is_exit_2(tmp_path: Path) -> None:
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    r = run_cli("detect", "--json", str(fake))
    assert r.returncode == 2
    assert "fake.jpg" in r.stderr and "decode" in r.stderr


def test_internal_error_is_exit_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def boom(args: object) -> int:
        raise RuntimeError("kaput")

    monkeypatch.setattr("edgecam.cli.cmd_check_config", boom)
    assert main(["check-config", "x.yaml"]) == 1
    err = capsys.readouterr().err
    assert "internal error" in err and "kaput" in err


def test_credentials_are_masked_in_logs(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from edgecam.logs import setup_logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging("info")
        logging.getLogger("edgecam.test").info("connecting to %s", "mqtts://bob:hunter2@host:8883")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert "hunter2" not in err and "mqtts://bob:***@host:8883" in err
