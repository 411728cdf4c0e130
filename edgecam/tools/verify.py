"""``edgecam models verify`` (and ``deploy/verify.py``): every shipped model checked against its ``model.json``.

Per model folder: the manifest has the keys every edgecam model carries (name, file, sha256, input, output,
labels, metrics with the command that measured them, training_data, license) and a model card (README.md,
whose linked images exist); the ONNX file's sha256 matches; the input spec is usable (layout, colour order,
size, mean/std per channel) and agrees with the graph's input (name, rank, channels, static size); a forward
pass on a random image through the runtime class of the model's kind (detector / embedding / classifier,
which check the outputs against the manifest: 13 head channels, ``output.dim``, one logit per label) gives
finite outputs. Figures: file size, forward ms (one thread), MACs when ``onnx`` is installed.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecam import MODELS_DIR, EdgecamError
from edgecam.manifest import Manifest, ModelError, load_manifest, resolve_model_dir, session, to_tensor

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("name", "file", "sha256", "input", "output", "labels", "metrics", "training_data", "license")
COLORS = {"gray": 1, "bgr": 3, "rgb": 3}
ANY_SIZE_PROBE = (320, 240)  # (w, h) fed to a model whose input size is free


@dataclass
class Verdict:
    """The checks of one model folder: ``problems`` (empty: verified) and figures."""

    folder: Path
    problems: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"model": self.folder.name, "folder": str(self.folder), "ok": self.ok, "problems": self.problems,
                **self.figures}


def model_kind(m: Manifest) -> str:
    """``detector``, ``embedding`` or ``classifier`` from the manifest's output section; '' when unknown."""
    out = m.output
    if out.get("kind") == "centernet":
        return "detector"
    return str(out.get("type", "")) if out.get("type") in ("embedding", "classifier") else ""


def check_keys(m: Manifest) -> list[str]:
    """Missing manifest keys, and metrics without the command that produced them."""
    problems = [f"model.json lacks key '{k}'" for k in REQUIRED_KEYS if k not in m.data]
    metrics = m.data.get("metrics")
    if isinstance(metrics, dict) and metrics and not _has_command(metrics):
        problems.append("model.json metrics do not say which command measured them (key 'command')")
    return problems


def _has_command(node: Any) -> bool:
    if isinstance(node, dict):
        return "command" in node or any(_has_command(v) for v in node.values())
    return False


def check_input_spec(spec: dict[str, Any]) -> list[str]:
    """Problems with ``input``: layout, colour order, size, mean/std lengths and values."""
    problems = []
    if spec.get("layout", "NCHW") not in ("NCHW", "NHWC"):
        problems.append(f"input.layout {spec.get('layout')!r} is not NCHW or NHWC")
    color = spec.get("color")
    if color not in COLORS:
        return [*problems, f"input.color {color!r} is not one of {', '.join(COLORS)}"]
    size = spec.get("size")
    if size is not None and not (isinstance(size, list) and len(size) == 2
                                 and all(isinstance(v, int) and 0 < v <= 4096 for v in size)):
        problems.append(f"input.size {size!r} is not null or [width, height] in pixels")
    for key in ("mean", "std"):
        values = spec.get(key, [0.0] if key == "mean" else [1.0])
        if not isinstance(values, list) or len(values) not in (1, COLORS[color]):
            problems.append(f"input.{key} {values!r}: want 1 or {COLORS[color]} values for color {color}")
        elif key == "std" and any(float(v) == 0 for v in values):
            problems.append("input.std has a zero")
    return problems


