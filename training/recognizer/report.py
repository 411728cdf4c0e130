"""The recognizer's stage-by-stage compression report, teacher and students side by side in one run.

    python -m training.recognizer.report        # ~10 min on one core: embeds the eval people with every stage

Rows: teacher (SFace, the int8bq file and its fp32 re-export), student trained on labels only, student + KD
(from scratch), SFace-s2 + KD (teacher weights, stride-2 stem), + structured pruning, + low-rank, + more
distillation on detector-aligned crops (stages whose checkpoint is gone are skipped), the stop-9 shipped file
(``runs/recognizer/stop9.onnx``, see ``configs/pairs.yaml``), + KD on 3x the faces as the detector crops them
(``pairs``), on 4x (``pairs_all``), on the wild6 detector's crops (``pairs_w6``) and once more, on the shipped
wild13c detector's crops (``pairs_w13c``), + int8 static (int8 weights and activations, onnxruntime's integer
kernels), + int8 weights (the shipped file: int8 weights folded to fp32 at load), and the option not shipped:
mirror fusion (the shipped float model embedding the crop and its mirror in one graph). Columns: parameters,
MACs per crop, ONNX file size, zipped and Huffman-coded weight size, LFW 10-fold verification accuracy and
open-set identification rate at 1 % FAR on the held-out eval people (protocol: ``evaluate``), and
single-thread onnxruntime milliseconds per crop, timed interleaved (round-robin over the models) so that
load on the machine affects them alike. Writes ``runs/recognizer/report/stages.{json,md,png}``, copies the
table and plot into the model card (``edgecam/models/face_recognizer/README.md``) and the shipped model's
figures into its ``model.json`` metrics.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.compress import report as table
from training.compress.export import export_onnx, ort_session
from training.compress.size import sizes
from training.recognizer.data import DEFAULT_OUT, CropSet
from training.recognizer.evaluate import evaluate
from training.recognizer.model import count_macs, count_params, sface
from training.recognizer.ship import INPUT_SPEC, export_checkpoint, onnx_embedder, student_from_onnx
from training.recognizer.teacher import SFACE_PATH, normalize_input, sface_teacher

REPO = Path(__file__).resolve().parents[2]
RUNS = REPO / "runs/recognizer"
MODEL_DIR = REPO / "edgecam/models/face_recognizer"
TEACHER_SPEC = {"name": "data", "layout": "NCHW", "color": "rgb", "size": [112, 112], "mean": [0.0] * 3,
                "std": [1.0] * 3, "fixed_batch": True}
COMMAND = "python -m training.recognizer.report"


@dataclass(frozen=True)
class Stage:
    """One row: a checkpoint to export, or an ONNX file as it is."""

    name: str
    ckpt: Path | None = None
    onnx: Path | None = None
    spec: dict | None = None
    flip: bool = False  # export with the mirror fusion (``model.FlipFusion``)
    rebuild: bool = False  # an ONNX student whose checkpoint is gone: params and MACs of ``ship.student_from_onnx``


TEACHER_FP32 = Path("teacher_fp32")  # marker: re-export the PyTorch replica of SFace in fp32
FINAL = Path("final")  # marker: the float checkpoint the shipped model was exported from (its model.json)


def final_checkpoint() -> Path:
    """The shipped model's source checkpoint (``source_checkpoint`` in its model.json; low-rank by default)."""
    mj = MODEL_DIR / "model.json"
    src = json.loads(mj.read_text()).get("source_checkpoint") if mj.exists() else None
    return REPO / src if src else RUNS / "lowrank/ckpt.pt"

