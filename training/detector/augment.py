"""Augmentation (geometric views, mosaics, photometric) and CenterNet-style training targets.

Every view is one affine warp of the source image straight into the training crop: scale jitter that sets
a chosen face to a log-uniform size, a small rotation, a horizontal flip (which swaps the eye landmarks),
and a random placement. Mosaics put four small views into one crop to make small faces. Photometric
noise: brightness/contrast, gamma, the IR-like grey channel, blur, sensor noise, JPEG artefacts. A colour
model's crops (BGR samples) are also shown grey or IR-like, or with another white balance and saturation.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgecam.detect import equalize
from training.detector.data import Sample, ir_grey

FLIP_ORDER = [1, 0, 2, 3]  # after a mirror the image-left eye is the old image-right eye


@dataclass(frozen=True)
class AugConfig:
    """Augmentation knobs (defaults are what the shipped model used)."""

    size: int = 160  # square training crop side (pixels)
    face_min: float = 7.0  # smallest face height a view aims for (pixels)
    face_max: float = 200.0  # largest face height a view aims for (pixels; may overflow the crop)
    min_face: float = 6.0  # faces smaller than this (height) become ignore regions
    mosaic_p: float = 0.3  # share of crops that are 2x2 mosaics
    negative_p: float = 0.08  # share of views taken from a face-free image
    background_p: float = 0.7  # share of views whose uncovered area shows a face-free image, not flat grey
    rotate_deg: float = 10.0  # std of the rotation (degrees)
    roll_p: float = 0.0  # share of views rolled uniformly in +-roll_max instead (tilted heads)
    roll_max: float = 45.0  # widest roll of those views (degrees)
    flip_p: float = 0.5
    ir_p: float = 0.2  # share of views from the IR-like grey channel
    grey_p: float = 0.0  # colour models: share of crops shown in plain grey (grey cameras, scans)
    tint_p: float = 0.0  # colour models: share of the colour crops given a white-balance cast and a saturation change
    blur_p: float = 0.2
    noise_p: float = 0.2
    jpeg_p: float = 0.25
    gamma_p: float = 0.3
    dark_p: float = 0.0  # share of views made dim (x0.1-0.4) with sensor noise: low light
    yaw_p: float = 0.0  # share of plain views with one side of a face squeezed (``squeeze``: a turned head)
    yaw_min: float = 0.55  # narrowest squeeze of that side
    glow_p: float = 0.0  # share of views given 1-4 glowing blobs away from the faces (candle flames, lamps, bokeh)
    clahe: float = 0.0  # CLAHE clip limit applied to every view last, as the runtime does with ``input.clahe`` (0: off)


@dataclass
class View:
    """A warped crop and its labels (columns as in ``Sample``)."""

    image: np.ndarray  # (S, S) uint8, or (S, S, 3) BGR
    boxes: np.ndarray  # (K, 4) x1,y1,x2,y2
    landmarks: np.ndarray  # (K, 4, 2)
    lm_weight: np.ndarray  # (K,)
    peak: np.ndarray  # (K,)
    ignore: np.ndarray  # (M, 4) x1,y1,x2,y2


def _affine(centre: np.ndarray, scale: float, angle: float, flip: bool, target: np.ndarray) -> np.ndarray:
    """(2, 3) matrix: move ``centre`` to the origin, flip, rotate+scale, move to ``target``."""
    c, s = np.cos(np.deg2rad(angle)) * scale, np.sin(np.deg2rad(angle)) * scale
    rs = np.array([[c, -s], [s, c]])
    if flip:
        rs = rs @ np.diag([-1.0, 1.0])
    return np.hstack([rs, (target - rs @ centre)[:, None]])


def _placement(c: np.ndarray, wh: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Where the (scaled) face centre ``c`` lands in the crop: inside its middle 80 %, and, where the scaled
    image ``wh`` allows, with the crop window wholly inside the image (no wasted blank border)."""
    out = np.empty(2)
    for i in range(2):
        lo, hi = c[i] - 0.9 * size, c[i] - 0.1 * size  # crop origin range keeping the face inside
        if wh[i] >= size:
            lo, hi = max(lo, 0.0), min(hi, wh[i] - size)
        origin = rng.uniform(lo, hi) if hi > lo else (lo + hi) / 2
        out[i] = c[i] - origin
    return out


