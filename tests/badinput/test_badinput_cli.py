"""Every bad input of the corpus through the CLI: one error line naming the file / key and the problem, exit 2,
no traceback, nothing written half-way. Unusual but valid inputs are accepted (exit 0).

The whole corpus runs in-process through ``edgecam.cli.main`` (fast: the real argument parsing, commands and
error mapping); ``test_process_level`` runs one case per command as a real ``python -m edgecam`` process and
checks that stderr holds nothing but that line (no OpenCV / FFmpeg noise, no traceback).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import pytest
from corpus import CLIP, CONFIGS, build

from edgecam import MODELS_DIR
from edgecam.cli import main
from edgecam.manifest import load_manifest
from edgecam.recognize import Gallery

pytestmark = pytest.mark.skipif(not (MODELS_DIR / "face_detector" / "model.json").exists() or not CLIP.exists(),
                                reason="needs the shipped face_detector model and the bundled clip")

LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO) ")
FFMPEG_NOISE = re.compile(r"^\[[\w,]+ @ 0x[0-9a-f]+\] ")
"""FFmpeg's own log lines: silenced by main() before FFmpeg starts in a fresh process (test_process_level checks
that), but in this test process FFmpeg may have started earlier, so in-process runs ignore them."""
OUTCOMES: dict[str, list[int]] = {}  # category -> [tried, crashes]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build(tmp_path_factory.mktemp("corpus"))
    sha = str(load_manifest(root / "models" / "rec_ok").data["sha256"])
    Gallery(sha, 3).save(root / "gallery.npz")
    Gallery("0" * 64, 3).save(root / "other_model_gallery.npz")
    (root / "garbage_gallery.npz").write_bytes(b"PK\x03\x04 not really a zip")
    return root


@dataclass
class Result:
    code: int
    out: str
    err: str
    escaped: BaseException | None = None

    def error_lines(self) -> list[str]:
        """stderr lines that are not INFO/DEBUG log records (the user-facing error)."""
        return [line for line in self.err.splitlines()
                if line.strip() and not LOG_RECORD.match(line) and not FFMPEG_NOISE.match(line)]


@pytest.fixture
def cli(capfd: pytest.CaptureFixture[str]) -> Iterator[Callable[[list[str]], Result]]:
    """Run ``edgecam ARGV`` in-process; root logging and OpenCV's log level are restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, cv2.utils.logging.getLogLevel())
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # what main() sets up in a fresh process

    def run(argv: list[str]) -> Result:
        escaped: BaseException | None = None
        try:
            code = main(argv)
        except BaseException as e:  # noqa: BLE001 - anything escaping main() is a crash
            code, escaped = -1, e
        out, err = capfd.readouterr()
        return Result(code, out, err, escaped)

    yield run
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    cv2.utils.logging.setLogLevel(saved[2])


@dataclass(frozen=True)
class Case:
    """``argv`` with ``{root}`` (the corpus) and ``{tmp}`` (the test's folder) filled in; the error must contain
    every string of ``expect`` (and the file named by ``names``); ``untouched`` paths must not exist after."""

    category: str
    id: str
    argv: tuple[str, ...]
    expect: tuple[str, ...]
    names: str = ""
    untouched: tuple[str, ...] = ()
    lines: int = 1
    stdout_has: tuple[str, ...] = field(default=())


def fill(text: str, root: Path, tmp: Path) -> str:
    return text.replace("{root}", str(root)).replace("{tmp}", str(tmp))


NOT_IMAGE = "not an image OpenCV can decode"
BAD_IMAGES = {  # media file -> what the error says
    "empty.jpg": "empty file",
    "text.jpg": NOT_IMAGE,
    "zero.png": NOT_IMAGE,
    "huge.png": "image 8000x8000 is larger than 40 megapixels",
    "float32.tiff": NOT_IMAGE,
    "openexr.exr": NOT_IMAGE,
    "truncated_header.jpg": NOT_IMAGE,
    "text.mp4": NOT_IMAGE,
    "missing.jpg": "no such image file",
    "ok": "no such image file",  # a folder
}
BAD_VIDEOS = {
    "empty.mp4": "empty file",
    "text.mp4": "not a video OpenCV can read",
    "truncated.mp4": "not a video OpenCV can read",
    "truncated.avi": "truncated or corrupt: decoding stopped after",
    "unknown_codec.avi": "not a video OpenCV can read",
    "huge_frames.avi": "image 8000x8000 is larger than 40 megapixels",
    "missing.mp4": "no such video file",
    "empty.jpg": "empty file",
    "text.jpg": "no frame could be decoded",
    "ok": "no such video file",
}
REC = ("--recognizer", "{root}/models/rec_ok")
IDENTIFY = ("identify", "--gallery", "{root}/gallery.npz", *REC)
ENROLL = ("enroll", "--gallery", "{tmp}/gallery.npz", *REC)
FACE = "{root}/media/ok/face.jpg"
DETECTOR_MODELS = {
    "det_truncated": "onnxruntime cannot load it",
    "det_random": "onnxruntime cannot load it",
    "det_wrong_output": "want (N, 13, H, W)",
    "det_wrong_input": "cannot run on a (1, 1, 256, 320) input",
    "det_sha_mismatch": "does not match model.json",
    "det_no_decoding": "lacks stride",
    "det_no_manifest": "missing manifest",
    "det_bad_json": "not valid JSON",
    "det_onnx_missing": "model file missing",
    "det_nowhere": "no such model folder",
}
RECOGNIZER_MODELS = {
    "rec_wrong_dim": "3 outputs per crop, model.json says 128",
    "rec_wrong_input": "cannot run on a 64x64 crop",
    "rec_random": "onnxruntime cannot load it",
    "rec_sha_mismatch": "does not match model.json",
    "rec_nowhere": "no such model folder",
}


