"""Detector training in miniature: a few iterations on a few WebFaces images; loss falls; export round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is a training extra (pip install -e '.[train]')")
pytest.importorskip("onnx", reason="onnx is a training extra (pip install -e '.[train]')")

WEBFACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "detection" / "webfaces"
needs_webfaces = pytest.mark.skipif(not WEBFACES.is_dir(), reason=f"{WEBFACES} absent (shared data not mounted)")


def test_box_convention_round_numbers() -> None:
    from edgecam.crops import TEMPLATE_112
    from training.detector.data import box_from_landmarks

    # landmarks exactly on the template: the box is the template-frame box itself
    np.testing.assert_allclose(box_from_landmarks(TEMPLATE_112), [18, 10, 94, 112], atol=0.5)
    # twice as large, shifted: box follows
    np.testing.assert_allclose(box_from_landmarks(TEMPLATE_112 * 2 + 5), [41, 25, 193, 229], atol=1.0)


def test_flip_swaps_eyes() -> None:
    from training.detector.augment import AugConfig, random_view
    from training.detector.data import Sample

    img = np.zeros((100, 100, 2), np.uint8)
    lm = np.array([[[40, 40], [60, 40], [50, 52], [50, 62]]], np.float32)
    one = np.ones(1, np.float32)
    s = Sample(img, np.array([[30, 25, 70, 75]], np.float32), lm, one, one, np.zeros((0, 4), np.float32))
    cfg = AugConfig(flip_p=1.0, rotate_deg=0.0)
    v = random_view(s, 100, cfg, np.random.default_rng(0), face_max=60)
    assert v.landmarks[0, 0, 0] < v.landmarks[0, 1, 0]  # still image-left eye first after the mirror


def test_squeeze_narrows_one_side_of_the_nose_and_moves_the_labels_with_the_pixels() -> None:
    from training.detector.augment import View, squeeze

    img = np.zeros((100, 100), np.uint8)
    lm = np.array([[[35, 40], [65, 40], [50, 52], [50, 62]]], np.float32)
    for x, y in lm[0, :2]:
        img[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2] = 255  # a bright dot on each eye
    one = np.ones(1, np.float32)
    v = View(img, np.array([[25, 25, 75, 75]], np.float32), lm, one, one, np.zeros((0, 4), np.float32))
    for seed in range(4):
        w = squeeze(v, np.random.default_rng(seed), k_min=0.55)
        assert w.landmarks[0, 2, 0] == 50  # the nose is the pivot
        left, right = 50 - w.landmarks[0, 0, 0], w.landmarks[0, 1, 0] - 50
        assert min(left, right) < 15 * 0.91 and max(left, right) == 15  # one eye closer to the nose
        assert w.boxes[0, 2] - w.boxes[0, 0] < 50 and w.boxes[0, 1] == 25
        for x, y in w.landmarks[0, :2]:  # the dots moved where the landmarks did
            assert w.image[int(round(y)), int(round(x))] > 100


@pytest.mark.slow
@needs_webfaces
def test_few_iterations_loss_falls_and_export_round_trips(tmp_path: Path) -> None:
    from training.detector.augment import AugConfig
    from training.detector.export import compare, export_fp32, fold_bn, load_trained, quantize_weights
    from training.detector.train import TrainConfig, train

    cfg = TrainConfig(data=str(WEBFACES), negatives="", pseudo="", out=str(tmp_path / "run"), cache="",
                      model="tinyface_xs", iters=40, batch=8, lr=1e-2, warmup=5, limit=8, ckpt_every=20,
                      aug=AugConfig(size=96))
    ckpt = train(cfg)
    import json

    hist = [h["total"] for h in json.loads((tmp_path / "run" / "loss.json").read_text())]
    assert len(hist) == 40
    assert np.mean(hist[-8:]) < 0.8 * np.mean(hist[:8]), hist

    model, saved = load_trained(ckpt)
    assert saved["model"] == "tinyface_xs" and saved["step"] == 40 and saved["aug"]["size"] == 96
    model = fold_bn(model)
    export_fp32(model, tmp_path / "fp32.onnx", size=(64, 96))
    quantize_weights(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    diffs = compare(model, tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    assert diffs["torch_vs_ort"] < 1e-4
    assert diffs["fp32_vs_int8_heat"] < 0.1
    assert (tmp_path / "int8.onnx").stat().st_size < 0.5 * (tmp_path / "fp32.onnx").stat().st_size


@pytest.mark.slow
@needs_webfaces
def test_resume_continues_from_checkpoint(tmp_path: Path) -> None:
    from training.detector.augment import AugConfig
    from training.detector.train import TrainConfig, train

    base = dict(data=str(WEBFACES), negatives="", pseudo="", out=str(tmp_path / "run"), cache="", model="tinyface_xs",
                batch=4, warmup=2, limit=4, ckpt_every=5, aug=AugConfig(size=64))
    train(TrainConfig(iters=5, **base))
    ck = train(TrainConfig(iters=8, **base))
    state = torch.load(ck, weights_only=False)
    assert state["step"] == 8 and len(state["history"]) == 8


def test_targets_peak_soft_teacher_score_and_ignore() -> None:
    from training.detector.augment import View, encode_targets

    lm = np.array([[[40, 40], [60, 40], [50, 52], [50, 62]]] * 2, np.float32) + np.array([[[0, 0]], [[0, 60]]])
    boxes = np.array([[30, 25, 70, 75], [30, 85, 70, 135]], np.float32)
    v = View(np.zeros((160, 160), np.uint8), boxes, lm.astype(np.float32), np.ones(2, np.float32),
             np.array([1.0, 0.7], np.float32), np.array([[100, 100, 150, 150]], np.float32))
    t = encode_targets(v, 4)
    assert t["pos"].sum() == 2  # one centre cell per face (CenterNet)
    np.testing.assert_allclose(sorted(t["heat"][t["pos"]]), [0.7, 1.0])  # the pseudo face's peak = its score
    assert t["heat_w"][30, 30] == 0 and t["heat_w"][5, 5] == 1  # ignore region silences negatives
    iy, ix = np.argwhere(t["pos"])[0]
    cx, cy = ix * 4 + 1.5, iy * 4 + 1.5
    np.testing.assert_allclose(np.exp(t["reg"][:4, iy, ix]) * 4, [cx - 30, cy - 25, 70 - cx, 75 - cy], rtol=1e-5)


def test_warm_restart_schedule_extends_the_first_cosine_unchanged() -> None:
    from training.detector.train import TrainConfig, lr_at

    one, two = TrainConfig(iters=600, warmup=10), TrainConfig(iters=900, warmup=10, restart_at=600, restart_lr=1e-3)
    assert all(lr_at(s, one) == lr_at(s, two) for s in range(600))  # resuming a finished run is exact
    assert lr_at(600, two) == pytest.approx(1e-3) and lr_at(899, two) < 1e-4


def test_init_from_an_exported_onnx_reproduces_it(tmp_path: Path) -> None:
    from training.detector.export import export_fp32, fold_bn, quantize_weights
    from training.detector.model import DeployHead, create_model
    from training.detector.train import init_weights

    torch.manual_seed(0)
    src = create_model("tinyface_xs")
    src.train()(torch.randn(4, 1, 64, 64))  # non-trivial BatchNorm statistics to fold
    export_fp32(fold_bn(src.eval()), tmp_path / "fp32.onnx", size=(64, 96))
    quantize_weights(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    x = torch.randn(8, 1, 64, 64)
    dst = create_model("tinyface_xs")
    init_weights(dst, tmp_path / "int8.onnx", x)
    with torch.no_grad():
        want = DeployHead(src.eval())(x)
        got_eval = DeployHead(dst.eval())(x)
        got_train = DeployHead(dst.train())(x)  # batch statistics of the same batch: nearly the folded function
    assert (got_eval - want).abs().max() < 0.05  # int8 weight rounding only
    assert (got_train[:, 0] - got_eval[:, 0]).abs().mean() < 1e-3
    with pytest.raises(ValueError, match="another architecture"):
        init_weights(create_model("tinyface_m"), tmp_path / "int8.onnx", x)


def test_grow_embeds_a_smaller_model_exactly() -> None:
    from training.detector.model import create_model, grow

    torch.manual_seed(0)
    small = create_model("tinyface_m")
    small.train()(torch.randn(4, 1, 64, 64))  # non-trivial BatchNorm statistics
    big = create_model("tinyface_l")
    grow(big, small.state_dict())
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        assert (big.eval()(x) - small.eval()(x)).abs().max() < 1e-5
    assert sum(p.numel() for p in big.parameters()) > 1.5 * sum(p.numel() for p in small.parameters())
    with pytest.raises(ValueError, match="does not fit"):
        grow(create_model("tinyface_m"), big.state_dict())


def test_grow_spreads_a_grey_stem_over_bgr_so_a_colour_frame_gives_what_its_grey_gave() -> None:
    from training.detector.model import GREY_FROM_BGR, create_model, grow

    torch.manual_seed(0)
    grey = create_model("tinyface_xs")
    grey.train()(torch.randn(4, 1, 64, 64))  # non-trivial BatchNorm statistics
    colour = create_model("tinyface_xs", in_chans=3)
    grow(colour, grey.state_dict())
    bgr = torch.rand(2, 3, 64, 96) * 255
    as_grey = (bgr * torch.tensor(GREY_FROM_BGR).view(1, 3, 1, 1)).sum(1, keepdim=True)
    with torch.no_grad():  # normalised as training does: (pixel - 128) / 64 on every channel
        assert (colour.eval()((bgr - 128) / 64) - grey.eval()((as_grey - 128) / 64)).abs().max() < 1e-4


@pytest.mark.slow
@needs_webfaces
def test_colour_run_trains_on_bgr_crops_and_exports_a_bgr_model(tmp_path: Path) -> None:
    import json

    import cv2

    from edgecam.detect import FaceDetector
    from edgecam.manifest import sha256_file
    from training.detector import export
    from training.detector.augment import AugConfig
    from training.detector.train import TrainConfig, train

    cfg = TrainConfig(data=str(WEBFACES), negatives="", pseudo="", out=str(tmp_path / "run"), cache="",
                      model="tinyface_xs", colour=True, iters=6, batch=4, warmup=2, limit=4,
                      aug=AugConfig(size=64, grey_p=0.3, tint_p=0.5))
    model, saved = export.load_trained(train(cfg))
    assert export.in_channels(model) == 3 and saved["colour"]
    model = export.fold_bn(model)
    export.export_fp32(model, tmp_path / "fp32.onnx", size=(64, 96))
    folder = tmp_path / "model"
    folder.mkdir()
    export.quantize_weights(tmp_path / "fp32.onnx", folder / "face_detector.onnx")
    image = cv2.imread(str(next((WEBFACES / "images").iterdir())))[:64, :96]
    assert export.compare(model, tmp_path / "fp32.onnx", folder / "face_detector.onnx", image)["torch_vs_ort"] < 1e-4
    spec = export.manifest("face_detector.onnx", sha256_file(folder / "face_detector.onnx"), saved, 0, 0)
    assert spec["input"]["color"] == "bgr"
    (folder / "model.json").write_text(json.dumps(spec))
    boxes, _ = FaceDetector(folder)(image)  # the runtime feeds it BGR
    assert boxes.shape[1] == 5


def test_colour_views_are_grey_ir_or_bgr_as_configured() -> None:
    from training.detector.augment import AugConfig, SamplePool, make_view
    from training.detector.data import empty_sample, stored

    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    pool = SamplePool([[empty_sample(stored(bgr, colour=True))]], [1.0])
    for grey_p, dims in ((1.0, {2}), (0.0, {3}), (0.5, {2, 3})):
        cfg = AugConfig(size=64, ir_p=0.0, grey_p=grey_p, tint_p=0.5, mosaic_p=0.3)
        assert {make_view(pool, [], cfg, rng).image.ndim for _ in range(30)} == dims


def test_clahe_views_are_equalised_as_the_runtime_does_and_the_export_tells_the_runtime() -> None:
    import cv2

    from edgecam.detect import equalize
    from training.detector import export
    from training.detector.augment import AugConfig, SamplePool, make_view
    from training.detector.data import empty_sample, stored

    dim = (np.random.default_rng(1).integers(0, 256, (120, 160, 3)) * 0.1).astype(np.uint8)
    for colour in (False, True):
        pool = SamplePool([[empty_sample(stored(dim, colour=colour))]], [1.0])
        for seed in range(4):  # the same draws with and without: the views differ by the equalisation alone
            plain = make_view(pool, [], AugConfig(size=64), np.random.default_rng(seed)).image
            view = make_view(pool, [], AugConfig(size=64, clahe=2.0), np.random.default_rng(seed)).image
            np.testing.assert_array_equal(view, equalize(plain, cv2.createCLAHE(clipLimit=2.0), "bgr"))
    assert export.manifest("f.onnx", "", {"aug": {"clahe": 2.0}}, 0, 0)["input"]["clahe"] == 2.0
    assert "clahe" not in export.manifest("f.onnx", "", {"aug": {}}, 0, 0)["input"]


def test_soup_computes_start_tuned_or_the_average_of_their_folded_weights() -> None:
    import copy

    import torch

    from training.detector.export import fold_bn
    from training.detector.model import create_model
    from training.detector.soup import soup

    torch.manual_seed(0)
    x = torch.randn(4, 1, 64, 64)
    start, tuned = create_model("tinyface_xs"), create_model("tinyface_xs")
    for m in (start, tuned):  # BatchNorm statistics of their own
        m.train()(x * (2 if m is tuned else 1) + 0.5)
        m.eval()
    with torch.no_grad():
        for alpha, ref in ((0.0, start), (1.0, tuned)):
            torch.testing.assert_close(soup(start, tuned, alpha, x)(x), ref(x), atol=1e-4, rtol=1e-4)
        half = fold_bn(copy.deepcopy(soup(start, tuned, 0.5, x)))
        fs, ft = fold_bn(copy.deepcopy(start)), fold_bn(copy.deepcopy(tuned))
        for (name, w), w0, w1 in zip(half.state_dict().items(), fs.state_dict().values(), ft.state_dict().values(),
                                     strict=True):
            if w.is_floating_point() and "running" not in name:
                torch.testing.assert_close(w, (w0 + w1) / 2, atol=1e-5, rtol=1e-4)


def test_glow_paints_blobs_beside_the_faces_never_on_them() -> None:
    from training.detector.augment import View, glow

    rng = np.random.default_rng(0)
    face = np.array([[40.0, 40.0, 80.0, 90.0]], np.float32)
    for image in (np.full((160, 160), 30, np.uint8), np.full((160, 160, 3), 30, np.uint8)):
        changed = np.zeros((160, 160), bool)
        for _ in range(20):
            v = View(image.copy(), face, np.zeros((1, 4, 2), np.float32), np.ones(1, np.float32),
                     np.ones(1, np.float32), np.zeros((0, 4), np.float32))
            glow(v, rng)
            assert v.image.shape == image.shape and v.image.dtype == np.uint8
            diff = np.abs(v.image.astype(int) - image).reshape(160, 160, -1).max(2) > 10
            assert not diff[40:90, 40:80].any()  # the face's pixels keep their values (within the faint halo)
            changed |= diff
        assert changed.mean() > 0.05


def test_int4_export_computes_what_quantisation_aware_training_trained(tmp_path: Path) -> None:
    import onnx

    from training.compress.export import ort_session
    from training.detector.export import export_fp32, fold_bn, quantize_weights
    from training.detector.model import create_model
    from training.detector.train import forward

    torch.manual_seed(0)
    model = create_model("tinyface_xs")
    model.train()(torch.randn(4, 1, 64, 64))
    x = torch.randn(1, 1, 64, 96)
    with torch.no_grad():
        trained = forward(model.eval(), x, int4=True)  # the fake-quantised weights QAT sees
        plain = model(x)
    folded = fold_bn(model)
    export_fp32(folded, tmp_path / "fp32.onnx", size=(64, 96))
    quantize_weights(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    quantize_weights(tmp_path / "fp32.onnx", tmp_path / "int4.onnx", int4=True)
    g = onnx.load(str(tmp_path / "int4.onnx")).graph
    kinds = [i.data_type for i in g.initializer if len(i.dims) == 4]
    assert kinds.count(onnx.TensorProto.INT4) == len(kinds) - 2  # all but the stem and the head
    got = ort_session(tmp_path / "int4.onnx", 1, {}).run(None, {"input": x.numpy()})[0]

    def deployed(y: torch.Tensor) -> np.ndarray:
        return torch.cat([torch.sigmoid(y[:, :1]), y[:, 1:]], 1).numpy()

    # export rounds the int4 weights as training did (the stem and head differ by their int8 rounding only)
    qat_error, fp32_error = np.abs(got - deployed(trained)).max(), np.abs(got - deployed(plain)).max()
    assert qat_error < 0.01 and qat_error < 0.2 * fp32_error, (qat_error, fp32_error)
    assert (tmp_path / "int4.onnx").stat().st_size < (tmp_path / "int8.onnx").stat().st_size


def test_list_images_leaves_out_the_excluded_before_the_subset(tmp_path: Path) -> None:
    """scenes --celeba-identities: the photos of held-out identities are never labelled, and a --limit subset
    is drawn from the rest."""
    from training.detector.scenes import list_images

    for n in ("a.jpg", "b.jpg", "c.png", "d.jpg", "notes.txt"):
        (tmp_path / n).write_bytes(b"")
    assert list_images(tmp_path) == ["a.jpg", "b.jpg", "c.png", "d.jpg"]
    assert list_images(tmp_path, exclude=frozenset({"b.jpg"})) == ["a.jpg", "c.png", "d.jpg"]
    sub = list_images(tmp_path, limit=2, exclude=frozenset({"b.jpg"}))
    assert len(sub) == 2 and "b.jpg" not in sub


def test_turned_subset_keeps_the_images_with_a_3_4_view() -> None:
    from edgecam.crops import yaw
    from training.detector.scenes import turned_subset

    frontal = [40, 40, 60, 40, 50, 52, 50, 62]  # eyes, nose, mouth: the nose midway between the eyes
    turned = [40, 40, 60, 40, 58, 52, 55, 62]  # the nose 8 px (0.4 eye distances) towards one eye
    assert [yaw(np.reshape(lm, (4, 2))) for lm in (frontal, turned)] == pytest.approx([0.0, 0.4])
    labels = {"folder": "f", "max_side": 800, "images": {
        "a.jpg": {"boxes": [[30, 25, 70, 75]], "landmarks": [frontal], "scores": [0.9], "ignore": []},
        "b.jpg": {"boxes": [[30, 25, 70, 75]] * 2, "landmarks": [frontal, turned], "scores": [0.9, 0.8], "ignore": []},
        "c.jpg": {"boxes": [], "landmarks": [], "scores": [], "ignore": []}}}
    sub = turned_subset(labels, 0.3)
    assert list(sub["images"]) == ["b.jpg"] and sub["folder"] == "f"
