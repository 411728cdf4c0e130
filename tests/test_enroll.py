"""Enrollment and identification as a user meets them: real photos, the shipped models, the real CLI.

Two real people: matplotlib's public-domain Grace Hopper and NASA's public-domain astronaut Eileen Collins
(``tests/data/astronaut.jpg``, see ``tests/data/ATTRIBUTION.md``). Photos with a second face in the background,
close-ups, GIF / WebP / TIFF / extension-less files, a mislabelled photo; ``edgecam gallery``; matching
strictness; batches with a bad file; drawn stills; the match similarity in events.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import trackable
from matplotlib import cbook

from edgecam import MODELS_DIR
from edgecam.crops import QualityGate
from edgecam.recognize import (
    ENROLL_MAX_YAW,
    ENROLL_MIN_FACE_PX,
    ENROLL_MIN_SHARPNESS,
    EmbeddingRecognizer,
    Gallery,
    enroll_crop,
    enroll_folder,
    make_recognizer,
)
from edgecam.sources import SourceError
from edgecam.stills import read_still

DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.skipif(not (MODELS_DIR / "face_recognizer" / "model.json").exists()
                                or not (MODELS_DIR / "face_detector" / "model.json").exists(),
                                reason="shipped face_recognizer / face_detector not present")


def edgecam(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgecam", "--log-level", "warning", *args], capture_output=True,
                          text=True, timeout=300)


def grace() -> np.ndarray:
    """Grace Hopper, 512x600, her face about 150x200 px in the middle."""
    return cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))


def astronaut() -> np.ndarray:
    """Eileen Collins, 512x512, her face about 100x130 px."""
    return cv2.imread(str(DATA / "astronaut.jpg"))


def grace_photos() -> dict[str, np.ndarray]:
    """Four different photos of Grace Hopper made from the one: mirrored, smaller, cropped, rotated."""
    g = grace()
    return {"mirrored": g[:, ::-1].copy(), "small": cv2.resize(g, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA),
            "crop": g[60:420, 120:420].copy(),
            "rotated": cv2.warpAffine(g, cv2.getRotationMatrix2D((256, 300), 8, 1.0), (512, 600))}


def with_background_face(main: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``main`` with ``other``'s face pasted small into its top-left corner (someone in the background)."""
    out = main.copy()
    out[20:100, 20:90] = cv2.resize(other[40:200, 160:300], (70, 80), interpolation=cv2.INTER_AREA)
    return out


