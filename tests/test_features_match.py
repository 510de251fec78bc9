"""ORB descriptor matching (plugins/features.match) against a brute-force reference written here.

The reference computes every Hamming distance with numpy (``unpackbits``) and applies the rules the
function documents: a's nearest neighbour in b, at most ``max_distance`` bits away, closer than ``ratio``
times the second nearest, and mutual (b's nearest in a is a).
"""
from __future__ import annotations

import numpy as np
import pytest

from slam3r_plugins.features import match


def reference_match(a: np.ndarray, b: np.ndarray, ratio: float = 0.8, max_distance: int = 64) -> np.ndarray:
    d = np.unpackbits(a[:, None, :] ^ b[None, :, :], axis=2).sum(2)  # [Na, Nb] Hamming distances
    order = np.argsort(d, axis=1, kind="stable")
    best, second = d[np.arange(len(a)), order[:, 0]], d[np.arange(len(a)), order[:, 1]]
    back = np.argmin(d, axis=0)
    out = [(i, int(order[i, 0])) for i in range(len(a))
           if best[i] <= max_distance and best[i] < ratio * second[i] and back[order[i, 0]] == i]
    return np.asarray(out, np.int64).reshape(-1, 2)


def noisy_copies(rng: np.random.Generator, desc: np.ndarray, bits: int) -> np.ndarray:
    """``desc`` with ``bits`` random bits flipped in each row."""
    out = np.unpackbits(desc, axis=1)
    for row in out:
        row[rng.choice(out.shape[1], bits, replace=False)] ^= 1
    return np.packbits(out, axis=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_match_equals_the_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    scene = rng.integers(0, 256, (400, 32), dtype=np.uint8)
    a = np.concatenate([noisy_copies(rng, scene[:250], 10), rng.integers(0, 256, (60, 32), dtype=np.uint8)])
    b_rows = rng.permutation(400)[:300]
    b = noisy_copies(rng, scene[b_rows], 10)
    got, want = match(a, b), reference_match(a, b)
    np.testing.assert_array_equal(got, want)
    # and it finds what is there: the rows of a made from the scene points b also holds, at the right rows
    truth = {(int(r), k) for k, r in enumerate(b_rows) if r < 250}
    found = {tuple(p) for p in got.tolist()}
    assert len(found & truth) >= 0.9 * len(truth) and len(found - truth) <= 2


def test_too_few_descriptors_give_no_matches():
    one = np.zeros((1, 32), np.uint8)
    assert match(one, np.zeros((5, 32), np.uint8)).shape == (0, 2)
    assert match(np.zeros((5, 32), np.uint8), one).shape == (0, 2)
