"""Stage the fetchable face and scene sets of ``../shared/data/README.md`` under ``runs/data/`` for training.

The ``fetch`` tool leaves each repository as a bare git directory (``/work/.mirror/<owner>+<name>/repo``). This
script copies the images of one set out of it, keeps what the set's notes say to keep (one of each augmented
triple of the work-site set, the person images of COCO128), and writes ``SOURCE.json`` beside them with the
repository, the commit and the path it read, so a run can be rebuilt. The images are never committed.

    python -m training.fetched --set worksite --set voc_shwd --set coco128_person --set rwmfd
    python -m training.fetched --list
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm


@dataclass(frozen=True)
class FetchedSet:
    """One set: where it lives and which files of that path to keep."""

    repo: str  # owner/name on GitHub
    path: str  # folder inside the repository
    commit: str = "HEAD"  # a commit where the folder exists (HEAD when it still does)
    keep: Callable[[list[str]], list[str]] | None = None  # filter on the sorted file paths (None = all images)
    what: str = ""
    frame_every: int = 0  # > 0: the set is videos; every Nth frame of each is staged as a JPEG


def _one_per_original(paths: list[str]) -> list[str]:
    """Roboflow exports name variants ``<orig>_jpg.rf.<hash>.jpg``: keep the first of each original."""
    seen: dict[str, str] = {}
    for p in paths:
        seen.setdefault(Path(p).name.split(".rf.")[0], p)
    return sorted(seen.values())


def _coco_person(paths: list[str], labels: dict[str, str]) -> list[str]:
    """COCO128 images whose YOLO label file has class 0 (person), one copy per image name."""
    out: dict[str, str] = {}
    for p in paths:
        txt = labels.get(Path(p).stem, "")
        if any(line.split()[:1] == ["0"] for line in txt.splitlines()):
            out.setdefault(Path(p).name, p)
    return sorted(out.values())


SETS: dict[str, FetchedSet] = {
    "worksite": FetchedSet("Panly23/Labeling-data-for-safety-helmets-and-work-uniforms", "dataset/train/images",
                           keep=_one_per_original, what="work sites, 1-15 people near to mid distance"),
    "voc_shwd": FetchedSet("TigerandRosa/paper_code", "VOCdevkit/VOC2007/JPEGImages",
                           what="street, indoor and site photos, groups at 3-30 m"),
    "coco128_person": FetchedSet("lightly-ai/coco128_yolo", "images", what="COCO scenes with people"),
    "rwmfd": FetchedSet("X-zhangyang/Real-World-Masked-Face-Dataset", "RWMFD_part_1",
                        what="masked faces and street scenes"),
    "celeba": FetchedSet("karthikSingireddy/cs389-hw4", "celebA", what="CelebA aligned 89x109, images 1-10000"),
    "utkface": FetchedSet("mattans/AgeProgression", "data/UTKFace/unlabeled", what="UTKFace aligned 200x200"),
    "yaleb": FetchedSet("Uranium2/recognition", "CroppedYale", commit="55008b5", what="Extended Yale B, 38 people"),
    "liveportrait": FetchedSet("KwaiVGI/LivePortrait", "assets/examples/driving", frame_every=4,
                               what="talking heads of 12 people, close and mostly frontal, moving and making faces"),
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm", ".bmp"}
VIDEO_SUFFIXES = {".mp4"}


def mirror_dir(mirror: Path, repo: str) -> Path:
    """The bare git directory the fetch tool made for ``repo``."""
    return mirror / repo.replace("/", "+") / "repo"


def git(gitdir: Path, *args: str) -> bytes:
    """Run git on a bare directory; raise with git's message on failure."""
    r = subprocess.run(["git", f"--git-dir={gitdir}", *args], capture_output=True)
    if r.returncode:
        raise RuntimeError(f"git {' '.join(args)} in {gitdir}: {r.stderr.decode().strip()}")
    return r.stdout


def coco_labels(gitdir: Path, commit: str) -> dict[str, str]:
    """{image stem: YOLO label text} of the COCO128 object-detection labels."""
    tar = tarfile.open(fileobj=io.BytesIO(git(gitdir, "archive", commit, "object_detection/labels")))
    return {Path(m.name).stem: tar.extractfile(m).read().decode() for m in tar.getmembers()  # type: ignore[union-attr]
            if m.isfile() and m.name.endswith(".txt")}


def video_frames(video: Path, every: int) -> None:
    """Replace ``video`` by every ``every``-th frame of it, ``<stem>__f<frame>.jpg`` beside it."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    k = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if k % every == 0:
            cv2.imwrite(str(video.with_name(f"{video.stem}__f{k:05d}.jpg")), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
        k += 1
    cap.release()
    if k == 0:
        raise RuntimeError(f"{video}: no frame could be read")
    video.unlink()


def stage(name: str, mirror: Path, out_root: Path) -> Path:
    """Copy set ``name`` out of its mirror into ``out_root/name`` with a SOURCE.json; returns the folder."""
    s = SETS[name]
    gitdir = mirror_dir(mirror, s.repo)
    if not gitdir.is_dir():
        raise FileNotFoundError(f"{gitdir}: no snapshot of {s.repo} (bring it with the fetch tool first)")
    commit = git(gitdir, "rev-parse", f"{s.commit}^{{commit}}").decode().strip()
    names = git(gitdir, "ls-tree", "-r", "--name-only", commit, s.path).decode().splitlines()
    paths = sorted(p for p in names if Path(p).suffix.lower() in (VIDEO_SUFFIXES if s.frame_every else IMAGE_SUFFIXES))
    if name == "coco128_person":
        paths = _coco_person(paths, coco_labels(gitdir, commit))
    elif s.keep is not None:
        paths = s.keep(paths)
    out = out_root / name
    out.mkdir(parents=True, exist_ok=True)
    tar = tarfile.open(fileobj=io.BytesIO(git(gitdir, "archive", commit, s.path)))
    wanted = set(paths)
    for m in tqdm(tar.getmembers(), desc=name, mininterval=5):
        if m.name in wanted:
            dest = out / m.name[len(s.path) + 1:].replace("/", "__")
            dest.write_bytes(tar.extractfile(m).read())  # type: ignore[union-attr]
            if s.frame_every:
                video_frames(dest, s.frame_every)
    source = {"repository": s.repo, "commit": commit, "path": s.path, "what": s.what, "files": len(paths),
              "names": "path under the folder with '/' -> '__'" + (
                  f"; every {s.frame_every}th frame of each video as <video>__f<frame>.jpg" if s.frame_every else "")}
    (out / "SOURCE.json").write_text(json.dumps(source, indent=1))
    print(f"{out}: {len(paths)} {'videos' if s.frame_every else 'images'} from {s.repo}@{commit[:10]}:{s.path}")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", default=[], choices=sorted(SETS), help="set to stage (repeatable)")
    ap.add_argument("--mirror", default="/work/.mirror", 
                    help="where the fetch tool leaves snapshots (default: %(default)s)")
    ap.add_argument("--out", default="runs/data", help="staging root (default: %(default)s)")
    ap.add_argument("--list", action="store_true", help="list the sets and exit")
    args = ap.parse_args(argv)
    if args.list or not args.set:
        for k, s in SETS.items():
            print(f"{k:15s} {s.repo}:{s.path}  {s.what}")
        return
    try:
        for name in args.set:
            stage(name, Path(args.mirror), Path(args.out))
    except (FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
