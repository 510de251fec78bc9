"""Appearance-based place recognition: a bag of binary words over ORB descriptors.

* :class:`Vocabulary`: ``W`` binary centroids (``[W, 32]`` uint8), trained offline by
  k-majority clustering (binary k-means whose centroid bit is the members' majority;
  Grana et al., "A fast approach for integrating ORB descriptors in the bag of words
  model", 2013). Quantising a descriptor = its nearest centroid in Hamming distance.
  The shipped vocabulary (``data/orb_vocabulary.npz``) was trained with
  ``tools/train_orb_vocabulary.py``; see ``data/SOURCE.md`` for what on.
* :class:`BowDatabase`: the keyframes' word histograms with tf-idf weights (the idf
  from the keyframes added so far) and cosine similarity through a sparse matrix
  (Sivic & Zisserman's "Video Google" scoring), so a query costs one sparse
  matrix-vector product whatever the number of keyframes.

Retrieval never looks at poses: a drifted trajectory cannot hide a revisit.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

DEFAULT_VOCABULARY = Path(__file__).resolve().parent / "data" / "orb_vocabulary.npz"


def _hamming_nearest(desc: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(index [N] int32, distance [N] int32)`` of each descriptor's nearest centroid."""
    import cv2

    if len(desc) == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    m = cv2.BFMatcher(cv2.NORM_HAMMING).match(np.ascontiguousarray(desc, np.uint8),
                                              np.ascontiguousarray(centroids, np.uint8))
    idx = np.empty(len(desc), np.int32)
    dist = np.empty(len(desc), np.int32)
    for k in m:
        idx[k.queryIdx] = k.trainIdx
        dist[k.queryIdx] = int(k.distance)
    return idx, dist


@dataclass
class Vocabulary:
    """Binary visual words: ``words [W, 32]`` uint8."""

    words: np.ndarray

    def __len__(self) -> int:
        return int(len(self.words))

    @classmethod
    def load(cls, path: "str | Path | None" = None) -> "Vocabulary":
        """Load a vocabulary ``.npz`` (key ``words``); the shipped one when ``path`` is None."""
        p = Path(path) if path else DEFAULT_VOCABULARY
        if not p.is_file():
            raise FileNotFoundError(f"ORB vocabulary not found: {p}")
        with np.load(p) as z:
            if "words" not in z:
                raise ValueError(f"{p}: not an ORB vocabulary (no 'words' array)")
            words = np.asarray(z["words"], np.uint8)
        if words.ndim != 2 or words.shape[1] != 32 or len(words) < 2:
            raise ValueError(f"{p}: words must be [W >= 2, 32] uint8, got {list(words.shape)}")
        return cls(words)

    def save(self, path: "str | Path", **meta: object) -> None:
        np.savez_compressed(path, words=self.words, **{k: np.asarray(v) for k, v in meta.items()})

    def quantize(self, descriptors: np.ndarray) -> np.ndarray:
        """``[N]`` int32 word ids of ``[N, 32]`` descriptors."""
        return _hamming_nearest(descriptors, self.words)[0]

    @classmethod
    def train(cls, descriptors: np.ndarray, k: int = 1024, iterations: int = 10, seed: int = 0) -> "Vocabulary":
        """k-majority clustering of ``[N, 32]`` uint8 descriptors (deterministic for ``seed``)."""
        desc = np.ascontiguousarray(descriptors, np.uint8)
        if len(desc) < k:
            raise ValueError(f"need at least k={k} descriptors to train, got {len(desc)}")
        rng = np.random.default_rng(seed)
        cent = desc[rng.choice(len(desc), k, replace=False)].copy()
        bits = np.unpackbits(desc, axis=1)  # [N, 256]
        for _ in range(int(iterations)):
            assign, _ = _hamming_nearest(desc, cent)
            counts = np.bincount(assign, minlength=k)
            sums = np.zeros((k, 256), np.int64)
            np.add.at(sums, assign, bits)
            new = np.packbits((2 * sums > counts[:, None]).astype(np.uint8), axis=1)
            empty = counts == 0
            if empty.any():  # re-seed empty clusters
                new[empty] = desc[rng.choice(len(desc), int(empty.sum()), replace=False)]
            if np.array_equal(new, cent):
                break
            cent = new
        return cls(cent)


