"""Compression toolkit: each step gives a smaller model that still loads and runs; quantization round-trips."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.compress.distill import DistillConfig, kl_loss, load_model, relational_loss, train  # noqa: E402
from training.compress.export import export_onnx  # noqa: E402
from training.compress.lowrank import factorize_flatten_head, factorize_model  # noqa: E402
from training.compress.prune import channel_groups, prune  # noqa: E402
from training.compress.size import huffman_bytes, sizes  # noqa: E402
from training.recognizer.model import FaceMobileNet, NetConfig, count_macs, count_params  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def tiny(head: str = "flatten", classes: int = 0) -> FaceMobileNet:
    torch.manual_seed(0)
    cfg = NetConfig(stem=8, blocks=((16, 2), (16, 1), (32, 2)), stem_stride=2, input_size=32, emb=16, head=head,
                    head_rank=2, classes=classes)
    m = FaceMobileNet(cfg)
    with torch.no_grad():  # non-trivial BN statistics so pruning choices matter
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.2, 1.5)
    return m.eval()


def test_channel_groups_cover_every_dense_conv() -> None:
    m = tiny()
    groups = channel_groups(m, torch.zeros(1, 3, 32, 32))
    names = [g.name for g in groups]
    assert names == ["stem.0", "blocks.0.pw.0", "blocks.1.pw.0", "blocks.2.pw.0"]
    last = groups[-1]
    assert [type(c).__name__ for c, _ in last.consumers] == ["Linear"] and last.consumers[0][1] == 4 * 4


@pytest.mark.parametrize("head", ["flatten", "lowrank", "gdc"])
def test_prune_makes_a_smaller_working_model(head: str, tmp_path: Path) -> None:
    m = tiny(head)
    x = torch.randn(4, 3, 32, 32)
    same = tiny(head)
    prune(same, x[:1], [x], keep=1.0)
    assert torch.allclose(same(x), m(x), atol=1e-5)  # keeping everything changes nothing
    before, macs_before = count_params(m), count_macs(m, (3, 32, 32))
    changes = prune(m, x[:1], [x], keep=0.5, multiple=4)
    assert changes["blocks.2.pw.0"] == (32, 16)
    assert count_params(m) < 0.6 * before and count_macs(m, (3, 32, 32)) < 0.6 * macs_before
    assert m(x).shape == (4, 16)
    export_onnx(m, tmp_path / "p.onnx", x)  # the pruned structure exports and onnxruntime agrees


def test_prune_keeps_the_important_channels() -> None:
    m = tiny()
    with torch.no_grad():  # make channels 0..7 of the last block's output dead
        m.blocks[2].pw[1].weight[:8] = 0
        m.blocks[2].pw[1].bias[:8] = -50.0
        m.blocks[2].pw[2].weight[:] = 0.0  # PReLU slope 0: negative inputs give 0
    x = torch.randn(8, 3, 32, 32)
    want = m(x)
    prune(m, x[:1], [x], keep=0.75)
    assert m.blocks[2].pw[0].out_channels == 24
    assert torch.allclose(m(x), want, atol=1e-4)  # only dead channels went


def test_lowrank_full_rank_is_exact_and_low_rank_is_smaller() -> None:
    m = tiny()
    x = torch.randn(4, 3, 32, 32)
    want = m(x)
    dw, fc = factorize_flatten_head(m.fc, 32, (4, 4), rank=16)  # rank = H*W: exact
    m.head_spatial, m.fc = torch.nn.Sequential(dw, torch.nn.Flatten()), fc
    assert torch.allclose(m(x), want, atol=1e-4)
    before = count_params(m)
    done = factorize_model(m, energy=0.5, min_saving=0.1)
    assert done and count_params(m) < before
    assert m(x).shape == (4, 16)


def test_grow_computes_the_same_function_with_more_parameters() -> None:
    """train.py finetune --grow: low-rank 1x1 pairs merged into one conv, the head widened; the output is
    unchanged, the grown net rebuilds from its config, and the new head features can learn."""
    from training.recognizer.train import grow

    torch.manual_seed(0)
    m = FaceMobileNet(NetConfig(stem=8, blocks=((16, 2), (24, 1), (32, 2)), stem_stride=2, input_size=32, emb=16,
                                head="lowrank", head_rank=2, pw_ranks=(0, 6, 0))).eval()
    x = torch.randn(4, 3, 32, 32)
    want, before = m(x), count_params(m)
    assert len(grow(m, head_rank=3)) == 2
    assert m.cfg.pw_ranks == (0, 0, 0) and m.cfg.head_rank == 3 and count_params(m) > before
    assert torch.allclose(m(x), want, atol=1e-5)
    rebuilt = FaceMobileNet(m.cfg)
    rebuilt.load_state_dict(m.state_dict())
    assert torch.allclose(rebuilt.eval()(x), want, atol=1e-5)
    m(x).square().sum().backward()
    assert m.fc.weight.grad[:, 2::3].abs().sum() > 0  # the new columns start at zero, not stuck there


@pytest.mark.slow
def test_distill_reduces_the_loss_and_resumes(tmp_path: Path) -> None:
    teacher, student = tiny(), tiny("gdc")
    torch.manual_seed(1)
    data = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        targets = teacher(data)

    def batches(step: int) -> tuple:
        i = torch.from_numpy(np.random.default_rng(step).choice(64, 16, replace=False))
        return data[i], targets[i], None

    def cos_to_teacher(m: torch.nn.Module) -> dict[str, float]:
        m.eval()
        with torch.no_grad():
            return {"cos": float(torch.nn.functional.cosine_similarity(m(data), targets).mean())}

    start = cos_to_teacher(student)["cos"]
    cfg = DistillConfig(steps=30, lr=5e-3, warmup=3, ckpt_every=10, eval_every=0)
    ckpt = tmp_path / "ckpt.pt"
    model, hist = train(student, batches, cfg, ckpt, cos_to_teacher)
    assert hist[-1]["cos"] > start + 0.2
    more = DistillConfig(steps=40, lr=5e-3, warmup=3, ckpt_every=10, eval_every=0)
    model2, hist2 = train(tiny("gdc"), batches, more, ckpt, cos_to_teacher)  # resumes at step 30
    assert hist2[0]["step"] == 0 and any(h.get("step") == 40 for h in hist2)
    assert torch.load(ckpt, weights_only=False)["step"] == 40
    assert isinstance(load_model(ckpt), FaceMobileNet)


def test_label_loss_with_fixed_centres_skips_unlabelled_crops_and_separates_people(tmp_path: Path) -> None:
    student = tiny("gdc")
    torch.manual_seed(2)
    data = torch.randn(48, 3, 32, 32)
    labels = torch.arange(48) % 4 - 1  # a quarter of the crops have no identity (-1)
    centres = torch.nn.functional.normalize(torch.randn(3, 16), dim=1)

    def batches(step: int) -> tuple:
        i = torch.from_numpy(np.random.default_rng(step).choice(48, 16, replace=False))
        return data[i], None, labels[i]

    def margin(m: torch.nn.Module) -> dict[str, float]:  # cos to the own centre minus the best other one
        m.eval()
        with torch.no_grad():
            cos = torch.nn.functional.normalize(m(data[labels >= 0]), dim=1) @ centres.T
        own = torch.nn.functional.one_hot(labels[labels >= 0], 3).bool()
        return {"margin": float((cos[own] - cos.masked_fill(own, -2).amax(1)).mean())}

    start = margin(student)["margin"]
    cfg = DistillConfig(steps=40, lr=5e-3, warmup=3, w_cos=0.0, w_rel=0.0, w_label=1.0, classes=3, eval_every=0)
    model, hist = train(student, batches, cfg, tmp_path / "ckpt.pt", margin, centres=centres)
    assert hist[-1]["margin"] > start + 0.3
    assert torch.equal(torch.load(tmp_path / "ckpt.pt", weights_only=False)["head"]["weight"], centres)


def test_losses() -> None:
    t = torch.randn(8, 16)
    assert float(relational_loss(t, 3 * t)) == pytest.approx(0.0, abs=1e-6)
    assert float(relational_loss(torch.randn(8, 16), t)) > 0.01
    assert float(kl_loss(t, t, 4.0)) == pytest.approx(0.0, abs=1e-6)


def test_huffman_sizes() -> None:
    rng = np.random.default_rng(0)
    assert huffman_bytes(np.zeros(8000, np.uint8)) == 1000 + 1  # 1 bit per symbol + table
    uniform = rng.integers(0, 256, 100_000).astype(np.uint8)
    assert 99_000 < huffman_bytes(uniform) < 101_500
    peaked = np.clip(rng.normal(128, 3, 100_000), 0, 255).astype(np.uint8)
    assert huffman_bytes(peaked) < 0.5 * 100_000


@pytest.mark.parametrize("weights_only", [False, True])
def test_quantize_round_trip(tmp_path: Path, weights_only: bool) -> None:
    from edgecam.tools import quantize

    m = FaceMobileNet(NetConfig(stem=16, blocks=((64, 2), (128, 1), (128, 2)), stem_stride=2, input_size=32,
                                emb=16, head="gdc"))  # big enough that weights, not QDQ scales, make the size
    export_onnx(m.eval(), tmp_path / "fp32" / "m.onnx", torch.zeros(2, 3, 32, 32), "input", "embedding")
    from edgecam.manifest import sha256_file

    spec = {"name": "input", "layout": "NCHW", "color": "rgb", "size": [32, 32], "mean": [127.5] * 3,
            "std": [128.0] * 3}
    (tmp_path / "fp32" / "model.json").write_text(json.dumps(
        {"name": "m", "file": "m.onnx", "sha256": sha256_file(tmp_path / "fp32" / "m.onnx"), "input": spec,
         "output": {"type": "embedding", "dim": 16, "thresholds": {"known": 0.5, "unknown": 0.4}}}))
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for k in range(40):  # smooth random images, bigger than the input: the quantizer resizes them
        small = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
        cv2.imwrite(str(calib / f"{k}.png"), cv2.resize(small, (48, 48), interpolation=cv2.INTER_CUBIC))
    record = quantize.run(tmp_path / "fp32", calib, tmp_path / "int8", None, 40, "minmax",
                          weights_only=weights_only)
    check = record["check"]
    assert check["int8_bytes"] < 0.4 * check["fp32_bytes"]
    assert check["cosine_mean"] > (0.999 if weights_only else 0.95)
    manifest = json.loads((tmp_path / "int8" / "model.json").read_text())
    assert ("session_config" in manifest) == weights_only  # weights-only: folded to fp32 at load
    if weights_only:
        import onnx

        ops = {n.op_type for n in onnx.load(str(tmp_path / "int8" / "m_int8.onnx")).graph.node}
        assert "DequantizeLinear" in ops and "QuantizeLinear" not in ops  # activations stay float
    from edgecam.recognize import make_recognizer

    rec = make_recognizer("identity", tmp_path / "int8")  # the int8 folder is a valid model folder
    assert rec.embed([np.zeros((32, 32, 3), np.uint8)]).shape == (1, 16)
    assert sizes(tmp_path / "int8" / "m_int8.onnx")["huffman"] < check["int8_bytes"]


def test_quantize_cli_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, str(REPO / "deploy/quantize.py"), str(tmp_path / "nope"), "--calib",
                        str(tmp_path / "empty"), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no such model folder" in r.stderr


def test_export_rewrites_prelu_exactly(tmp_path: Path) -> None:
    import onnx

    m = tiny("gdc")
    x = torch.randn(3, 3, 32, 32)
    diff = export_onnx(m, tmp_path / "m.onnx", x)  # raises if onnxruntime disagrees with torch
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert "PRelu" not in ops and {"Mul", "Relu", "Add"} <= ops and diff < 1e-4


def test_flip_fusion_is_mirror_invariant_and_exports(tmp_path: Path) -> None:
    from training.recognizer.model import FlipFusion

    m = FaceMobileNet(NetConfig(stem=8, blocks=((16, 2), (32, 2)), stem_stride=2, input_size=32, emb=8,
                                head="gdc")).eval()
    f = FlipFusion(m).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        a, b = f(x), f(torch.flip(x, dims=[3]))
        plain = torch.nn.functional.normalize(m(x), dim=1) + torch.nn.functional.normalize(m(x.flip(3)), dim=1)
    assert a.shape == (3, 8)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, plain, atol=1e-5)
    assert export_onnx(f, tmp_path / "f.onnx", x, "input", "embedding") < 1e-3  # checked against onnxruntime


def test_pack_unpack_round_trip_leaves_the_eval_people_out(tmp_path: Path) -> None:
    from training.recognizer.data import CropSet, pack, unpack

    rng = np.random.default_rng(0)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    grey = cv2.resize(rng.integers(0, 255, (48, 8), np.uint8), (112, 112 * 6))  # smooth, like a face
    crops = np.ascontiguousarray(np.repeat(grey.reshape(6, 112, 112, 1), 3, axis=3))
    np.save(src / "crops.npy", crops)
    meta = {"source": ["webfaces"] * 3 + ["lfw"] * 3, "person": ["", "", "", "a", "b", "c"],
            "split": ["", "", "", "train", "calib", "eval"]}
    (src / "meta.json").write_text(json.dumps(meta))
    teacher = rng.normal(size=(6, 2, 128)).astype(np.float32)
    np.save(src / "teacher.npy", teacher)
    np.savez(src / "views.npz", crops=crops[[1, 5]], index=np.array([1, 5]), targets=teacher)

    pack(src, tmp_path / "p.npz")
    unpack(tmp_path / "p.npz", dst)

    back = CropSet.load(dst)
    assert back.meta == meta
    assert np.abs(back.crops[:5].astype(int) - crops[:5]).mean() < 4  # WebP q85
    assert not back.crops[5].any()  # eval people never leave the machine
    views = np.load(dst / "views.npz")
    assert views["index"].tolist() == [1, 5] and not views["crops"][1].any()
    assert np.allclose(np.load(dst / "teacher.npy"), teacher, atol=1e-2)


def test_student_from_onnx_rebuilds_the_exported_model(tmp_path: Path) -> None:
    """A shipped recognizer file turns back into its PyTorch student: the architecture read from the graph
    (low-rank 1x1 convs and head included), the same function in eval mode, BatchNorms trainable again."""
    from training.compress.export import ort_session
    from training.recognizer.ship import student_from_onnx

    torch.manual_seed(0)
    src = FaceMobileNet(NetConfig(stem=8, blocks=((16, 2), (24, 1), (32, 2)), stem_stride=2, input_size=32,
                                  emb=16, head="lowrank", head_rank=2, pw_ranks=(0, 6, 0)))
    with torch.no_grad():
        for mod in src.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.5, 0.5), mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.2, 1.5), mod.bias.uniform_(-0.3, 0.3)
            elif isinstance(mod, torch.nn.PReLU):
                mod.weight.uniform_(0.0, 0.5)
    x = torch.randn(64, 3, 32, 32)
    export_onnx(src.eval(), tmp_path / "m.onnx", x[:2], "input", "embedding")
    model = student_from_onnx(tmp_path / "m.onnx", x)
    assert model.cfg == src.cfg and model.training
    with torch.no_grad():
        want = ort_session(tmp_path / "m.onnx").run(None, {"input": x[:8].numpy()})[0]
        got = model.eval()(x[:8]).numpy()
    assert np.abs(got - want).max() < 1e-4


def test_student_from_onnx_of_the_shipped_recognizer() -> None:
    from training.compress.export import ort_session
    from training.recognizer.ship import student_from_onnx

    path = REPO / "edgecam/models/face_recognizer/face_recognizer.onnx"
    x = torch.randn(16, 3, 112, 112) * 0.5
    model = student_from_onnx(path, x).eval()
    with torch.no_grad():
        got = model(x[:4]).numpy()
    want = ort_session(path).run(None, {"input": x[:4].numpy()})[0]
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.9999


@pytest.mark.shared
def test_teacher_reuses_an_earlier_folder_for_the_same_photos_only(tmp_path: Path) -> None:
    import matplotlib.cbook as cbook

    from training.recognizer.data import build_teacher
    from training.recognizer.teacher import SFACE_PATH

    if not SFACE_PATH.exists():
        pytest.skip(f"{SFACE_PATH} absent (../shared not mounted)")
    face = cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))[40:330, 90:420]
    crops = np.stack([cv2.resize(np.roll(face, 12 * k, axis=1), (112, 112))[..., ::-1] for k in range(3)])
    old, new = tmp_path / "old", tmp_path / "new"
    for folder, rows in ((old, [0, 1]), (new, [1, 2, 0])):
        folder.mkdir()
        np.save(folder / "clean.npy", crops[rows])
        (folder / "meta.json").write_text(json.dumps({"source": ["utkface"] * len(rows),
                                                      "path": [f"{k}.jpg" for k in rows]}))
    build_teacher(old, threads=1)
    build_teacher(new, threads=1, reuse=old)
    a, b = np.load(old / "teacher.npy"), np.load(new / "teacher.npy")
    assert np.array_equal(b[[2, 0]], a)  # taken as they were
    cos = (b[1] * b[0]).sum(-1) / np.linalg.norm(b[1], axis=-1) / np.linalg.norm(b[0], axis=-1)
    assert cos.max() < 0.999 and np.linalg.norm(b[1], axis=-1).min() > 1  # the new photo: embedded here
    np.save(old / "teacher.npy", a[::-1])  # another folder's embeddings under these names: refused
    (new / "teacher.npy").unlink()
    with pytest.raises(ValueError, match="not of this folder's clean crops"):
        build_teacher(new, threads=1, reuse=old)


def test_online_teacher_batches_mix_student_and_teacher_crops_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the teacher run online, a row's target is the teacher's embedding of the same mirror and the same
    mix of clean crops that the student's row is made of (augmentation aside)."""
    import training.recognizer.train as tr
    from training.recognizer.data import CropSet

    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (40, 112, 112, 3), dtype=np.uint8)
    data = CropSet(clean.copy(), {"source": ["webfaces"] * 40, "person": [""] * 40, "split": ["train"] * 40})
    monkeypatch.setattr(tr, "augment", lambda rgb, rng, device="cpu": torch.from_numpy(rgb.copy()))

    def embed(rgb: np.ndarray) -> np.ndarray:  # left and right halves' means: sees mirrors and mixes
        return np.stack([rgb[:, :, :56].mean((1, 2, 3)), rgb[:, :, 56:].mean((1, 2, 3))], 1).astype(np.float32)

    for mix in (0.0, 1.0):
        batches = tr.Batches(data, None, np.arange(40), 16, None, seed=0, online=embed, clean=clean, mix=mix)
        x, t, _ = batches(3)
        assert t is not None and np.allclose(t.numpy(), embed(x.numpy()))
        whole = {c.tobytes() for c in np.concatenate([clean, clean[:, :, ::-1]])}
        assert sum(r.tobytes() in whole for r in x.numpy()) == (16 if mix == 0 else 0)


def test_evaluate_cli_names_a_folder_that_is_not_a_model_exit_2(tmp_path: Path) -> None:
    import subprocess

    r = subprocess.run([sys.executable, "-m", "training.recognizer.evaluate", "--data", str(tmp_path),
                        "--model", str(tmp_path / "nope")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "nope: no model.json" in r.stderr.splitlines()[-1] and "Traceback" not in r.stderr
