"""LFW evaluation of a face embedder: 10-fold verification and open-set identification (the protocol).

Protocol (all on the LFW ``eval`` people of ``data.split_people``, never trained on; crops from our detector):

- Verification: the eval people, in seeded order, form 10 folds of 10 people (folds share no person, as in
  LFW's View 2). Per fold 300 same pairs (a person drawn uniformly, two distinct images) and 300 different
  pairs (two distinct people of the fold, one image each), seed ``PAIR_SEED``. Accuracy of fold k uses the
  cosine threshold that is best on the other 9 folds; the figure is the mean (and std) over the folds.
- Open-set identification: half the eval people (seeded) are enrolled with 3 images each; their other
  images (at most ``MAX_PROBES`` per person) are genuine probes, and the other half's images (same cap) are
  impostor probes that must come out ``unknown``. A probe's score for a person is the best cosine over that
  person's gallery embeddings (as in ``edgecam.recognize``). The threshold is set so that 1 % of impostor
  probes are accepted; the identification rate (DIR) is the share of genuine probes whose best match is the
  right person with a score above it.

Pairs and galleries are drawn from the LFW file listing, so every model is scored on the same pairs; a pair
whose image had no detected face is skipped for every model alike (the count is reported).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.recognizer.data import CropSet

PAIR_SEED = 7
GALLERY_SEED = 11
N_FOLDS = 10
PAIRS_PER_FOLD = 300  # same pairs, and as many different pairs, per fold
N_ENROLL = 3
MAX_PROBES = 20
TARGET_FAR = 0.01

Embedder = Callable[[np.ndarray], np.ndarray]  # (N, 112, 112, 3) RGB uint8 -> (N, D) float32


def people_of(split: str, crops: CropSet) -> dict[str, list[int]]:
    """{person: crop indices} of one LFW split, people in seeded order (the order of the folds)."""
    persons = np.array(crops.meta["person"])
    idx = crops.indices("lfw", split)
    names = sorted({str(persons[i]) for i in idx})
    order = [str(p) for p in np.random.default_rng(PAIR_SEED).permutation(names)]
    return {p: [int(i) for i in idx if persons[i] == p] for p in order}


def make_pairs(people: dict[str, list[int]], rng: np.random.Generator) -> np.ndarray:
    """(M, 4) fold, crop a, crop b, same(1)/different(0): the fixed verification pairs."""
    names = list(people)
    per_fold = len(names) // N_FOLDS
    rows = []
    for f in range(N_FOLDS):
        fold = names[f * per_fold:(f + 1) * per_fold]
        multi = [p for p in fold if len(people[p]) >= 2]
        for _ in range(PAIRS_PER_FOLD):
            a, b = rng.choice(people[multi[rng.integers(len(multi))]], 2, replace=False)
            rows.append((f, a, b, 1))
        for _ in range(PAIRS_PER_FOLD):
            p, q = rng.choice(len(fold), 2, replace=False)
            rows.append((f, rng.choice(people[fold[p]]), rng.choice(people[fold[q]]), 0))
    return np.array(rows, np.int64)


def cosine_rows(e: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of rows a[i], b[i] of the L2-normalised embeddings e."""
    return (e[a] * e[b]).sum(1)


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold maximising verification accuracy on (scores, same)."""
    cands = np.unique(scores)
    acc = [((scores >= t) == same).mean() for t in cands]
    return float(cands[int(np.argmax(acc))])


def verification(emb: np.ndarray, pairs: np.ndarray) -> dict[str, float]:
    """10-fold verification accuracy (mean, std) of L2-normalised embeddings on the pairs."""
    scores = cosine_rows(emb, pairs[:, 1], pairs[:, 2])
    same = pairs[:, 3].astype(bool)
    accs = []
    for f in range(N_FOLDS):
        test = pairs[:, 0] == f
        t = best_threshold(scores[~test], same[~test])
        accs.append(((scores[test] >= t) == same[test]).mean())
    return {"lfw_acc": float(np.mean(accs)), "lfw_acc_std": float(np.std(accs))}


def gallery_split(people: dict[str, list[int]], seed: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Gallery crops + labels, genuine probes + labels (-1 for impostors) of the open-set protocol."""
    rng = np.random.default_rng(seed)
    names = [p for p in sorted(people) if len(people[p]) > N_ENROLL]
    enrolled = set(rng.permutation(names)[: len(names) // 2].tolist())
    gal, gal_lab, probes, probe_lab = [], [], [], []
    for k, p in enumerate(sorted(people)):
        imgs = list(rng.permutation(people[p]))
        if p in enrolled:
            gal += imgs[:N_ENROLL]
            gal_lab += [k] * N_ENROLL
            imgs = imgs[N_ENROLL:]
        probes += imgs[:MAX_PROBES]
        probe_lab += [k if p in enrolled else -1] * len(imgs[:MAX_PROBES])
    return gal, gal_lab, probes, probe_lab


def best_match(gallery: np.ndarray, labels: np.ndarray, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per probe, the best-scoring person label and its score (max cosine over that person's embeddings)."""
    sims = probes @ gallery.T  # (P, G)
    people = np.unique(labels)
    per_person = np.stack([sims[:, labels == p].max(1) for p in people], 1)  # (P, people)
    k = per_person.argmax(1)
    return people[k], per_person[np.arange(len(probes)), k]


def open_set(emb: np.ndarray, people: dict[str, list[int]], far: float = TARGET_FAR,
             seed: int = GALLERY_SEED) -> dict[str, float]:
    """Open-set identification: DIR at the given false-accept rate, the threshold, and the counts."""
    gal, gal_lab, probes, probe_lab = gallery_split(people, seed)
    who, score = best_match(emb[gal], np.array(gal_lab), emb[probes])
    truth = np.array(probe_lab)
    impostor = truth < 0
    thr = float(np.quantile(score[impostor], 1.0 - far))
    dir_ = float(((who == truth) & (score > thr))[~impostor].mean())
    return {"dir_at_far": dir_, "far": far, "threshold": thr, "rank1": float((who == truth)[~impostor].mean()),
            "genuine_probes": int((~impostor).sum()), "impostor_probes": int(impostor.sum())}


def calibrate(emb: np.ndarray, people: dict[str, list[int]]) -> dict[str, float]:
    """Runtime thresholds from calibration people: known above the 1 %-FAR score, unknown below the 5 %-FAR one."""
    gal, gal_lab, probes, probe_lab = gallery_split(people, GALLERY_SEED)
    _, score = best_match(emb[gal], np.array(gal_lab), emb[probes])
    impostor = np.array(probe_lab) < 0
    return {"known": float(np.quantile(score[impostor], 0.99)),
            "unknown": float(np.quantile(score[impostor], 0.95))}


def l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embed_all(embed: Embedder, crops: np.ndarray, idx: np.ndarray, batch: int = 64) -> np.ndarray:
    """L2-normalised embeddings (N, D) of crops[idx] (rows of the full index space; others stay 0)."""
    out: np.ndarray | None = None
    for s in range(0, len(idx), batch):
        sel = idx[s:s + batch]
        e = l2n(embed(np.asarray(crops[sel])))
        if out is None:
            out = np.zeros((len(crops), e.shape[1]), np.float32)
        out[sel] = e
    assert out is not None
    return out


@dataclass
class EvalResult:
    """Figures of one model on the protocol."""

    lfw_acc: float
    lfw_acc_std: float
    dir_at_far: float
    rank1: float
    threshold: float
    pairs: int

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def evaluate(embed: Embedder, crops: CropSet, split: str = "eval") -> EvalResult:
    """Verification and open-set figures of an embedder on one LFW split's crops."""
    people = people_of(split, crops)
    pairs = make_pairs(people, np.random.default_rng(PAIR_SEED))
    idx = np.array(sorted({i for v in people.values() for i in v}))
    emb = embed_all(embed, crops.crops, idx)
    v = verification(emb, pairs)
    o = open_set(emb, people)
    return EvalResult(v["lfw_acc"], v["lfw_acc_std"], o["dir_at_far"], o["rank1"], o["threshold"], len(pairs))


def main() -> None:
    """Score the teacher, or model folders (``model.json`` + its ONNX file) side by side, on one split's crops:

        python -m training.recognizer.evaluate --data runs/recognizer/data_w13c \
            --model edgecam/models/face_recognizer --model /tmp/rec_online_mix
    """
    import argparse

    from training.recognizer.ship import onnx_embedder
    from training.recognizer.teacher import OnnxTeacher

    ap = argparse.ArgumentParser(description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("runs/recognizer/data"),
                    help="crop folder (default: %(default)s)")
    ap.add_argument("--split", default="eval", help="LFW split (default: eval)")
    ap.add_argument("--model", type=Path, action="append", default=[],
                    help="a model folder to score (repeatable; default: the SFace teacher)")
    args = ap.parse_args()
    for folder in args.model:
        if not (folder / "model.json").is_file():
            ap.error(f"{folder}: no model.json (a model folder is wanted)")
    if not (args.data / "crops.npy").is_file():
        ap.error(f"{args.data}: no crops.npy (python -m training.recognizer.data crops --out {args.data} makes it)")
    crops = CropSet.load(args.data)
    if not args.model:
        print(json.dumps({"teacher": evaluate(OnnxTeacher(), crops, args.split).to_dict()}))
    for folder in args.model:
        spec = json.loads((folder / "model.json").read_text())
        embed = onnx_embedder(folder / spec["file"], spec["input"])
        print(json.dumps({str(folder): evaluate(embed, crops, args.split).to_dict()}), flush=True)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