def side_by_side(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two head-and-shoulders crops of the same size next to each other: two people, neither the main one."""
    left = cv2.resize(a[13:463, 41:491], (300, 300), interpolation=cv2.INTER_AREA)  # face box ~130x180 px
    right = cv2.resize(b[16:218, 125:327], (300, 300), interpolation=cv2.INTER_AREA)  # hers ~145x200 px
    return np.hstack([left, right])


@pytest.fixture(scope="module")
def det():  # noqa: ANN201
    from edgecam.detect import FaceDetector

    d = FaceDetector()
    yield d
    d.close()


@pytest.fixture(scope="module")
def rec() -> EmbeddingRecognizer:
    r = make_recognizer("identity", "face_recognizer")
    assert isinstance(r, EmbeddingRecognizer)
    return r


def embedding(det: object, rec: EmbeddingRecognizer, bgr: np.ndarray) -> np.ndarray:
    gate = QualityGate(ENROLL_MIN_FACE_PX, ENROLL_MIN_SHARPNESS, ENROLL_MAX_YAW)
    crop, why = enroll_crop(det, rec.input_size, bgr, gate)  # type: ignore[arg-type]
    assert crop is not None, why
    return rec.embed([crop])[0]


# ---------------------------------------------------------------------------------------------- which face


def test_a_photo_with_a_smaller_face_in_the_background_enrolls_the_main_face(det: object, rec: EmbeddingRecognizer,
                                                                            tmp_path: Path) -> None:
    """Before: 'skip ...: 2 faces found (want exactly one)'. Now her face is taken, and the note says so."""
    photo = with_background_face(grace(), astronaut())
    found = det(photo)[0]  # type: ignore[operator]
    assert len(trackable(found)) == 2  # the detector does see both faces (and her cap emblem at ~0.5)
    (tmp_path / "p" / "grace").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "p" / "grace" / "party.jpg"), photo)
    [r] = enroll_folder(det, rec, tmp_path / "p", tmp_path / "g.npz")  # type: ignore[arg-type]
    assert r.ok and "took the main face" in r.reason and f"of {len(found)} found" in r.reason and "smaller" in r.reason
    enrolled = Gallery.load(tmp_path / "g.npz", rec.model_sha, rec.dim).embeddings[0]
    assert enrolled @ embedding(det, rec, grace()) > 0.9  # hers ...
    assert enrolled @ embedding(det, rec, astronaut()) < rec.t_unknown  # ... not the face in the background


def test_two_faces_of_similar_size_are_refused(det: object, rec: EmbeddingRecognizer, tmp_path: Path) -> None:
    (tmp_path / "p" / "grace").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "p" / "grace" / "pair.jpg"), side_by_side(grace(), astronaut()))
    [r] = enroll_folder(det, rec, tmp_path / "p", tmp_path / "g.npz")  # type: ignore[arg-type]
    assert not r.ok and "2 faces of similar size found" in r.reason
    assert not (tmp_path / "g.npz").exists()


def test_a_close_up_whose_face_fills_the_photo_enrolls(det: object, rec: EmbeddingRecognizer) -> None:
    """A phone close-up: her face alone, 760-1140 px wide. Enrollment adds no size limit of its own."""
    reference = embedding(det, rec, grace())
    face = grace()[100:330, 170:360]
    for scale in (2, 4, 6):
        close_up = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        assert embedding(det, rec, close_up) @ reference > 0.75, scale  # 0.83 here; `known` is under 0.5


# ---------------------------------------------------------------------------------------------- formats


def test_enroll_reads_every_format_opencv_reads_and_says_why_it_skips(tmp_path: Path) -> None:
    """Before: GIF, WebP, TIFF and extension-less files were skipped without a word (only .jpg/.png/... were
    looked at). Now the content decides; a file that is not used gets a line saying why."""
    from PIL import Image

    people = tmp_path / "people"
    person = people / "grace"
    (person / "old").mkdir(parents=True)
    photos = grace_photos()
    Image.fromarray(photos["small"][:, :, ::-1]).save(person / "a.gif")
    cv2.imwrite(str(person / "b.webp"), photos["crop"])
    cv2.imwrite(str(person / "c.tiff"), photos["rotated"])
    Image.fromarray(photos["mirrored"][:, :, ::-1]).save(person / "from_my_phone", format="PNG")
    cv2.imwrite(str(person / "D.JPG"), grace())
    (person / "notes.txt").write_text("taken in 1984\n")
    (person / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: not a photo, not worth a line
    cv2.imwrite(str(people / "loose.jpg"), grace())
    r = edgecam("enroll", "--gallery", str(tmp_path / "g.npz"), str(people))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for name in ("a.gif", "b.webp", "c.tiff", "from_my_phone", "D.JPG"):
        assert any(line.startswith("ok   ") and line.split()[1].rstrip(":").endswith(name) for line in lines), name
    assert f"skip {person / 'notes.txt'}: not an image OpenCV can decode" in lines
    assert f"skip {person / 'old'}: a folder (photos go directly in DIR/<person>/)" in lines
    assert f"skip {people / 'loose.jpg'}: not in a person folder (want DIR/<person>/<photo>)" in lines
    assert ".DS_Store" not in r.stdout
    assert lines[-1] == f"enrolled 5 of 8 files into {tmp_path / 'g.npz'}"


def test_a_gif_that_the_image_codecs_refuse_is_read_through_ffmpeg(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenCV before 4.11 has no GIF codec: the first frame comes from FFmpeg instead."""
    from PIL import Image

    import edgecam.sources

    frames = [Image.fromarray(np.full((60, 80, 3), v, np.uint8)) for v in (200, 30)]
    frames[0].save(tmp_path / "anim", format="GIF", save_all=True, append_images=frames[1:])
    (tmp_path / "text.gif").write_text("GIF? no, text\n")
    monkeypatch.setattr(edgecam.sources.cv2, "imdecode", lambda *_a, **_k: None)  # no image codec reads anything
    first = read_still(tmp_path / "anim")
    assert first.shape == (60, 80, 3) and abs(int(first.mean()) - 200) <= 3  # the first frame, not the second
    with pytest.raises(SourceError, match="text.gif: not an image OpenCV can decode"):
        read_still(tmp_path / "text.gif")


# ---------------------------------------------------------------------------------------------- mislabelled


def write_people(root: Path, grace_extra: dict[str, np.ndarray]) -> Path:
    """``root/people/grace`` (four photos of her + ``grace_extra``) and ``root/people/eileen`` (two of her)."""
    people = root / "people"
    for person, photos in (("grace", {**grace_photos(), **grace_extra}),
                           ("eileen", {"one": astronaut(), "two": astronaut()[:, ::-1]})):
        (people / person).mkdir(parents=True)
        for name, bgr in photos.items():
            cv2.imwrite(str(people / person / f"{name}.jpg"), bgr)
    return people


def gallery_counts(gallery: Path) -> dict[str, int]:
    r = edgecam("gallery", "list", "--gallery", str(gallery), "--json")
    assert r.returncode == 0, r.stderr
    return {p["name"]: p["photos"] for p in json.loads(r.stdout)["people"]}


def test_a_mislabelled_photo_is_flagged_and_left_out(tmp_path: Path) -> None:
    """Before: Eileen's photo in Grace's folder was enrolled as Grace without a word (and then Eileen would be
    named Grace). Now a warning names the file, its similarity to Grace's other photos and whom it looks like."""
    people = write_people(tmp_path, {"eileen_by_mistake": astronaut()})
    gallery = tmp_path / "g.npz"
    r = edgecam("enroll", "--gallery", str(gallery), str(people))
    assert r.returncode == 0, r.stderr
    wrong = people / "grace" / "eileen_by_mistake.jpg"
    warns = [line for line in r.stdout.splitlines() if line.startswith("warn ")]
    assert len(warns) == 1 and warns[0].startswith(f"warn {wrong}: does not look like grace's other 4 photos "
                                                   "(best similarity 0.")
    similarity = float(warns[0].split("best similarity ")[1].split(",")[0])
    assert similarity < 0.4 and "it looks like eileen (similarity " in warns[0]
    assert f"skip {wrong}: looks like someone else: left out" in r.stdout
    assert "1 flagged as possibly someone else" in r.stdout.splitlines()[-1]
    assert gallery_counts(gallery) == {"eileen": 2, "grace": 4}

    r = edgecam("enroll", "--gallery", str(gallery), "--keep-flagged", str(people))
    assert r.returncode == 0 and "warn " in r.stdout
    assert gallery_counts(gallery) == {"eileen": 2, "grace": 5}  # enrolled all the same, on request


def test_two_photos_that_disagree_are_both_flagged_and_kept(det: object, rec: EmbeddingRecognizer,
                                                           tmp_path: Path) -> None:
    """No majority to go by: both photos stay, both flagged; photos that agree get their similarity, no flag."""
    (tmp_path / "p" / "who").mkdir(parents=True)
    (tmp_path / "p" / "grace").mkdir()
    cv2.imwrite(str(tmp_path / "p" / "who" / "1.jpg"), grace())
    cv2.imwrite(str(tmp_path / "p" / "who" / "2.jpg"), astronaut())
    for name, bgr in list(grace_photos().items())[:2]:
        cv2.imwrite(str(tmp_path / "p" / "grace" / f"{name}.jpg"), bgr)
    results = {f"{r.person}/{r.path.name}": r for r in
               enroll_folder(det, rec, tmp_path / "p", tmp_path / "g.npz")}  # type: ignore[arg-type]
    assert all(r.ok for r in results.values())
    assert all(results[k].warning and results[k].similarity < rec.t_unknown for k in ("who/1.jpg", "who/2.jpg"))
    assert all(not results[k].warning and results[k].similarity > 0.6 for k in ("grace/mirrored.jpg",
                                                                               "grace/small.jpg"))
    assert Gallery.load(tmp_path / "g.npz", rec.model_sha, rec.dim).counts() == {"grace": 2, "who": 2}


# ---------------------------------------------------------------------------------------------- gallery


def test_gallery_list_remove_rename(tmp_path: Path) -> None:
    people = write_people(tmp_path, {})
    gallery = tmp_path / "g.npz"
    assert edgecam("enroll", "--gallery", str(gallery), str(people)).returncode == 0
    r = edgecam("gallery", "list", "--gallery", str(gallery))
    assert r.returncode == 0 and r.stdout.splitlines() == ["eileen\t2 photos", "grace\t4 photos",
                                                           f"2 people in {gallery}"]
    r = edgecam("gallery", "rename", "--gallery", str(gallery), "eileen", "Eileen Collins")
    assert r.returncode == 0 and r.stdout.strip() == "renamed eileen to Eileen Collins (2 photos)"
    cv2.imwrite(str(tmp_path / "probe.jpg"), cv2.resize(astronaut(), None, fx=0.8, fy=0.8))
    r = edgecam("identify", "--gallery", str(gallery), "--json", str(tmp_path / "probe.jpg"))
    assert [f["name"] for f in json.loads(r.stdout)["faces"] if f["status"] != "unknown"] == ["Eileen Collins"]

    before = gallery.read_bytes()
    for argv, error in [
        (("rename", "nobody", "x"), f"{gallery}: no person 'nobody' in the gallery (enrolled: Eileen Collins, grace)"),
        (("rename", "grace", "Eileen Collins"), f"{gallery}: 'Eileen Collins' is already enrolled"),
        (("rename", "grace", "a/b"), "person name 'a/b' contains '/'"),
        (("rename", "grace", "events"), "person name 'events' is reserved"),
        (("remove", "grace", "nobody"), f"{gallery}: no person 'nobody' in the gallery"),
    ]:
        r = edgecam("gallery", argv[0], "--gallery", str(gallery), *argv[1:])
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, (argv, r.stderr)
        assert r.stderr.startswith(f"edgecam gallery: {error}"), (argv, r.stderr)
    assert gallery.read_bytes() == before  # nothing changed by a command that failed
    r = edgecam("gallery", "list", "--gallery", str(tmp_path / "none.npz"))
    assert r.returncode == 2 and r.stderr.strip() == (f"edgecam gallery: {tmp_path / 'none.npz'}: gallery not found "
                                                      "(create it with 'edgecam enroll')")

    r = edgecam("gallery", "remove", "--gallery", str(gallery), "Eileen Collins")
    assert r.returncode == 0 and r.stdout.strip() == "removed Eileen Collins (2 photos)"
    assert gallery_counts(gallery) == {"grace": 4}


# ---------------------------------------------------------------------------------------------- identify


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("enrolled")
    assert edgecam("enroll", "--gallery", str(root / "g.npz"), str(write_people(root, {}))).returncode == 0
    return root / "g.npz"


def test_identify_output_names_the_scores(gallery: Path, tmp_path: Path) -> None:
    """``score`` is the detector's confidence, as in ``detect``; ``similarity`` the match; landmarks too."""
    probe = tmp_path / "probe.png"
    cv2.imwrite(str(probe), with_background_face(grace()[:, ::-1], astronaut()))
    found = json.loads(edgecam("identify", "--gallery", str(gallery), "--json", str(probe)).stdout)["faces"]
    detected = json.loads(edgecam("detect", "--json", str(probe)).stdout)["faces"]
    assert [f["score"] for f in found] == [f["score"] for f in detected]
    assert [f["landmarks"] for f in found] == [f["landmarks"] for f in detected]
    by_name = {f["name"]: f for f in found}
    assert by_name["grace"]["similarity"] > 0.8 and by_name["grace"]["status"] == "known"
    assert by_name["eileen"]["similarity"] > 0.5  # the small face in the background is her
    text = edgecam("identify", "--gallery", str(gallery), str(probe)).stdout
    line = next(x for x in text.splitlines() if " grace " in x)
    assert f"similarity={by_name['grace']['similarity']:.3f}" in line and line.count("(") == 4  # 4 landmarks


def test_identify_threshold_sets_the_strictness(gallery: Path, tmp_path: Path) -> None:
    probe = tmp_path / "probe.jpg"
    cv2.imwrite(str(probe), cv2.resize(astronaut()[:, ::-1], None, fx=0.8, fy=0.8))

    def faces(*extra: str) -> list[dict]:
        r = edgecam("identify", "--gallery", str(gallery), "--json", *extra, str(probe))
        assert r.returncode == 0, r.stderr
        return [f for f in json.loads(r.stdout)["faces"] if f["similarity"] > 0.5]

    [default] = faces()
    assert default["name"] == "eileen" and default["status"] == "known"
    sim = default["similarity"]
    [stricter] = faces("--threshold", f"{sim + 0.005:.4f}")  # just above her similarity: not sure any more
    assert stricter["status"] == "uncertain" and stricter["name"] == "uncertain" and stricter["candidate"] == "eileen"
    text = edgecam("identify", "--gallery", str(gallery), "--threshold", f"{sim + 0.005:.4f}", str(probe)).stdout
    assert f"uncertain (candidate eileen? {sim:.2f})" in text
    [strictest] = faces("--threshold", "0.99")  # the uncertain band moves along: unknown once sim is below it
    shipped = json.loads((MODELS_DIR / "face_recognizer/model.json").read_text())["output"]["thresholds"]
    if sim < 0.99 - (shipped["known"] - shipped["unknown"]):
        assert strictest["name"] == "unknown" and "candidate" not in strictest
    else:  # a near copy of the enrolled photo: still within the (moved) band
        assert strictest["name"] == "uncertain" and strictest["candidate"] == "eileen"
    for bad in ("1.5", "0", "-0.2"):
        r = edgecam("identify", "--gallery", str(gallery), "--threshold", bad, str(probe))
        assert r.returncode == 2 and r.stderr.strip() == (f"edgecam identify: --threshold {float(bad)}: want a value "
                                                          "between 0 and 1 (exclusive)")


def test_config_threshold_is_validated_and_reaches_the_recognizer(gallery: Path, tmp_path: Path) -> None:
    from edgecam.config import load_config
    from edgecam.pipeline import load_recognizer

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"recognizer:\n  gallery: {gallery}\n  threshold: 0.6\n")
    rec = load_recognizer(load_config(cfg))
    assert isinstance(rec, EmbeddingRecognizer)
    default = make_recognizer("identity", "face_recognizer")
    assert isinstance(default, EmbeddingRecognizer)
    assert rec.t_known == 0.6 and rec.t_unknown == pytest.approx(0.6 - (default.t_known - default.t_unknown))
    cfg.write_text(f"recognizer:\n  gallery: {gallery}\n  threshold: 1.5\n")
    r = edgecam("check-config", str(cfg))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert "recognizer.threshold" in r.stderr and "1.5" in r.stderr and "less than 1" in r.stderr