def probe_size(spec: dict[str, Any]) -> tuple[int, int]:
    """(w, h) of the test image: the input size, or 320x240 padded to ``pad_multiple`` for any-size models."""
    if spec.get("size"):
        return int(spec["size"][0]), int(spec["size"][1])
    m = int(spec.get("pad_multiple", 1) or 1)
    w, h = ANY_SIZE_PROBE
    return -(-w // m) * m, -(-h // m) * m


def check_graph_input(m: Manifest, sess: Any) -> list[str]:
    """The graph's input against the spec: one input, its name, rank 4, channels and static size."""
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        return [f"graph has {len(inputs)} inputs, want 1"]
    spec, graph_in = m.input, inputs[0]
    problems = []
    if spec.get("name") and spec["name"] != graph_in.name:
        problems.append(f"input.name {spec['name']!r} but the graph's input is {graph_in.name!r}")
    shape = list(graph_in.shape)
    if len(shape) != 4:
        return [*problems, f"graph input {graph_in.name} has shape {shape}, want rank 4"]
    nchw = spec.get("layout", "NCHW") == "NCHW"
    c, h, w = (shape[1], shape[2], shape[3]) if nchw else (shape[3], shape[1], shape[2])
    want_c = COLORS.get(spec.get("color", ""), 0)
    if isinstance(c, int) and c != want_c:
        problems.append(f"graph input has {c} channels, input.color {spec.get('color')} gives {want_c}")
    if spec.get("size") and isinstance(h, int) and isinstance(w, int) and [w, h] != list(spec["size"]):
        problems.append(f"graph input is {w}x{h}, input.size says {spec['size'][0]}x{spec['size'][1]}")
    return problems


def forward(m: Manifest, sess: Any, rng: np.random.Generator) -> tuple[list[np.ndarray], float]:
    """One pass on a random image at the probe size: the outputs and the median ms of 5 runs."""
    w, h = probe_size(m.input)
    x = to_tensor([rng.integers(0, 256, (h, w, 3), dtype=np.uint8)], m.input)
    name = sess.get_inputs()[0].name
    outs = sess.run(None, {name: x})
    times = []
    for _ in range(5):
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return [np.asarray(o) for o in outs], float(np.median(times) * 1000)


def check_kind(m: Manifest, kind: str) -> list[str]:
    """Load the model through its runtime class, whose warm-up checks the outputs against the manifest."""
    try:
        if kind == "detector":
            from edgecam.detect import FaceDetector

            FaceDetector(m.folder).close()
        elif kind in ("embedding", "classifier"):
            from edgecam.recognize import make_recognizer

            make_recognizer("identity" if kind == "embedding" else "classifier", m.folder).close()
        else:
            return ["output: neither a detector (kind centernet) nor a recognizer (type embedding / classifier)"]
    except EdgecamError as e:
        return [str(e)]
    return []


def check_card(folder: Path) -> list[str]:
    """README.md model card present; the images it links exist."""
    card = folder / "README.md"
    if not card.is_file():
        return ["no model card (README.md)"]
    links = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", card.read_text(encoding="utf-8"))
    return [f"README.md shows {link}, which does not exist" for link in links
            if "://" not in link and not (folder / link).is_file()]


def verify_model(name_or_path: str | Path) -> Verdict:
    """Every check of one model folder (or shipped model name)."""
    try:
        folder = resolve_model_dir(name_or_path)
    except ModelError as e:
        return Verdict(Path(name_or_path), [str(e)])
    v = Verdict(folder)
    try:
        m = load_manifest(folder)  # keys file/sha256/input present, file present, sha256 matches
    except ModelError as e:
        v.problems.append(str(e))
        return v
    kind = model_kind(m)
    v.figures.update(kind=kind, file=m.data["file"], file_bytes=m.onnx_path.stat().st_size, sha256="ok",
                     input=_describe_input(m.input))
    v.problems += check_keys(m) + check_input_spec(m.input) + check_card(folder)
    if v.problems:
        return v
    try:
        sess = session(m, threads=1)
        v.problems += check_graph_input(m, sess)
        if not v.problems:
            outs, ms = forward(m, sess, np.random.default_rng(0))
            v.figures.update(outputs=[list(o.shape) for o in outs], forward_ms=round(ms, 3))
            if not all(np.isfinite(o).all() for o in outs if o.dtype.kind == "f"):
                v.problems.append("forward pass gave NaN or inf")
    except ModelError as e:
        v.problems.append(str(e))
    except Exception as e:  # onnxruntime's own errors for an input the graph refuses
        v.problems.append(f"forward pass failed: {str(e).splitlines()[0][:200]}")
    if not v.problems:
        v.problems += check_kind(m, kind)
    v.figures["macs"] = _macs(m)
    return v


def _describe_input(spec: dict[str, Any]) -> str:
    size = "x".join(str(s) for s in spec["size"]) if spec.get("size") else "any size"
    return f"{spec.get('layout', 'NCHW')} {spec.get('color')} {size}"


def _macs(m: Manifest) -> int | None:
    from edgecam.tools.macs import MacsUnavailable, macs

    w, h = probe_size(m.input)
    c = COLORS.get(m.input.get("color", ""), 3)
    shape = (1, c, h, w) if m.input.get("layout", "NCHW") == "NCHW" else (1, h, w, c)
    try:
        return macs(m.onnx_path, shape)
    except MacsUnavailable as e:
        logger.info("MACs left out: %s", e)
        return None


def shipped_models(models_dir: Path = MODELS_DIR) -> list[Path]:
    """Model folders under ``models_dir`` (every sub-folder with a model.json)."""
    found = sorted(p.parent for p in models_dir.glob("*/model.json"))
    for folder in sorted(p for p in models_dir.iterdir() if p.is_dir() and p not in found):
        logger.warning("%s: no model.json, not a model folder (skipped)", folder)
    return found


def verify(models: list[str] | None = None) -> list[Verdict]:
    """Verify the named models (names or folders), or every shipped one."""
    targets: list[str | Path] = list(models) if models else list(shipped_models())
    if not targets:
        raise EdgecamError(f"{MODELS_DIR}: no model folders to verify")
    return [verify_model(t) for t in targets]


def runtime_info() -> dict[str, Any]:
    """The onnxruntime version and the execution providers this build has (CPU only from PyPI)."""
    import onnxruntime as ort

    return {"version": ort.__version__, "providers": list(ort.get_available_providers())}


def print_verdicts(verdicts: list[Verdict]) -> None:
    """One line per model, then its problems."""
    rt = runtime_info()
    print(f"onnxruntime {rt['version']}, execution providers here: {', '.join(rt['providers'])}")
    print(f"{'model':<18} {'kind':<10} {'input':<20} {'file KB':>8} {'MMACs':>8} {'ms':>7}  verdict")
    for v in verdicts:
        f = v.figures
        macs = f"{f['macs'] / 1e6:.1f}" if f.get("macs") else "-"
        ms = f"{f['forward_ms']:.2f}" if "forward_ms" in f else "-"
        kb = f"{f['file_bytes'] / 1000:.1f}" if "file_bytes" in f else "-"
        print(f"{v.folder.name:<18} {f.get('kind', '-') or '-':<10} {f.get('input', '-'):<20} {kb:>8} {macs:>8} "
              f"{ms:>7}  {'ok' if v.ok else 'FAILED'}")
        for p in v.problems:
            print(f"  - {p}")


def verdicts_json(verdicts: list[Verdict]) -> str:
    """All verdicts as one JSON document."""
    return json.dumps({"ok": all(v.ok for v in verdicts), "onnxruntime": runtime_info(),
                       "models": [v.as_dict() for v in verdicts]}, indent=2)