def cases() -> list[Case]:
    out: list[Case] = []
    for name, why in BAD_IMAGES.items():
        img = f"{{root}}/media/{name}"
        out.append(Case("media", f"detect-{name}", ("detect", "--json", img), (why,), names=name))
        out.append(Case("media", f"identify-{name}", (*IDENTIFY, img), (why,), names=name))
    for name, why in BAD_VIDEOS.items():
        events = "{tmp}/events.jsonl"
        out.append(Case("media", f"replay-{name}", ("replay", f"{{root}}/media/{name}", "--events", events), (why,),
                        names=name, untouched=() if name in ("truncated.avi", "huge_frames.avi") else (events,)))
    for kind, why in [("empty", "empty file"), ("text", NOT_IMAGE), ("zero", NOT_IMAGE),
                      ("huge", "larger than 40 megapixels"), ("float32", NOT_IMAGE), ("truncated_header", NOT_IMAGE)]:
        out.append(Case("media", f"enroll-{kind}", (*ENROLL, f"{{root}}/people/{kind}"),
                        ("none of its 1 files could be enrolled", "not written"), names=kind,
                        untouched=("{tmp}/gallery.npz",), stdout_has=(why,)))
    out += [
        Case("media", "enroll-no-person-folders", (*ENROLL, "{root}/people/no_person_folders"), ("no person folders",),
             untouched=("{tmp}/gallery.npz",)),
        Case("media", "enroll-no-images", (*ENROLL, "{root}/people/no_images"), ("none of its 1 files",),
             untouched=("{tmp}/gallery.npz",)),
        Case("media", "enroll-dir-is-a-file", (*ENROLL, FACE), ("not a folder",), untouched=("{tmp}/gallery.npz",)),
        Case("media", "identify-missing-gallery", ("identify", "--gallery", "{tmp}/none.npz", *REC, FACE),
             ("gallery not found",), names="none.npz"),
        Case("media", "identify-gallery-of-another-model", ("identify", "--gallery",
             "{root}/other_model_gallery.npz", *REC, FACE), ("enrolled with another model",)),
        Case("media", "identify-garbage-gallery", ("identify", "--gallery", "{root}/garbage_gallery.npz", *REC, FACE),
             ("not a gallery file",)),
        Case("media", "identify-identity-without-gallery", ("identify", *REC, FACE), ("--gallery is required",)),
    ]
    for model, why in DETECTOR_MODELS.items():
        out.append(Case("models", f"detect-{model}", ("detect", "--model", f"{{root}}/models/{model}", FACE), (why,),
                        names=model))
    for model, why in DETECTOR_MODELS.items():
        if model != "det_nowhere":  # a missing folder is a config error (below)
            out.append(Case("models", f"replay-config-{model}", ("replay", str(CLIP), "--config",
                            f"{{tmp}}/{model}.yaml", "--events", "{tmp}/events.jsonl"), (why,), names=model,
                            untouched=("{tmp}/events.jsonl",)))
    for model, why in RECOGNIZER_MODELS.items():
        if model != "rec_nowhere":
            out.append(Case("models", f"replay-config-{model}", ("replay", str(CLIP), "--config",
                            f"{{tmp}}/{model}.yaml", "--events", "{tmp}/events.jsonl"), (why,), names=model,
                            untouched=("{tmp}/events.jsonl",)))
    for model, why in RECOGNIZER_MODELS.items():
        rec = ("--recognizer", f"{{root}}/models/{model}")
        out.append(Case("models", f"identify-{model}", ("identify", "--gallery", "{root}/gallery.npz", *rec, FACE),
                        (why,), names=model))
        out.append(Case("models", f"enroll-{model}", ("enroll", "--gallery", "{tmp}/gallery.npz", *rec,
                        "{root}/people/empty"), (why,), names=model, untouched=("{tmp}/gallery.npz",)))
    out.append(Case("models", "identify-classifier-wrong-labels", ("identify", "--recognizer-type", "classifier",
                    "--recognizer", "{root}/models/cls_wrong_labels", FACE), ("3 outputs per crop", "labels")))
    for name, (_, expect) in CONFIGS.items():
        cfg = f"{{root}}/configs/{name}.yaml"
        for argv in [("check-config", cfg), ("replay", str(CLIP), "--config", cfg), ("run", "--config", cfg)]:
            out.append(Case("config", f"{argv[0]}-{name}", argv, expect, names=f"{name}.yaml"))
    for name, why in [("binary", "not a UTF-8 text file"), ("empty_dir", "no such config file"),
                      ("missing", "no such config file")]:
        out.append(Case("config", f"check-config-{name}", ("check-config", f"{{root}}/configs/{name}.yaml"), (why,),
                        names=f"{name}.yaml"))
    out += [
        Case("config", "mqtt-url-with-password", ("replay", str(CLIP), "--mqtt", "mqtt://cam:hunter2@broker:1883"),
             ("no password in the URL", "mqtt://cam:***@broker")),
        Case("config", "mqtt-url-scheme", ("replay", str(CLIP), "--mqtt", "http://broker:1883"),
             ("scheme must be mqtt:// or mqtts://",)),
        Case("config", "mqtt-url-port", ("run", "--config", "{root}/configs/empty.yaml", "--mqtt",
                                         "mqtt://broker:99999"), ("--mqtt", "mqtt://broker:99999")),
        Case("config", "camera-name", ("replay", str(CLIP), "--camera", "a/b"), ("--camera 'a/b'",)),
    ]
    return out


CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[f"{c.category}:{c.id}" for c in CASES])
def test_bad_input_one_line_exit_2(case: Case, corpus: Path, cli: Callable[[list[str]], Result],
                                   tmp_path: Path) -> None:
    for model in DETECTOR_MODELS:
        (tmp_path / f"{model}.yaml").write_text(f"detector:\n  model: {corpus}/models/{model}\n")
    for model in RECOGNIZER_MODELS:
        (tmp_path / f"{model}.yaml").write_text(f"recognizer:\n  model: {corpus}/models/{model}\n")
    (corpus / "configs" / "empty.yaml").write_text("")
    argv = [fill(a, corpus, tmp_path) for a in case.argv]
    r = cli(argv)
    tried = OUTCOMES.setdefault(case.category, [0, 0])
    tried[0] += 1
    crashed = r.escaped is not None or r.code not in (0, 2) or "Traceback" in r.err + r.out
    tried[1] += crashed
    assert r.escaped is None, f"escaped main(): {r.escaped!r}"
    assert r.code == 2, (r.code, r.err[-2000:])
    assert "Traceback" not in r.err + r.out
    lines = r.error_lines()
    assert len(lines) == case.lines, lines
    for want in case.expect:
        assert want in lines[0], (want, lines[0])
    if case.names:
        assert case.names in lines[0], (case.names, lines[0])
    for want in case.stdout_has:
        assert want in r.out, r.out
    for path in case.untouched:
        assert not Path(fill(path, corpus, tmp_path)).exists(), f"{path} was written"
    if case.argv[0] == "replay" and (tmp_path / "events.jsonl").exists():  # never a torn line
        for line in (tmp_path / "events.jsonl").read_text().splitlines():
            json.loads(line)


def test_enroll_bad_images_leave_an_existing_gallery_as_it_was(corpus: Path, cli: Callable[[list[str]], Result],
                                                               tmp_path: Path) -> None:
    gallery = tmp_path / "gallery.npz"
    gallery.write_bytes((corpus / "gallery.npz").read_bytes())
    before = gallery.read_bytes()
    for kind in ("empty", "huge", "float32"):
        r = cli(["enroll", "--gallery", str(gallery), *fill(" ".join(REC), corpus, tmp_path).split(),
                 str(corpus / "people" / kind)])
        assert r.code == 2 and gallery.read_bytes() == before
    r = cli(["enroll", "--gallery", str(gallery), "--recognizer", str(corpus / "models" / "rec_wrong_dim"),
             str(corpus / "people" / "empty")])
    assert r.code == 2 and gallery.read_bytes() == before


BROKEN_MODELS = [*DETECTOR_MODELS, *RECOGNIZER_MODELS]