STAGES = [
    Stage("teacher: SFace (int8bq file)", onnx=SFACE_PATH, spec=TEACHER_SPEC),
    Stage("teacher: SFace fp32", ckpt=TEACHER_FP32),
    Stage("student, labels only", ckpt=RUNS / "labels/ckpt.pt"),
    Stage("student + KD", ckpt=RUNS / "kd_scratch/ckpt.pt"),
    Stage("SFace-s2 + KD", ckpt=RUNS / "kd/ckpt.pt"),
    Stage("+ pruning", ckpt=RUNS / "prune/ckpt.pt"),
    Stage("+ low-rank", ckpt=RUNS / "lowrank/ckpt.pt"),
    Stage("+ fine-tune on detector crops", ckpt=RUNS / "finetune/ckpt.pt"),
    Stage("stop 9 shipped (int8 weights)", onnx=RUNS / "stop9.onnx", spec=INPUT_SPEC, rebuild=True),
    Stage("+ KD on 3x the faces, as the detector crops them", ckpt=RUNS / "pairs_ft/ckpt.pt"),
    Stage("+ KD on every UTKFace photo (4x the faces)", ckpt=RUNS / "pairs_all_ft/ckpt.pt"),
    Stage("+ KD on the wild6 detector's crops", ckpt=RUNS / "pairs_w6_ft/ckpt.pt"),
    Stage("+ KD on the same crops once more", ckpt=RUNS / "pairs_w6_ft2/ckpt.pt"),
    Stage("+ KD on the shipped detector's crops (wild13c)", ckpt=RUNS / "pairs_w13c_ft/ckpt.pt"),
    Stage("+ int8 static (weights + activations)", onnx=RUNS / "ship/int8_static/face_recognizer.onnx",
          spec=INPUT_SPEC),
    Stage("+ int8 weights (shipped)", onnx=MODEL_DIR / "face_recognizer.onnx", spec=INPUT_SPEC),
    Stage("option: float + mirror fusion (not shipped)", ckpt=FINAL, flip=True),
]


def stage_model(stage: Stage, data: CropSet, work: Path) -> tuple[Path, dict, dict]:
    """(ONNX path, input spec, torch figures) of a stage; checkpoints are exported to ``work``."""
    if stage.onnx is not None:
        figures = {}
        if stage.spec is TEACHER_SPEC:
            m = sface()
            figures = {"params": count_params(m), "macs": count_macs(m, (3, 112, 112))}
        elif stage.onnx.name == "face_recognizer.onnx" and final_checkpoint().exists():  # its float source
            m = torch.load(final_checkpoint(), map_location="cpu", weights_only=False)["model"].eval()
            mirror = json.loads((MODEL_DIR / "model.json").read_text()).get("mirror_fusion", False)
            figures = {"params": count_params(m), "macs": count_macs(m, (3, 112, 112)) * (2 if mirror else 1)}
        elif stage.rebuild:
            m = student_from_onnx(stage.onnx, normalize_input(np.asarray(data.crops[:64])))
            figures = {"params": count_params(m), "macs": count_macs(m, (3, 112, 112))}
        return stage.onnx, stage.spec or INPUT_SPEC, figures
    assert stage.ckpt is not None
    ckpt = final_checkpoint() if stage.ckpt == FINAL else stage.ckpt
    if stage.ckpt == TEACHER_FP32:
        model = sface_teacher()
        path = work / "sface_fp32.onnx"
        export_onnx(model, path, normalize_input(np.asarray(data.crops[:4])), "input", "embedding")
    else:
        path = work / (ckpt.parent.name + ("_mirror" if stage.flip else "") + ".onnx")
        export_checkpoint(ckpt, path, data, flip=stage.flip)
        model = torch.load(ckpt, map_location="cpu", weights_only=False)["model"].eval()
    macs = count_macs(model, (3, 112, 112)) * (2 if stage.flip else 1)  # the mirror is a second pass
    return path, INPUT_SPEC, {"params": count_params(model), "macs": macs}


def interleaved_ms(paths: list[Path], specs: list[dict], crop: np.ndarray, rounds: int = 20,
                   per_round: int = 5) -> list[float]:
    """Median single-thread ms per crop of each model, timed round-robin."""
    runs = []
    for p, s in zip(paths, specs, strict=True):
        sess = ort_session(p, threads=1)
        x = onnx_input(crop, s)
        name = sess.get_inputs()[0].name
        for _ in range(3):
            sess.run(None, {name: x})
        runs.append((sess, name, x))
    times: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for k, (sess, name, x) in enumerate(runs):
            for _ in range(per_round):
                t = time.perf_counter()
                sess.run(None, {name: x})
                times[k].append(time.perf_counter() - t)
    return [float(np.median(t) * 1000) for t in times]