# ---------------------------------------------------------------------------------------------- batches


def test_a_bad_file_does_not_stop_the_batch_and_stills_are_drawn(gallery: Path, tmp_path: Path) -> None:
    """Before: one unreadable file ended detect / identify before any result. Now it gets one line on stderr,
    the others are processed, and the exit code is 2 at the end."""
    images = [tmp_path / "grace.jpg", tmp_path / "broken.jpg", tmp_path / "eileen.webp"]
    cv2.imwrite(str(images[0]), grace())
    images[1].write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    cv2.imwrite(str(images[2]), astronaut())
    for command in ("detect", "identify"):
        drawn = tmp_path / f"drawn_{command}"
        extra = ("--gallery", str(gallery)) if command == "identify" else ()
        r = edgecam(command, *extra, "--json", "--draw", str(drawn), *map(str, images))
        assert r.returncode == 2
        assert r.stderr.splitlines() == [
            f"edgecam {command}: {images[1]}: not an image OpenCV can decode",
            f"edgecam {command}: 1 of 3 images could not be read ({images[1]}); the other 2 were processed"]
        results = [json.loads(line) for line in r.stdout.splitlines()]
        assert [x["image"] for x in results] == [str(images[0]), str(images[2])]
        assert all(len(x["faces"]) >= 1 for x in results)
        assert sorted(p.name for p in drawn.iterdir()) == ["eileen.jpg", "grace.jpg"]
        still = cv2.imread(str(drawn / "grace.jpg"))
        x1, y1, x2, y2 = (round(v) for v in results[0]["faces"][0]["box"])
        assert still.shape == grace().shape
        diff = np.abs(still.astype(int) - grace().astype(int)).sum(2) > 60
        assert diff[y1 - 2:y1 + 3, x1:x2].mean() > 0.5  # the top edge of her box is drawn
        if command == "identify":
            assert diff[max(0, y1 - 40):y1 - 3, x1:x1 + 40].mean() > 0.2  # ... with her name above it
    r = edgecam("detect", str(images[0]))
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[0] == f"{images[0]}: {len(lines) - 1} face(s)"
    assert all(" landmarks=(" in line and line.count("(") == 4 for line in lines[1:])


