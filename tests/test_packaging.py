"""Reproducible installs: the constraints file `make` installs with, and the package metadata setuptools builds.

A fresh machine must get the versions the tests were run with (constraints/python<X.Y>.txt, written by
`make lock`), and building edgecam must not print setuptools' deprecation banner.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]
PYVER = f"{sys.version_info[0]}.{sys.version_info[1]}"
LOCK = REPO / "constraints" / f"python{PYVER}.txt"
needs_lock = pytest.mark.skipif(not LOCK.exists(), reason=f"no lock for Python {PYVER} ('make lock' writes one)")


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pins() -> dict[str, Version]:
    """``name==version`` lines of the lock, by canonical name."""
    out = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{LOCK.name}: '{line}' is not a name==version pin"
            out[canonicalize_name(name)] = Version(version)
    return out


def test_every_python_has_a_lock_or_says_so() -> None:
    """At least the Python the lock was made with is pinned; the Makefile warns for any other."""
    assert sorted(p.name for p in (REPO / "constraints").glob("python*.txt")), "no constraints/python*.txt"
    assert "installing unpinned versions" in (REPO / "Makefile").read_text()


@needs_lock
def test_lock_pins_every_declared_dependency_within_its_range() -> None:
    project = pyproject()["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    for extra in ("dev", "train"):
        declared += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pinned = pins()
    for req in declared:
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is declared in pyproject.toml but not pinned in {LOCK.name}"
        assert req.specifier.contains(pinned[name], prereleases=True), \
            f"{LOCK.name} pins {req.name}=={pinned[name]}, outside pyproject's '{req.specifier}'"
    build = [Requirement(r) for r in pyproject()["build-system"]["requires"]]
    for req in build:  # the build backend is pinned too (make installs it into the venv)
        assert req.specifier.contains(pinned[canonicalize_name(req.name)])


@needs_lock
def test_this_environment_has_the_pinned_versions() -> None:
    """`make setup` / `make test` installed with the lock: every pinned package has its pinned version."""
    wrong = []
    for name, version in pins().items():
        try:
            have = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue  # a train-only package in a dev-only venv
        if Version(have.public) != version:
            wrong.append(f"{name} {have} (lock: {version})")
    assert not wrong, f"not the versions of {LOCK.name} (run 'make setup-train'): {', '.join(wrong)}"


@needs_lock
def test_make_installs_with_the_lock() -> None:
    r = subprocess.run(["make", "-n", "-B", "setup-train"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    installs = [line for line in r.stdout.splitlines() if "pip install" in line]
    assert len(installs) == 3  # pip itself, edgecam[dev], edgecam[dev,train]
    assert all(f"--constraint constraints/python{PYVER}.txt" in line for line in installs), installs


def test_metadata_builds_without_a_deprecation_banner(tmp_path: Path) -> None:
    """The SPDX string form of project.license (setuptools >= 77, which build-system requires)."""
    setuptools_req = next(Requirement(r) for r in pyproject()["build-system"]["requires"]
                          if r.startswith("setuptools"))
    assert setuptools_req.specifier.contains("77.0.0") and not setuptools_req.specifier.contains("76.1.0")
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "deprecat" not in (r.stdout + r.stderr).lower(), r.stderr[-2000:]
    meta = (tmp_path / r.stdout.strip().splitlines()[-1] / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in meta.splitlines()