def onnx_input(rgb: np.ndarray, spec: dict) -> np.ndarray:
    from edgecam.manifest import to_tensor

    return to_tensor([np.ascontiguousarray(rgb[:, :, ::-1])], spec)


def measure(stages: list[Stage], data: CropSet, work: Path) -> list[dict]:
    """Every figure of every available stage (stages without a checkpoint / file are skipped)."""
    rows, paths, specs = [], [], []
    for st in stages:
        src = final_checkpoint() if st.ckpt == FINAL else (st.ckpt or st.onnx)
        if src is None or (src != TEACHER_FP32 and not src.exists()):
            print(f"skip {st.name}: {st.ckpt or st.onnx} missing")
            continue
        path, spec, figs = stage_model(st, data, work)
        res = evaluate(onnx_embedder(path, spec), data, "eval")  # type: ignore[arg-type]
        rows.append({"stage": st.name, **figs, **sizes(path), "acc": res.lfw_acc, "acc_std": res.lfw_acc_std,
                     "dir": res.dir_at_far, "rank1": res.rank1, "pairs": res.pairs, "onnx": str(path)})
        paths.append(path)
        specs.append(spec)
        print(json.dumps(rows[-1]))
    ms = interleaved_ms(paths, specs, np.asarray(data.crops[0]))
    for r, t in zip(rows, ms, strict=True):
        r["ms"] = t
    fast = next((r for r in rows if r["stage"].startswith("teacher: SFace (int8bq")), None)
    big = next((r for r in rows if r["stage"] == "teacher: SFace fp32"), None)
    for r in rows:
        r["speedup"] = fast["ms"] / r["ms"] if fast else None  # vs the teacher file we were given
        r["speedup_fp32"] = big["ms"] / r["ms"] if big else None  # vs SFace in fp32
        r["smaller"] = big["file"] / r["file"] if big else None  # vs SFace in fp32
    return rows


def update_model_folder(rows: list[dict], out: Path) -> None:
    """Shipped-model figures into model.json metrics; the table and plot into the model card."""
    shipped = next((r for r in rows if "(shipped)" in r["stage"]), None)
    teacher = next((r for r in rows if r["stage"] == "teacher: SFace fp32"), None)
    mj = MODEL_DIR / "model.json"
    if shipped is None or not mj.exists():
        return
    data = json.loads(mj.read_text())
    keys = ("params", "macs", "file", "zip", "huffman", "acc", "acc_std", "dir", "rank1", "ms", "speedup",
            "speedup_fp32", "pairs")
    data["metrics"] = {**data.get("metrics", {}),  # other commands' figures stay (calibrate: "calibration")
                       "shipped": {k: shipped.get(k) for k in keys},
                       "teacher": {k: teacher.get(k) for k in keys} if teacher else None,
                       "protocol": "LFW eval people (100, never trained on), crops from our detector; 10-fold "
                                   "verification on 6000 seeded pairs; open-set DIR at 1% FAR (50 enrolled x 3 "
                                   "images); ms = median single-thread onnxruntime per crop, interleaved",
                       "command": COMMAND}
    mj.write_text(json.dumps(data, indent=2) + "\n")
    shutil.copy(out / "stages.png", MODEL_DIR / "stages.png")
    card = MODEL_DIR / "README.md"
    if card.exists():
        text = card.read_text()
        start, end = "<!-- stages:start -->", "<!-- stages:end -->"
        if start in text and end in text:
            md = (out / "stages.md").read_text()
            text = text[: text.index(start) + len(start)] + "\n" + md + text[text.index(end):]
            card.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_OUT, help="crop folder (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=RUNS / "report", help="report folder (default: %(default)s)")
    ap.add_argument("--no-model-update", action="store_true", help="do not touch edgecam/models/face_recognizer")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = CropSet.load(args.data)
    rows = measure(STAGES, data, args.out / "onnx")
    print(table.write(rows, args.out, "stages", "face recognizer: size vs LFW verification (eval people)"))
    if not args.no_model_update:
        update_model_folder(rows, args.out)


if __name__ == "__main__":
    main()