# ---------------------------------------------------------------------------------------------- events


def test_events_carry_the_match_similarity_beside_the_vote_share(gallery: Path, tmp_path: Path) -> None:
    """Grace's photo slides across a grey canvas, then Eileen's: each event carries the vote share
    (``scores.identity``, 1.0 when every vote named her) and the match similarity (``scores.similarity``: the
    mean similarity of the votes that named her)."""
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (480, 320))
    for img, frames in ((cv2.resize(grace(), (214, 250)), 30), (None, 15),
                        (cv2.resize(astronaut(), (250, 250)), 30)):
        for i in range(frames):
            canvas = np.full((320, 480, 3), 120, np.uint8)
            if img is not None:
                canvas[35:285, 40 + 3 * i:40 + 3 * i + img.shape[1]] = img
            writer.write(canvas)
    writer.release()
    cfg = tmp_path / "edgecam.yaml"
    cfg.write_text(f"recognizer:\n  gallery: {gallery}\nstate_dir: {tmp_path / 'state'}\n")
    events = tmp_path / "events.jsonl"
    r = edgecam("replay", str(video), "--config", str(cfg), "--events", str(events))
    assert r.returncode == 0, r.stderr
    ends = [e for e in map(json.loads, events.read_text().splitlines()) if e["type"] == "end"]
    assert [e["identity"] for e in ends] == ["grace", "eileen"]
    rec = make_recognizer("identity", "face_recognizer")
    assert isinstance(rec, EmbeddingRecognizer)
    for e in ends:
        scores = e["scores"]
        assert set(scores) == {"detection", "detection_max", "identity", "similarity"}
        assert 0.5 <= scores["identity"] <= 1.0  # the vote share
        assert rec.t_known <= scores["similarity"] <= 1.0  # how well the votes for the name matched
        assert scores["similarity"] != scores["identity"]