def _map_boxes(boxes: np.ndarray, m: np.ndarray, scale: float) -> np.ndarray:
    """Boxes through the warp: centre mapped, size scaled, rotation ignored (as the box convention does)."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4)
    ctr = (boxes[:, :2] + boxes[:, 2:]) / 2 @ m[:, :2].T + m[:, 2]
    half = (boxes[:, 2:] - boxes[:, :2]) * scale / 2
    return np.hstack([ctr - half, ctr + half]).astype(np.float32)


def background(negatives: list[Sample], size: int, rng: np.random.Generator) -> np.ndarray | None:
    """A random ``size`` x ``size`` patch of a face-free image, grey or BGR as the samples are (None when there
    are none)."""
    if not negatives:
        return None
    img = negatives[rng.integers(len(negatives))].image
    img = img if img.shape[2] == 3 else img[:, :, 0]
    h, w = img.shape[:2]
    side = int(min(h, w) * rng.uniform(0.2, 1.0))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return cv2.resize(img[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)


def random_view(s: Sample, size: int, cfg: AugConfig, rng: np.random.Generator, face_max: float,
                bg: np.ndarray | None = None) -> View:
    """One warped ``size`` x ``size`` crop of a sample (see module docstring); where the warped image does
    not cover the crop it shows ``bg`` (a face-free patch) or a random flat grey."""
    h, w = s.image.shape[:2]
    if len(s.boxes) and rng.random() < 0.9:
        b = s.boxes[rng.integers(len(s.boxes))]
        target_h = np.exp(rng.uniform(np.log(cfg.face_min), np.log(face_max)))
        scale = target_h / max(b[3] - b[1], 1.0)
        centre = (b[:2] + b[2:]) / 2
        target = _placement(centre * scale, np.array([w, h]) * scale, size, rng)
    else:
        scale = np.exp(rng.uniform(np.log(0.3), np.log(1.5))) * size / max(h, w)
        centre = np.array([w, h]) / 2 + rng.uniform(-0.3, 0.3, 2) * np.array([w, h])
        target = np.array([size, size]) / 2
    flip = bool(rng.random() < cfg.flip_p)
    angle = rng.uniform(-cfg.roll_max, cfg.roll_max) if rng.random() < cfg.roll_p else rng.normal(0, cfg.rotate_deg)
    m = _affine(centre, scale, angle, flip, target)
    chan = int(rng.random() < cfg.ir_p)
    src = s.image if s.image.shape[2] == 3 else np.ascontiguousarray(s.image[:, :, chan])
    if bg is not None:
        img = bg.copy()
        cv2.warpAffine(src, m, (size, size), dst=img, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
    else:
        flat = int(rng.integers(0, 256))
        img = cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=(flat, flat, flat))
    lms = (s.landmarks @ m[:, :2].T + m[:, 2]).astype(np.float32)
    if flip:
        lms = lms[:, FLIP_ORDER]
    return _filter(View(img, _map_boxes(s.boxes, m, scale), lms, s.lm_weight, s.peak,
                        _map_boxes(s.ignore, m, scale)), cfg.min_face)


def _filter(v: View, min_face: float) -> View:
    """Keep faces whose centre is inside and height >= min_face; others that show become ignore regions."""
    size = v.image.shape[0]
    ctr = (v.boxes[:, :2] + v.boxes[:, 2:]) / 2
    inside = np.all((ctr >= 0) & (ctr < size), axis=1)
    big = (v.boxes[:, 3] - v.boxes[:, 1]) >= min_face
    keep = inside & big
    visible = np.all((v.boxes[:, 2:] > 0) & (v.boxes[:, :2] < size), axis=1)
    ignore = np.concatenate([v.ignore, v.boxes[visible & ~keep]])
    return View(v.image, v.boxes[keep], v.landmarks[keep], v.lm_weight[keep], v.peak[keep], ignore)


def squeeze(v: View, rng: np.random.Generator, k_min: float) -> View:
    """A turned head's look: the view compressed horizontally on one side of a face's nose (a random face; the
    middle when there is none) by a factor in ``k_min``-0.9, the other side kept: the far half of a face in a
    3/4 view is the narrower. Boxes, ignore regions and landmarks go through the same map."""
    size = v.image.shape[1]
    pivot = float(v.landmarks[rng.integers(len(v.landmarks)), 2, 0]) if len(v.landmarks) else size / 2
    k = rng.uniform(k_min, 0.9)
    kl, kr = (k, 1.0) if rng.random() < 0.5 else (1.0, k)

    def fwd(x: np.ndarray) -> np.ndarray:
        return np.where(x < pivot, pivot - (pivot - x) * kl, pivot + (x - pivot) * kr).astype(np.float32)

    xs = np.arange(size, dtype=np.float32)
    src = np.where(xs < pivot, pivot - (pivot - xs) / kl, pivot + (xs - pivot) / kr).astype(np.float32)
    rows = np.arange(v.image.shape[0], dtype=np.float32)
    img = cv2.remap(v.image, np.tile(src, (len(rows), 1)), np.repeat(rows[:, None], size, 1), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT_101)

    def boxes(b: np.ndarray) -> np.ndarray:
        return np.stack([fwd(b[:, 0]), b[:, 1], fwd(b[:, 2]), b[:, 3]], 1).astype(np.float32) if len(b) else b

    lms = v.landmarks.copy()
    lms[..., 0] = fwd(lms[..., 0])
    return View(img, boxes(v.boxes), lms, v.lm_weight, v.peak, boxes(v.ignore))


def mosaic(samples: list[Sample], size: int, cfg: AugConfig, rng: np.random.Generator,
           negatives: list[Sample] | None = None) -> View:
    """Four half-size views in a 2x2 grid (small faces)."""
    half = size // 2
    img = np.zeros((size, size, 3) if samples[0].image.shape[2] == 3 else (size, size), np.uint8)
    parts = []
    for k, s in enumerate(samples[:4]):
        bg = background(negatives or [], half, rng) if rng.random() < cfg.background_p else None
        v = random_view(s, half, cfg, rng, cfg.face_max / 2, bg)
        dx, dy = (k % 2) * half, (k // 2) * half
        img[dy:dy + half, dx:dx + half] = v.image
        off = np.array([dx, dy, dx, dy], np.float32)
        parts.append(View(v.image, v.boxes + off, v.landmarks + off[:2], v.lm_weight, v.peak, v.ignore + off))
    return View(img, *(np.concatenate([getattr(p, f) for p in parts]) for f in
                       ("boxes", "landmarks", "lm_weight", "peak", "ignore")))


def glow(v: View, rng: np.random.Generator) -> None:
    """Paint 1-4 glowing blobs (a bright core, soft like a flame or a flat disc like out-of-focus light, in a warm
    halo, often upright, sometimes a pair side by side like two eyes) on ``v.image`` in place, none over a face or
    ignore box: hard negatives."""
    size = v.image.shape[0]
    taken = np.concatenate([v.boxes, v.ignore]).reshape(-1, 4)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    add = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(1, 5))):
        r = size * rng.uniform(0.015, 0.12)
        c = rng.uniform(0, size, 2)
        centres = [c, c + [rng.uniform(2.0, 4.0) * r, rng.normal(0, 0.3) * r]] if rng.random() < 0.4 else [c]
        for cx, cy in centres:
            ry = r * rng.uniform(1.0, 2.0)
            m = 3 * ry  # the halo is under 1/15 of its peak there
            lo, hi = taken[:, :2] - m, taken[:, 2:] + m
            if ((lo[:, 0] < cx) & (cx < hi[:, 0]) & (lo[:, 1] < cy) & (cy < hi[:, 1])).any():
                continue
            d2 = ((xx - cx) / r) ** 2 + ((yy - cy) / ry) ** 2
            if rng.random() < 0.5:  # a flame or a lamp
                core = np.exp(-2.0 * d2)
            else:  # out-of-focus light: a disc with a soft edge
                core = 1 / (1 + np.exp(np.minimum((np.sqrt(d2) - 1) / rng.uniform(0.03, 0.2), 50)))
            add += rng.uniform(120, 255) * core + rng.uniform(20, 80) * np.exp(-0.3 * d2)
    if not add.any():
        return
    if v.image.ndim == 2:
        v.image = np.clip(v.image + add, 0, 255).astype(np.uint8)
        return
    warm = np.array([rng.uniform(0.2, 0.8), rng.uniform(0.6, 0.95), 1.0], np.float32)  # B, G, R
    v.image = np.clip(v.image + add[:, :, None] * warm, 0, 255).astype(np.uint8)


def colour_view(bgr: np.ndarray, cfg: AugConfig, rng: np.random.Generator) -> np.ndarray:
    """A colour crop as a camera may give it: the IR-like grey (``ir_p``), plain grey (``grey_p``; both (S, S)),
    else BGR, on ``tint_p`` of them with each channel's gain and the saturation changed (lamp light, white
    balance)."""
    r = rng.random()
    if r < cfg.ir_p:
        return ir_grey(bgr)
    if r < cfg.ir_p + cfg.grey_p:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    if rng.random() >= cfg.tint_p:
        return bgr
    x = bgr.astype(np.float32)
    grey = cv2.cvtColor(x, cv2.COLOR_BGR2GRAY)[:, :, None]
    x = (grey + (x - grey) * rng.uniform(0.3, 1.6)) * np.exp(rng.normal(0.0, 0.25, 3)).astype(np.float32)
    return np.clip(x, 0, 255).astype(np.uint8)


def photometric(img: np.ndarray, cfg: AugConfig, rng: np.random.Generator) -> np.ndarray:
    """Brightness/contrast, gamma, blur, noise and JPEG artefacts on a grey or BGR uint8 crop."""
    x: np.ndarray = img.astype(np.float32)  # float32, float64 once noise is added
    x = (x - 128.0) * rng.uniform(0.5, 1.5) + 128.0 + rng.uniform(-40, 40)
    x = np.clip(x, 0, 255)
    if rng.random() < cfg.dark_p:
        x = np.clip(x * rng.uniform(0.1, 0.4) + rng.normal(0, rng.uniform(1, 4), x.shape), 0, 255)
    if rng.random() < cfg.gamma_p:
        x = 255.0 * (x / 255.0) ** rng.uniform(0.5, 2.0)
    if rng.random() < cfg.blur_p:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 1.6))
    if rng.random() < cfg.noise_p:
        x = x + rng.normal(0, rng.uniform(2, 10), x.shape)
    out = np.clip(x, 0, 255).astype(np.uint8)
    if rng.random() < cfg.jpeg_p:
        ok, enc = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(15, 75))])
        dec = cv2.imdecode(enc, cv2.IMREAD_UNCHANGED) if ok else None
        out = out if dec is None else dec
    return out


class SamplePool:
    """Samples from several sources, picked with a weight per source (so a big set does not drown a small one)."""

    def __init__(self, sources: list[list[Sample]], weights: list[float]):
        keep = [(s, w) for s, w in zip(sources, weights, strict=True) if s and w > 0]
        self.sources = [s for s, _ in keep]
        self.cum = np.cumsum([w for _, w in keep]) / sum(w for _, w in keep)

    def pick(self, rng: np.random.Generator) -> Sample:
        """One sample: a source by weight, then a sample of it uniformly."""
        src = self.sources[min(int(np.searchsorted(self.cum, rng.random(), side="right")), len(self.sources) - 1)]
        return src[rng.integers(len(src))]


def make_view(samples: SamplePool, negatives: list[Sample], cfg: AugConfig, rng: np.random.Generator) -> View:
    """One training crop: a mosaic, a negative view or a plain view, then (``glow_p``) glowing blobs,
    (colour) ``colour_view``, photometric noise and (``clahe``) the runtime's local contrast equalisation."""
    if rng.random() < cfg.mosaic_p:
        pool = [negatives[rng.integers(len(negatives))] if negatives and rng.random() < cfg.negative_p
                else samples.pick(rng) for _ in range(4)]
        v = mosaic(pool, cfg.size, cfg, rng, negatives)
    elif negatives and rng.random() < cfg.negative_p:
        v = random_view(negatives[rng.integers(len(negatives))], cfg.size, cfg, rng, cfg.face_max)
    else:
        bg = background(negatives, cfg.size, rng) if rng.random() < cfg.background_p else None
        v = random_view(samples.pick(rng), cfg.size, cfg, rng, cfg.face_max, bg)
        if rng.random() < cfg.yaw_p:
            v = squeeze(v, rng, cfg.yaw_min)
    if rng.random() < cfg.glow_p:
        glow(v, rng)
    if v.image.ndim == 3:
        v.image = colour_view(v.image, cfg, rng)
    v.image = photometric(v.image, cfg, rng)
    if cfg.clahe > 0:
        v.image = equalize(v.image, cv2.createCLAHE(clipLimit=cfg.clahe), "bgr")
    return v


