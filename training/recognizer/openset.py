"""Open-set identification as the runtime does it: thresholds for a target FPIR, FPIR and DIR figures.

A probe's score is its best cosine similarity to any enrolled person (the best over that person's gallery
rows): ``edgecam.recognize.Gallery.match``, the daemon's own code. A probe is named (``known``) when its score
is at or above ``thresholds.known`` and ``unknown`` below ``thresholds.unknown`` (``uncertain`` between).

- FPIR (false positive identification rate): the share of impostor probes (people in no gallery) that are
  named, i.e. score >= ``known``.
- DIR (detection and identification rate): the share of genuine probes (enrolled people, photos not in the
  gallery) whose best match is the right person *and* named.
- ``threshold_at(impostor_scores, fpir)``: the smallest threshold (on a 1e-4 grid) that at most a share
  ``fpir`` of the impostors reach.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgecam.recognize import Gallery


def enroll(model_sha: str, dim: int, emb: np.ndarray, names: list[str] | np.ndarray) -> Gallery:
    """A runtime gallery with one row per embedding (M, D) of ``names`` (M,)."""
    g = Gallery(model_sha, dim)
    names = [str(n) for n in names]
    for person in sorted(set(names)):
        g.add(person, emb[[i for i, n in enumerate(names) if n == person]])
    return g


def threshold_at(scores: np.ndarray, fpir: float) -> float:
    """Smallest threshold on a 1e-4 grid that at most ``fpir`` of ``scores`` reach (score >= threshold)."""
    s = np.sort(np.asarray(scores, np.float64))[::-1]
    if len(s) == 0:
        return 1.0
    k = int(np.floor(fpir * len(s) + 1e-9))  # impostors that may reach it
    if k >= len(s):
        return float(np.floor(s[-1] * 1e4) / 1e4)
    return float((np.floor(s[k] * 1e4) + 1) / 1e4)


def rate(scores: np.ndarray, threshold: float) -> float:
    """Share of ``scores`` at or above ``threshold``."""
    return float((np.asarray(scores) >= threshold).mean()) if len(scores) else float("nan")


@dataclass
class OpenSet:
    """One gallery scored against its genuine probes and named sets of impostor probes."""

    gallery_people: int
    genuine_pred: np.ndarray  # (G,) best-matching person per genuine probe
    genuine_true: np.ndarray  # (G,) the probe's person
    genuine_score: np.ndarray  # (G,) best score
    impostors: dict[str, np.ndarray] = field(default_factory=dict)  # set name -> (I,) best score per probe
    galleries: int = 1  # pooled from this many disjoint galleries of about ``gallery_people`` each

    @staticmethod
    def pooled(sets: list[OpenSet]) -> OpenSet:
        """Several disjoint galleries' probes as one set (an impostor probe counts once per gallery)."""
        cat = np.concatenate
        return OpenSet(round(float(np.mean([s.gallery_people for s in sets]))),
                       cat([s.genuine_pred for s in sets]), cat([s.genuine_true for s in sets]),
                       cat([s.genuine_score for s in sets]),
                       {k: cat([s.impostors[k] for s in sets]) for k in sets[0].impostors}, len(sets))

    @staticmethod
    def score(gallery: Gallery, genuine_emb: np.ndarray, genuine_names: list[str] | np.ndarray,
              impostors: dict[str, np.ndarray]) -> OpenSet:
        """Match every probe embedding against ``gallery`` (``impostors``: set name -> (I, D) embeddings)."""
        pred, score = gallery.match(genuine_emb)
        imp = {k: gallery.match(e)[1] if len(e) else np.zeros(0, np.float32) for k, e in impostors.items()}
        return OpenSet(len(gallery.people), np.array(pred, dtype=str), np.array(genuine_names, dtype=str),
                       np.asarray(score), imp)

    def dir_at(self, threshold: float) -> float:
        """DIR: genuine probes named, and named right, at ``threshold``."""
        ok = (self.genuine_pred == self.genuine_true) & (self.genuine_score >= threshold)
        return float(ok.mean()) if len(ok) else float("nan")

    def wrong_at(self, threshold: float) -> float:
        """Genuine probes named as another enrolled person at ``threshold``."""
        bad = (self.genuine_pred != self.genuine_true) & (self.genuine_score >= threshold)
        return float(bad.mean()) if len(bad) else float("nan")

    def at_thresholds(self, known: float, unknown: float) -> dict[str, float]:
        """Figures at the runtime thresholds: FPIR per impostor set (named; not unknown = named or uncertain),
        DIR and genuine probes named as someone else."""
        out = {"known": known, "unknown": unknown, "dir": self.dir_at(known), "wrong_person": self.wrong_at(known)}
        for k, s in self.impostors.items():
            out[f"fpir_{k}"] = rate(s, known)
            out[f"not_unknown_{k}"] = rate(s, unknown)
        return out

    def dir_at_fpir(self, impostor_set: str, fpirs: tuple[float, ...] = (0.01, 0.05)) -> dict[str, float]:
        """DIR at the threshold where a share ``fpir`` of one impostor set is named (an oracle threshold)."""
        s = self.impostors[impostor_set]
        return {f"dir_at_fpir_{round(f * 100)}pct": self.dir_at(threshold_at(s, f)) for f in fpirs}

    def counts(self) -> dict[str, int]:
        """Probe counts: gallery people, genuine probes, impostor probes per set."""
        return {"gallery_people": self.gallery_people, "galleries": self.galleries,
                "genuine_probes": len(self.genuine_score),
                **{f"impostor_probes_{k}": len(s) for k, s in self.impostors.items()}}


def fpir_curve(scores: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """FPIR at each threshold of ``grid``."""
    s = np.sort(np.asarray(scores))
    return 1.0 - np.searchsorted(s, grid, side="left") / max(len(s), 1)
