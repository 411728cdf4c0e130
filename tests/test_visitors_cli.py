"""``edgecam visitors list|show|name|forget`` against a store in a state folder, through the real CLI entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgecam.cli import main
from edgecam.recognize import Gallery
from edgecam.visitors import STORE_FILE, VisitorStore

DIM = 16
SHA = "c" * 64


def unit(seed: int, k: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=DIM)
    e = base[None] + 0.1 * rng.normal(size=(k, DIM))
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def state(tmp_path: Path) -> Path:
    s = VisitorStore(tmp_path / STORE_FILE, SHA, DIM, threshold=0.6, fsync=False)
    s.record(unit(1), "door", b"\xff\xd8crop-one", 1.0, now=1_700_000_000)
    s.record(unit(2), "garden", b"\xff\xd8crop-two", 1.0, now=1_700_000_100)
    s.record(unit(1)[::-1], "garden", None, 0.0, now=1_700_000_200)
    s.close()
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["visitors", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_and_show(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "--state-dir", str(state))
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("visitor-1 ") and "2 visits" in lines[0] and "door,garden" in lines[0]
    assert lines[1].startswith("visitor-2 ") and lines[-1].startswith("2 visitors")
    code, out, _ = run(capsys, "list", "--json", "--state-dir", str(state))
    doc = json.loads(out)
    assert [v["id"] for v in doc["visitors"]] == ["visitor-1", "visitor-2"] and doc["visitors"][0]["visits"] == 2
    crop = state / "v2.jpg"
    code, out, _ = run(capsys, "show", "visitor-2", "--crop", str(crop), "--state-dir", str(state))
    assert code == 0 and out.startswith("visitor-2 ") and crop.read_bytes() == b"\xff\xd8crop-two"
    code, out, _ = run(capsys, "show", "2", "--json", "--state-dir", str(state))
    assert json.loads(out)["cameras"] == ["garden"]


def test_errors_are_one_line_exit_2(state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, says in ((["show", "visitor-9"], "no visitor-9"), (["show", "bob"], "not a visitor id"),
                       (["forget"], "give visitor ids or --all"),
                       (["forget", "visitor-1", "visitor-9"], "no visitor-9"),
                       (["name", "visitor-1", "alice"], "no gallery"),
                       (["name", "visitor-1", "a/b", "--gallery", str(tmp_path / "g.npz")], "person name")):
        code, out, err = run(capsys, *argv, "--state-dir", str(state))
        assert code == 2 and len(err.splitlines()) == 1 and says in err, (argv, err)
    code, _, err = run(capsys, "show", "visitor-1", "--state-dir", str(tmp_path / "empty"))
    assert code == 2 and "no visitor store" in err
    assert run(capsys, "list", "--state-dir", str(tmp_path / "empty"))[1].strip() == "0 visitors (0.0 KB)"
    assert len(VisitorStore(state / STORE_FILE).visitors()) == 2  # nothing was deleted by the failed forget


def test_name_moves_the_embeddings_into_the_gallery(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gallery = state / "people" / "gallery.npz"
    embeddings = VisitorStore(state / STORE_FILE).embeddings("visitor-1")
    code, out, _ = run(capsys, "name", "visitor-1", "Alice", "--gallery", str(gallery), "--state-dir", str(state))
    assert code == 0 and "visitor-1 is now Alice: 2 embeddings from 2 visits" in out
    g = Gallery.load(gallery, SHA, DIM)
    assert g.counts() == {"Alice": 2} and np.allclose(g.embeddings, embeddings, atol=1e-6)
    # naming another visitor Alice adds to her; the named visitors are gone from the store
    assert run(capsys, "name", "visitor-2", "Alice", "--gallery", str(gallery), "--state-dir", str(state))[0] == 0
    assert Gallery.load(gallery, SHA, DIM).counts() == {"Alice": 3}
    assert VisitorStore(state / STORE_FILE).visitors() == []


def test_name_refuses_a_gallery_of_another_model(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gallery = state / "gallery.npz"
    Gallery("d" * 64, DIM).save(gallery)
    code, _, err = run(capsys, "name", "visitor-1", "Alice", "--gallery", str(gallery), "--state-dir", str(state))
    assert code == 2 and "enrolled with another model" in err
    assert len(VisitorStore(state / STORE_FILE).visitors()) == 2


def test_forget_ids_and_all(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "forget", "visitor-2", "--state-dir", str(state))
    assert code == 0 and out.startswith("forgot visitor-2 (1 visit,")
    raw = b"".join(p.read_bytes() for p in state.iterdir() if p.name.startswith(STORE_FILE))
    assert b"crop-two" not in raw and b"crop-one" in raw
    code, out, _ = run(capsys, "forget", "--all", "--state-dir", str(state))
    assert code == 0 and out.strip() == "forgot 1 visitors"
    raw = b"".join(p.read_bytes() for p in state.iterdir() if p.name.startswith(STORE_FILE))
    assert b"crop-one" not in raw


def test_config_gives_the_folder_and_its_retention(state: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """With --config the store opens with the config's retention, as the daemon's does: visitors seen long ago
    (2023 here) are deleted, not listed."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"state_dir: {state}\nrecognizer: {{}}\nvisitors: {{enabled: true, retention_days: 30}}\n")
    code, out, _ = run(capsys, "list", "--config", str(cfg))
    assert code == 0 and out.strip() == "0 visitors (0.0 KB)"
    assert VisitorStore(state / STORE_FILE).visitors() == []