# ------------------------------------------------------------------------------------------------ targets


def cell_centres(n: int, stride: int) -> np.ndarray:
    """Pixel coordinate of the centre of each of ``n`` cells (the receptive-field centre of the output)."""
    return np.arange(n, dtype=np.float32) * stride + (stride - 1) / 2


def encode_targets(v: View, stride: int, pos_radius: tuple[float, float, float] = (0.0, 0.0, 0.0)
                   ) -> dict[str, np.ndarray]:
    """CenterNet targets of a view on its stride-``stride`` grid.

    ``pos_radius`` (fraction of the face size, min, max; in cells) widens each face's positive (target 1)
    area from its centre cell to the cells within that radius of the face centre (FCOS-style centre
    sampling: more positives per face, faster learning); (0, 0, 0) is plain CenterNet.

    Returns ``heat`` (H, W) gaussian peaks (the face's ``peak`` target at its centre cell: 1, or a teacher
    score), ``pos`` (H, W) 1 at the positive cells (centre cells / centre areas), ``reg`` (12, H, W): channels
    0-3 log(l/stride), log(t/stride), log(r/stride), log(b/stride) distances from the cell centre to the box
    sides, 4-11 landmark x,y offsets from the cell centre divided by the face size sqrt(w*h); ``reg_w`` (H, W)
    box weight (the gaussian value at cells inside the box with gaussian >= 0.3), ``lm_w`` (H, W) landmark
    weight and ``heat_w`` (H, W) 0 inside ignore regions (where the target is not a peak), else 1.
    """
    n = v.image.shape[0] // stride
    cx = cell_centres(n, stride)
    heat = np.zeros((n, n), np.float32)
    pos = np.zeros((n, n), bool)
    reg = np.zeros((12, n, n), np.float32)
    reg_w = np.zeros((n, n), np.float32)
    lm_w = np.zeros((n, n), np.float32)
    heat_w = np.ones((n, n), np.float32)
    for b in v.ignore:
        heat_w[_span(b[1], b[3], stride, n), _span(b[0], b[2], stride, n)] = 0.0
    order = np.argsort(-(v.boxes[:, 2] - v.boxes[:, 0]) * (v.boxes[:, 3] - v.boxes[:, 1]))
    for k in order:  # large faces first so small ones win shared cells
        b, lm = v.boxes[k], v.landmarks[k]
        fs = float(np.sqrt((b[2] - b[0]) * (b[3] - b[1])))
        sigma = max(0.6, 0.1 * fs / stride) * stride
        c = (b[:2] + b[2:]) / 2
        g = np.exp(-((cx[None, :] - c[0]) ** 2 + (cx[:, None] - c[1]) ** 2) / (2 * sigma**2)).astype(np.float32)
        iy, ix = min(max(int(round((c[1] - (stride - 1) / 2) / stride)), 0), n - 1), min(
            max(int(round((c[0] - (stride - 1) / 2) / stride)), 0), n - 1)
        g[iy, ix] = 1.0
        gx, gy = np.meshgrid(cx, cx)
        r = float(np.clip(pos_radius[0] * fs / stride, pos_radius[1], pos_radius[2])) * stride
        if r > 0:
            g[(gx - c[0]) ** 2 + (gy - c[1]) ** 2 <= r**2] = 1.0
        pos |= g >= 1.0
        heat = np.maximum(heat, g * v.peak[k])
        ltrb = np.stack([gx - b[0], gy - b[1], b[2] - gx, b[3] - gy])
        sel = (g >= 0.3) & np.all(ltrb > 0.5, axis=0) & (g >= reg_w)
        sel[iy, ix] = True
        reg[:4, sel] = np.log(np.maximum(ltrb[:, sel], 0.5) / stride)
        off = (lm[:, :, None] - np.stack([gx[sel], gy[sel]])[None]) / fs  # (4, 2, P)
        reg[4:, sel] = off.reshape(8, -1)
        reg_w[sel] = g[sel]
        lm_w[sel] = g[sel] * v.lm_weight[k]
    heat_w[pos] = 1.0
    return {"heat": heat, "pos": pos, "reg": reg, "reg_w": reg_w, "lm_w": lm_w, "heat_w": heat_w}


def _span(a: float, b: float, stride: int, n: int) -> slice:
    """Cells whose centres fall in [a, b]."""
    lo = int(np.ceil((a - (stride - 1) / 2) / stride))
    hi = int(np.floor((b - (stride - 1) / 2) / stride)) + 1
    return slice(min(max(lo, 0), n), min(max(hi, 0), n))
