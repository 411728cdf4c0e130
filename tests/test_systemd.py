"""systemd/edgecam.service: `systemd-analyze verify` passes, the hardening exposure score stays <= 2.5."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "edgecam.service"
INSTALLED_BIN = "/opt/edgecam/venv/bin/edgecam"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")


def settings() -> dict[str, list[str]]:
    """``Key -> [values]`` of the unit file (all sections)."""
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this interpreter (the installed binary does not exist here)."""
    text = UNIT.read_text()
    assert INSTALLED_BIN in text, "ExecStart changed: update INSTALLED_BIN in this test"
    copy = tmp_path / "edgecam.service"
    copy.write_text(text.replace(INSTALLED_BIN, f"{sys.executable} -m edgecam"))
    return copy


def test_unit_has_the_service_contract() -> None:
    s = settings()
    assert s["Type"] == ["notify"] and s["Restart"] == ["on-failure"] and s["WatchdogSec"]
    assert s["ExecStart"][0].startswith(f"{INSTALLED_BIN} run --config ")
    assert s["User"] == ["edgecam"] and s["SupplementaryGroups"] == ["video"]
    assert s["StateDirectory"] == ["edgecam"] and s["ConfigurationDirectory"] == ["edgecam"]
    assert s["ProtectSystem"] == ["strict"] and s["ProtectHome"] == ["yes"] and s["PrivateTmp"] == ["yes"]
    assert s["NoNewPrivileges"] == ["yes"] and s["DevicePolicy"] == ["closed"]
    assert "char-video4linux rw" in s["DeviceAllow"] and "char-media rw" in s["DeviceAllow"]


@needs_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = runnable_copy(tmp_path)
    proc = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if "edgecam.service" in line]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


@needs_analyze
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    bad = tmp_path / "edgecam.service"
    bad.write_text(UNIT.read_text().replace(INSTALLED_BIN, "/nonexistent/edgecam"))
    proc = subprocess.run([ANALYZE, "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "not executable" in proc.stdout + proc.stderr


@needs_analyze
def test_security_exposure_at_most_2_5(tmp_path: Path) -> None:
    unit = runnable_copy(tmp_path)
    proc = subprocess.run(
        [ANALYZE, "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0 and "offline" in proc.stderr:
        pytest.skip(f"systemd-analyze too old for --offline: {proc.stderr.strip()[:200]}")
    match = re.search(r"Overall exposure level for edgecam\.service:\s*([0-9.]+)", proc.stdout)
    assert match, proc.stdout[-2000:] + proc.stderr
    assert float(match.group(1)) <= 2.5