@pytest.mark.parametrize("model", BROKEN_MODELS)
def test_models_verify_reports_every_broken_model(model: str, corpus: Path, cli: Callable[[list[str]], Result],
                                                  tmp_path: Path) -> None:
    """``edgecam models verify`` (a report, not one line) on every broken model folder: exit 2, no traceback."""
    r = cli(["models", "verify", str(corpus / "models" / model)])
    outcome = OUTCOMES.setdefault("models", [0, 0])
    outcome[0] += 1
    outcome[1] += r.escaped is not None or r.code not in (0, 2) or "Traceback" in r.err + r.out
    assert r.escaped is None and r.code == 2, (r.code, r.err[-2000:])
    assert "Traceback" not in r.err + r.out and f"failed verification: {model}" in r.error_lines()[-1]


ACCEPTED = [  # unusual but valid inputs: exit 0 with a sensible result
    ("detect-grey16", ("detect", "--json", "{root}/media/ok/grey16.png"), 0),
    ("detect-rgba16", ("detect", "--json", "{root}/media/ok/rgba16.tiff"), 0),
    ("detect-one-pixel", ("detect", "--json", "{root}/media/ok/one_pixel.png"), 0),
    ("detect-face", ("detect", "--json", FACE), 1),
    ("identify-face", (*IDENTIFY, "--json", FACE), 1),
]


@pytest.mark.parametrize(("name", "argv", "faces"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_unusual_valid_inputs_are_accepted(name: str, argv: tuple[str, ...], faces: int, corpus: Path,
                                           cli: Callable[[list[str]], Result], tmp_path: Path) -> None:
    r = cli([fill(a, corpus, tmp_path) for a in argv])
    OUTCOMES.setdefault("accepted", [0, 0])[0] += 1
    OUTCOMES["accepted"][1] += r.escaped is not None or r.code != 0
    assert r.escaped is None and r.code == 0, r.err[-2000:]
    result = json.loads(r.out.splitlines()[-1])
    assert len(result["faces"]) >= faces and all(len(f["box"]) == 4 for f in result["faces"])


def test_enroll_skips_the_bad_image_and_enrolls_the_good_one(corpus: Path, cli: Callable[[list[str]], Result],
                                                             tmp_path: Path) -> None:
    person = tmp_path / "people" / "grace"
    person.mkdir(parents=True)
    (person / "face.jpg").write_bytes((corpus / "media" / "ok" / "face.jpg").read_bytes())
    (person / "broken.jpg").write_bytes(b"")
    gallery = tmp_path / "gallery.npz"
    r = cli(["enroll", "--gallery", str(gallery), "--recognizer", str(corpus / "models" / "rec_ok"),
             str(tmp_path / "people")])
    assert r.code == 0, r.err[-2000:]
    assert "skip" in r.out and "broken.jpg: empty file" in r.out and "enrolled 1 of 2 files" in r.out
    sha = str(load_manifest(corpus / "models" / "rec_ok").data["sha256"])
    assert Gallery.load(gallery, sha, 3).people == ["grace"]


PROCESS_CASES = [  # (argv, what the one stderr line says)
    (("detect", "{root}/media/text.jpg"), NOT_IMAGE),
    (("detect", "--model", "{root}/models/det_wrong_output", FACE), "want (N, 13, H, W)"),
    ((*IDENTIFY, "{root}/media/openexr.exr"), NOT_IMAGE),
    ((*ENROLL, "{root}/people/huge"), "none of its 1 files could be enrolled"),
    (("replay", "{root}/media/unknown_codec.avi"), "not a video OpenCV can read"),
    (("replay", "{root}/media/truncated.avi"), "truncated or corrupt"),
    (("check-config", "{root}/configs/invalid_yaml.yaml"), "invalid YAML"),
    (("run", "--config", "{root}/configs/unknown_key.yaml"), "Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("argv", "why"), PROCESS_CASES, ids=[f"{c[0][0]}-{i}" for i, c in enumerate(PROCESS_CASES)])
def test_process_level(argv: tuple[str, ...], why: str, corpus: Path, tmp_path: Path) -> None:
    """As a real process: exit 2 and stderr is that one line, plus INFO progress lines at most."""
    proc = subprocess.run([sys.executable, "-m", "edgecam", *(fill(a, corpus, tmp_path) for a in argv)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if not LOG_RECORD.match(line)]
    assert proc.returncode == 2, proc.stderr[-2000:]
    outcome = OUTCOMES.setdefault("process", [0, 0])
    outcome[0] += 1
    outcome[1] += proc.returncode not in (0, 2) or "Traceback" in proc.stderr
    assert len(lines) == 1 and why in lines[0], proc.stderr[-2000:]


def test_zz_report(fault_report: object) -> None:
    """Record how many bad inputs were tried and how many crashed (run last in this module)."""
    for category, (tried, crashes) in OUTCOMES.items():
        fault_report.add("badinput", category, tried=tried, crashes=crashes)  # type: ignore[attr-defined]
    assert all(crashes == 0 for _, crashes in OUTCOMES.values())
