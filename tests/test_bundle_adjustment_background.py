"""The adjustment's window matching done in the background during the run (plugins/bundle_adjustment).

Independent truth here is the adjustment done the other way: every pair matched when the stream
has ended. Matching the window while frames arrive must give the same bits, also when the frame
buffer is thinned under the matcher, and must leave no worker thread behind.
"""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

pytest.importorskip("gtsam")

from slam3r_plugins.bundle_adjustment.background_matching import BackgroundMatcher  # noqa: E402
from slam3r_plugins.bundle_adjustment.plugin import KeptFrame  # noqa: E402
from slam3r_plugins.features import FrameFeatures, match  # noqa: E402


def _frame(index: int, rng: np.random.Generator, shared: np.ndarray) -> KeptFrame:
    """200 descriptors: 150 of a shared set (shuffled) and 50 of the frame's own."""
    own = rng.integers(0, 256, (50, 32), dtype=np.uint8)
    desc = np.concatenate([shared[rng.permutation(len(shared))[:150]], own])
    kp = rng.uniform(0, 600, (len(desc), 2)).astype(np.float32)
    return KeptFrame(index, index / 30.0, FrameFeatures(kp, desc, np.ones((len(desc), 3), np.float32)))


def _frames(n: int, seed: int) -> list[KeptFrame]:
    rng = np.random.default_rng(seed)
    shared = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    return [_frame(i, rng, shared) for i in range(n)]


def test_the_pairs_are_matched_as_the_end_of_run_would_match_them():
    frames = _frames(7, seed=0)
    matcher = BackgroundMatcher()
    try:
        for k, f in enumerate(frames):
            matcher.add(f, frames[max(0, k - 3):k])
            matcher.add(f, frames[max(0, k - 1):k])  # queued already: not again
        got = matcher.results()
    finally:
        matcher.close()
    expected_pairs = {(i, j) for i in range(7) for j in range(max(0, i - 3), i)}
    assert set(got) == expected_pairs
    for (i, j), m in got.items():
        np.testing.assert_array_equal(m, match(frames[i].features.descriptors, frames[j].features.descriptors))
        assert len(m) > 50  # the shared descriptors are found


def test_forget_drops_the_pairs_of_frames_no_longer_kept():
    frames = _frames(5, seed=1)
    matcher = BackgroundMatcher()
    try:
        for k, f in enumerate(frames):
            matcher.add(f, frames[max(0, k - 2):k])
        matcher.forget({0, 2, 4})
        assert set(matcher.results()) == {(2, 0), (4, 2)}  # the pairs of a window of 2 between kept frames
    finally:
        matcher.close()


def test_a_worker_that_falls_behind_leaves_the_pairs_to_the_end(monkeypatch):
    """While more than ``MAX_PENDING`` pairs wait, a new frame's pairs are not queued (the end of the run
    matches them): the queue, and the wait for it when the stream ends, stay bounded."""
    from slam3r_plugins import features

    release = threading.Event()

    def blocked_match(a, b):
        release.wait()
        return match(a, b)

    monkeypatch.setattr(features, "match", blocked_match)
    frames = _frames(12, seed=2)
    matcher = BackgroundMatcher()
    try:
        queued = [matcher.add(f, frames[max(0, k - 4):k]) for k, f in enumerate(frames)]
        # frames 1-5 queue 1 + 2 + 3 + 4 + 4 = 14 pairs (at most one of them taken by the worker); frame 6's
        # 4 more make 18 > MAX_PENDING = 16: from frame 7 on nothing is queued while the worker is blocked
        assert queued[:7] == [True] * 7 and not any(queued[7:])
        release.set()
        assert len(matcher.results()) == 18
    finally:
        release.set()
        matcher.close()


def _run(tmp_path, name: str, overrides: list[str]):
    from slam3r_app.config import load_config
    from slam3r_app.frame_loop import run
    from slam3r_app.pipeline import Pipeline

    cfg = load_config("demo.yaml", overrides=["progress=false", "source.max_frames=26",
                                              "disable=[fusion,pointcloud,exports,evaluation,viewer,rerun,controls]",
                                              *overrides])
    pipe = Pipeline(cfg, output=str(tmp_path / name))
    result = run(cfg, pipeline=pipe)
    return tmp_path / name, result


def test_background_matching_gives_the_same_trajectory_as_matching_at_the_end(tmp_path):
    """The shipped sample's first 26 frames with at most 10 frames kept (the buffer is thinned twice while
    the matcher works): the same trajectory bits as the adjustment matching every pair at the end."""
    threads_before = {t.ident for t in threading.enumerate()}
    ov = ["bundle_adjustment.max_frames=10", "bundle_adjustment.min_observed_fraction=0.0"]
    during, res_during = _run(tmp_path, "during", ov)
    info = res_during.info["bundle_adjustment"]
    assert info["applied"] is True and info["stride"] == 4, info
    assert info["pairs_matched_during_run"] > 0

    at_end, res_at_end = _run(tmp_path, "at_end", [*ov, "bundle_adjustment.match_during_run=false"])
    assert res_at_end.info["bundle_adjustment"]["pairs_matched_during_run"] == 0
    assert res_at_end.info["bundle_adjustment"]["applied"] is True
    assert (during / "trajectory.txt").read_bytes() == (at_end / "trajectory.txt").read_bytes()
    assert json.loads((during / "summary.json").read_text())["frames"] == 26

    # no matching worker outlives its run
    for t in threading.enumerate():
        if t.ident not in threads_before and t.name.startswith("slam3r-ba-matching"):
            t.join(timeout=60)
            assert not t.is_alive(), t.name