class BowDatabase:
    """Keyframe word histograms with tf-idf cosine scoring (see the module docstring).

    Args:
        vocabulary_size: ``W``.
    """

    def __init__(self, vocabulary_size: int) -> None:
        self.W = int(vocabulary_size)
        self.keys: list[int] = []
        self._rows: list[tuple[np.ndarray, np.ndarray]] = []  # (unique word ids, tf)
        self.df = np.zeros(self.W, np.int64)  # keyframes containing each word
        self._removed: set[int] = set()
        self._matrix = None  # cached sparse tf matrix, rebuilt lazily

    def __len__(self) -> int:
        return len(self.keys)

    @staticmethod
    def histogram(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(unique word ids, term frequencies)`` of one image."""
        w = np.asarray(words, np.int64)
        w = w[w >= 0]
        if len(w) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        ids, counts = np.unique(w, return_counts=True)
        return ids, counts / counts.sum()

    def add(self, key: int, words: np.ndarray) -> None:
        ids, tf = self.histogram(words)
        self.keys.append(int(key))
        self._rows.append((ids, tf))
        self.df[ids] += 1
        self._matrix = None

    def remove(self, key: int) -> None:
        """Forget keyframe ``key`` (culled): it no longer counts in the idf nor comes back from queries."""
        try:
            r = self.keys.index(int(key))
        except ValueError:
            return
        ids, _ = self._rows[r]
        if len(ids):
            self.df[ids] -= 1
        self._rows[r] = (np.zeros(0, np.int64), np.zeros(0, np.float64))
        self._removed.add(int(key))
        self._matrix = None

    def idf(self) -> np.ndarray:
        n = max(len(self.keys) - len(self._removed), 1)
        return np.log((n + 1.0) / (self.df + 1.0)) + 1e-6

    def _tf_matrix(self):
        from scipy.sparse import csr_matrix

        if self._matrix is None:
            indptr = np.zeros(len(self._rows) + 1, np.int64)
            indptr[1:] = np.cumsum([len(r[0]) for r in self._rows])
            ind = np.concatenate([r[0] for r in self._rows]) if self._rows else np.zeros(0, np.int64)
            val = np.concatenate([r[1] for r in self._rows]) if self._rows else np.zeros(0)
            self._matrix = csr_matrix((val, ind, indptr), shape=(len(self._rows), self.W))
        return self._matrix

    def scores(self, words: np.ndarray) -> np.ndarray:
        """``[len(self)]`` cosine similarity of the tf-idf vectors (0..1) to a query."""
        if not self.keys:
            return np.zeros(0)
        idf = self.idf()
        ids, tf = self.histogram(words)
        q = np.zeros(self.W)
        q[ids] = tf * idf[ids]
        qn = np.linalg.norm(q)
        if qn == 0:
            return np.zeros(len(self.keys))
        M = self._tf_matrix()
        Mw = M.multiply(idf[None, :]).tocsr()
        norms = np.sqrt(np.asarray(Mw.multiply(Mw).sum(axis=1)).ravel())
        dots = Mw @ q
        return np.where(norms > 0, dots / (np.maximum(norms, 1e-12) * qn), 0.0)

    def score_pair(self, words_a: np.ndarray, words_b: np.ndarray) -> float:
        """Similarity of two word lists under the database's current idf."""
        idf = self.idf()
        va = np.zeros(self.W)
        vb = np.zeros(self.W)
        ia, ta = self.histogram(words_a)
        ib, tb = self.histogram(words_b)
        va[ia] = ta * idf[ia]
        vb[ib] = tb * idf[ib]
        na, nb = np.linalg.norm(va), np.linalg.norm(vb)
        return float(va @ vb / (na * nb)) if na > 0 and nb > 0 else 0.0

    def query(self, words: np.ndarray, top_k: int = 5, exclude: Optional[Iterable[int]] = None,
              min_score: float = 0.0) -> list[tuple[int, float]]:
        """The ``top_k`` most similar keyframes as ``[(key, score)]``, best first."""
        s = self.scores(words)
        if len(s) == 0:
            return []
        ex = set(exclude or ()) | self._removed
        order = np.argsort(-s, kind="stable")
        out = []
        for r in order:
            k = self.keys[r]
            if k in ex or s[r] < min_score:
                continue
            out.append((k, float(s[r])))
            if len(out) >= top_k:
                break
        return out
