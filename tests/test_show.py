"""edgecam replay --annotate / --report: the video decodes with every frame drawn on, the report is valid HTML whose
images exist; drawing units on synthetic frames."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import read_video

from edgecam import MODELS_DIR
from edgecam.crops import Quality
from edgecam.sources import Frame
from edgecam.tools.show import Annotator, Report, event_line, identity_text, short_id, status_band, who
from edgecam.track import Event, Observation, Track

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "edgecam" / "data" / "corridor.mp4"
needs_detector = pytest.mark.skipif(not (MODELS_DIR / "face_detector" / "model.json").exists(),
                                    reason="the face detector is not shipped yet")
VOID = {"meta", "img", "br", "hr", "link", "input"}


class StrictParser(HTMLParser):
    """Collects img src values and checks that every non-void element is closed in order."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []
        self.errors: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def parse_report(path: Path) -> StrictParser:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    p = StrictParser()
    p.feed(text)
    p.close()
    assert not p.errors and not p.stack, (p.errors, p.stack)
    ET.fromstring(text.split("\n", 1)[1])  # also well-formed XML (XHTML-compatible output)
    return p


# ---------------------------------------------------------------------------------------------- the real CLI


@needs_detector
def test_replay_annotate_and_report_on_the_bundled_clip(tmp_path: Path) -> None:
    out, report = tmp_path / "annotated.webm", tmp_path / "report.html"
    r = subprocess.run([sys.executable, "-m", "edgecam", "replay", str(CLIP), "--annotate", str(out), "--report",
                        str(report)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events, "the clip has people walking through it"

    # the video: every frame, the picture below a status band, drawn on (boxes) where the detector found faces
    src, drawn = read_video(CLIP), read_video(out)
    band = drawn[0].shape[0] - src[0].shape[0]
    assert len(drawn) == len(src) == 76 and drawn[0].shape[1] == src[0].shape[1] and 10 < band < 40
    first_new = min(e["frame"] for e in events if e["type"] == "new")
    x1, y1, x2, y2 = (int(v) for v in next(e["box"] for e in events if e["frame"] == first_new))
    diff = np.abs(drawn[first_new][band:].astype(int) - src[first_new].astype(int)).max(2)
    edge = np.concatenate([diff[y1:y2, max(0, x1 - 2):x1 + 3].ravel(), diff[y1:y2, x2 - 2:x2 + 3].ravel()])
    assert (edge > 60).mean() > 0.3, "the face box is drawn where the event says"
    assert np.median(diff) < 25, "outside the drawings the frame is the source's (codec noise aside)"

    # the report: valid HTML, one row per track, every image it references exists and is the track's best crop
    p = parse_report(report)
    ids = {e["id"] for e in events}
    assert {"svg", "table", "img", "title", "video"} <= p.tags
    html_text = report.read_text()
    assert all(f'title="{i}">{short_id(i)}<' in html_text for i in ids)  # one id style: #N (the long id on hover)
    assert len(p.images) == 2 * len(ids)  # the best crop and the whole frame it came from, per track
    for src_path in p.images:
        img = cv2.imread(str(report.parent / src_path))
        assert img is not None and min(img.shape[:2]) > 10, src_path
    frames = [cv2.imread(str(report.parent / s)) for s in p.images if s.endswith("_frame.jpg")]
    assert len(frames) == len(ids) and all(f.shape[:2] == src[0].shape[:2] for f in frames)
    assert 'src="annotated.webm"' in html_text and 'href="annotated.webm"' in html_text
    assert "(unknown, " not in html_text and "unknown (not recognized)" in html_text
    assert "frames_skipped_motion" in html_text and "detect ms/frame" in html_text


@needs_detector
@pytest.mark.parametrize(("option", "name", "message"), [
    ("--annotate", "out.txt", "want a .webm (VP8, plays in browsers), .mp4 or .avi"),
    ("--annotate", "missing/out.mp4", "does not exist"),
    ("--report", "out.pdf", "want a .html"),
    ("--report", "missing/r.html", "does not exist"),
])
def test_replay_bad_output_paths_are_one_line_exit_2(tmp_path: Path, option: str, name: str, message: str) -> None:
    r = subprocess.run([sys.executable, "-m", "edgecam", "replay", str(CLIP), option, str(tmp_path / name)],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not r.stdout


# ---------------------------------------------------------------------------------------------- units


def ann_band(img: np.ndarray) -> int:
    """Height of the status band of an annotated frame (the annotator's scale for the picture below it)."""
    for h in range(img.shape[0]):
        if h == status_band(max(0.8, (img.shape[0] - h) / 360)):
            return h
    raise AssertionError("no status band")


def _track(confirmed: bool, identity: tuple[str, str, float] = ("alice", "known", 1.0)) -> Track:
    return Track("abcd1234-00007", np.array([40, 30, 100, 110, 0.9], np.float32), 0, 0.0, 0, 0.0,
                 confirmed=confirmed, identity=identity)


def _observation(track: Track, ok: bool = True) -> Observation:
    lm = np.array([[55, 60], [85, 60], [70, 80], [70, 95]], np.float32)
    return Observation(track, track.box, lm, Quality(60, 100, 0.0, ok, "" if ok else "blurred"))


def test_names_and_event_lines() -> None:
    assert short_id("abcd1234-00007") == "#7"
    payload = {"type": "new", "id": "abcd1234-00007", "identity": "alice", "status": "known"}
    assert event_line(payload) == "NEW #7 alice"
    assert who({**payload, "status": "uncertain"}) == "alice? (uncertain)"
    assert who({**payload, "identity": "unknown", "status": "unknown"}) == "unknown"


def test_annotator_draws_box_landmarks_and_labels(tmp_path: Path) -> None:
    ann = Annotator(tmp_path / "a.avi", fps=10)
    bgr = np.full((180, 240, 3), 128, np.uint8)
    frames = [Frame(i, i / 10, bgr) for i in range(3)]
    ann.frame(frames[0], [], [], detected=False)
    ann.frame(frames[1], [_observation(_track(True))], [], detected=True)
    ann.frame(frames[2], [_observation(_track(False), ok=False)], [], detected=True)
    ann.close()
    assert (bgr == 128).all(), "the source frame is not drawn on"
    drawn = [f[ann_band(f):] for f in read_video(tmp_path / "a.avi")]
    assert len(drawn) == 3 and drawn[0].shape == bgr.shape
    known = drawn[1].astype(int)
    assert known[70, 40, 1] > 170 and known[70, 40, 0] < 140, "known track: a green box edge at x1"
    assert np.abs(known[60, 55] - [255, 120, 0]).max() < 80, "the image-left eye landmark"
    tentative = drawn[2].astype(int)
    assert np.abs(tentative[70, 40] - 160).max() < 40, "tentative track: grey box"
    assert np.abs(drawn[0].astype(int) - 128).max() < 20, "the status line is above the picture, not on it"


def test_report_escapes_names_and_references_written_crops(tmp_path: Path) -> None:
    rep = Report(tmp_path / "r.html", Path("clip.mp4"))
    base = {"id": "abcd1234-00001", "camera": "c", "label": "face", "identity": "<b>&bob</b>", "status": "known",
            "scores": {"detection": 0.9, "detection_max": 0.9, "identity": 1.0}, "box": [1.0, 2.0, 3.0, 4.0],
            "start": 0.5, "frames": {"first": 1, "last": 3, "hits": 3, "votes": 2},
            "snapshot": {"frame": 2, "score": 0.9}}
    rep.seen(Frame(0, 0.0, np.zeros((2, 2, 3), np.uint8)))
    rep.seen(Frame(40, 4.0, np.zeros((2, 2, 3), np.uint8)))
    rep.event(Event({**base, "type": "new", "seq": 0, "end": None, "timestamp": 0.7, "frame": 3},
                    np.full((40, 30, 3), 200, np.uint8)))
    rep.event(Event({**base, "type": "end", "seq": 1, "end": 2.0, "timestamp": 3.0, "frame": 30}))
    page = rep.write_html({"frames": 41, "stage_ms_per_frame": {"detect": 1.0}})
    p = parse_report(page)
    assert p.images == ["r_files/000_abcd1234-00001.jpg"] and (tmp_path / p.images[0]).is_file()
    text = page.read_text()
    assert "<b>&bob</b>" not in text and "&lt;b&gt;&amp;bob&lt;/b&gt;" in text
    (tmp_path / "r_files" / "007_stale.jpg").write_bytes(b"old")  # from an earlier report at the same path
    (tmp_path / "r_files" / "notes.txt").write_text("mine")
    rep.write_html({})
    assert sorted(p.name for p in (tmp_path / "r_files").iterdir()) == ["000_abcd1234-00001.jpg", "notes.txt"]


def test_held_tracks_are_drawn_when_the_detector_skips_a_frame(tmp_path: Path) -> None:
    ann = Annotator(tmp_path / "h.avi", fps=10)
    bgr = np.full((180, 240, 3), 128, np.uint8)
    ann.frame(Frame(0, 0.0, bgr), [], [], detected=False, held=[_track(True)])  # motion gate skipped the frame
    ann.frame(Frame(1, 0.1, bgr), [], [], detected=False)
    ann.close()
    held, empty = (f[ann_band(f):].astype(int) for f in read_video(tmp_path / "h.avi"))
    edge = held[60:80, 38:43]  # the box's left edge at x1 = 40, 1 px wide (the codec smears it)
    assert edge[..., 1].max() > 150 and edge[..., 0].min() < 140, "the known track's box, thin, at its last place"
    assert np.abs(empty - 128).max() < 20


def test_webm_is_vp8_and_mp4_without_h264_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    img = np.full((120, 160, 3), 90, np.uint8)
    webm = Annotator(tmp_path / "a.webm", fps=10)
    webm.frame(Frame(0, 0.0, img), [], [], detected=True)
    webm.close()
    assert webm.fourcc in ("VP80", "VP90") and len(read_video(tmp_path / "a.webm")) == 1
    assert not caplog.records
    mp4 = Annotator(tmp_path / "a.mp4", fps=10)
    mp4.frame(Frame(0, 0.0, img), [], [], detected=True)
    mp4.close()
    if mp4.fourcc == "avc1":  # an OpenCV build with an H.264 encoder: browsers play it
        assert not caplog.records
    else:
        assert mp4.fourcc == "mp4v" and "name it .webm" in caplog.text


def test_report_identity_text_and_tiny_crops_enlarged(tmp_path: Path) -> None:
    base = {"identity": "unknown", "status": "unknown", "scores": {"identity": 1.0}, "frames": {"votes": 5}}
    assert identity_text(base) == "unknown (5 of 5 votes)"
    assert identity_text({**base, "frames": {"votes": 0}, "scores": {"identity": 0.0}}) == "unknown (not recognized)"
    assert identity_text({**base, "identity": "alice", "status": "known", "scores": {"identity": 0.75},
                          "frames": {"votes": 4}}) == "alice (3 of 4 votes)"
    rep = Report(tmp_path / "r.html", Path("clip.mp4"))
    payload = {"id": "abcd1234-00003", "identity": "unknown", "status": "unknown", "box": [1.0, 2.0, 9.0, 12.0],
               "scores": {"identity": 0.0}, "start": 0.0, "end": None, "timestamp": 0.2, "frame": 2, "seq": 0,
               "type": "new", "frames": {"hits": 3, "votes": 0}, "snapshot": {"frame": 2, "score": 0.7}}
    full = np.full((90, 120, 3), 60, np.uint8)
    rep.event(Event(payload, np.full((14, 10, 3), 200, np.uint8)))  # the event first, then the frame (same frame)
    rep.best_frame("abcd1234-00003", 2, full, np.array([1, 2, 9, 12, 0.7], np.float32))
    rep.forget_frames(set())
    rep.seen(Frame(2, 0.2, full))
    page = rep.write_html({})
    p = parse_report(page)
    text = page.read_text()
    assert p.images == ["r_files/000_abcd1234-00003.jpg", "r_files/000_abcd1234-00003_frame.jpg"]
    assert cv2.imread(str(tmp_path / p.images[1])).shape == (90, 120, 3)
    assert 'class="crop"' in text and "img.crop{height:128px" in text  # a 14 px crop is shown 128 px tall
    assert "<video" not in text  # no annotated video in this replay


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@needs_detector
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_annotated_video_and_report_in_headless_chromium(tmp_path: Path) -> None:
    """The report as a browser shows it: its video decodes, its tiny crops are enlarged, its images load."""
    out, report = tmp_path / "annotated.webm", tmp_path / "report.html"
    r = subprocess.run([sys.executable, "-m", "edgecam", "replay", str(CLIP), "--annotate", str(out), "--report",
                        str(report), "--events", str(tmp_path / "e.jsonl")], capture_output=True, text=True,
                       timeout=180, cwd=REPO)
    assert r.returncode == 0, r.stderr
    probe = """<script>
    const v = document.querySelector('video'), out = document.createElement('pre');
    out.id = 'probe'; document.body.appendChild(out);
    function report(state) {
      const imgs = [...document.images].map(i => [i.className, i.naturalHeight, i.height]);
      out.textContent = JSON.stringify({state, w: v.videoWidth, h: v.videoHeight, d: v.duration, imgs});
    }
    v.addEventListener('error', () => report('error ' + (v.error && v.error.code)));
    v.addEventListener('loadeddata', () => report('decoded'));
    v.load();
    </script>"""
    page = tmp_path / "probe.html"
    page.write_text(report.read_text().replace("</body>", probe + "</body>"))
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    state = json.loads(html.unescape(found.group(1)))
    src = read_video(CLIP)[0]
    assert state["state"] == "decoded" and state["w"] == src.shape[1] and state["h"] > src.shape[0]
    assert abs(state["d"] - 76 / 12.5) < 0.5
    crops = [i for i in state["imgs"] if i[0] == "crop"]
    assert crops and all(i[1] > 0 for i in state["imgs"])  # every image loaded
    assert all(i[2] == 128 for i in crops) and any(i[1] < 128 for i in crops)  # small crops shown enlarged
