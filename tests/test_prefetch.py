"""Reading ahead in a background thread (``source.prefetch``): same frames, same order, same results.

Independent truth: the fake source's frames are numbered; a recording frontend notes which
thread prepared each frame and what it tracked; the prefetcher is checked against a plain
iteration of the same source, a producer that counts how far it got, and a bad frame whose
position is known. The STream3R frontend's prepared path is checked against a second frontend
with identical (seeded) weights that never prepares.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from slam3r_app.config import load_config
from slam3r_app.errors import SourceError
from slam3r_app.frame_loop import run
from slam3r_app.hookspecs import hookimpl
from slam3r_app.pipeline import Pipeline
from slam3r_app.plugin_host import PluginHost
from slam3r_app.prefetch import Prefetcher
from slam3r_app.types import Frame
from tests.fakes import FakeFrontend, FakePlugin, FakeSource


def test_frames_come_out_in_order_and_prepared_in_the_background():
    seen = []
    prepared = {}

    def prepare(frame):
        prepared[frame.index] = threading.current_thread().name

    with Prefetcher(FakeSource(n=7).frames(), prepare=prepare, depth=2) as frames:
        for frame in frames:
            seen.append(frame.index)
    assert seen == [f.index for f in FakeSource(n=7).frames()] == list(range(7))
    assert set(prepared) == set(range(7))
    assert set(prepared.values()) == {"slam3r-prefetch"}


def _wait_until(cond, guard_s: float = 120.0) -> None:
    """Poll ``cond`` until it holds (``guard_s`` only catches a hang, it is no timing margin)."""
    deadline = time.monotonic() + guard_s
    while not cond():
        assert time.monotonic() < deadline, "the prefetch thread never got there"
        time.sleep(0.001)


def test_reads_ahead_by_depth_while_the_consumer_is_busy():
    produced = []

    def numbers():
        for i in range(20):
            produced.append(i)
            yield Frame(index=i, timestamp=float(i), rgb=np.zeros((2, 2, 3), np.uint8))

    with Prefetcher(numbers(), depth=3) as frames:
        it = iter(frames)
        assert next(it).index == 0
        # the consumer "tracks" frame 0; the thread fills the queue meanwhile (waited for, not slept on)
        _wait_until(lambda: frames._queue.full() and len(produced) == 5)
        # frame 0 handed over, 3 frames queued, and one more read, held while it waits for room: the
        # queue is full, so the thread cannot have read a sixth
        assert len(produced) == 5
        assert next(it).index == 1
        _wait_until(lambda: frames._queue.full() and len(produced) == 6)  # one taken: exactly one more read
        assert len(produced) == 6


def test_a_bad_frame_is_raised_in_the_consumer_after_the_frames_before_it():
    got = []
    with pytest.raises(SourceError, match="frame_0003.png"):
        with Prefetcher(FakeSource(n=6, bad_at=3).frames(on_bad_frame="stop"), depth=2) as frames:
            for frame in frames:
                got.append(frame.index)
    assert got == [0, 1, 2]


def test_a_failing_prepare_is_ignored():
    def prepare(frame):
        raise RuntimeError("boom")

    with Prefetcher(FakeSource(n=4).frames(), prepare=prepare) as frames:
        assert [f.index for f in frames] == [0, 1, 2, 3]


def test_close_stops_an_endless_source_without_hanging():
    def endless():
        i = 0
        while True:
            yield Frame(index=i, timestamp=float(i), rgb=np.zeros((2, 2, 3), np.uint8))
            i += 1

    p = Prefetcher(endless(), depth=2)
    it = iter(p)
    assert [next(it).index for _ in range(3)] == [0, 1, 2]
    p.close()
    assert not p._thread.is_alive()  # close() joined it: the endless source did not keep it going


class PreparingFrontend(FakeFrontend):
    """A fake frontend that prepares ahead and records where and in which order things happen."""

    prepares_ahead = True

    def __init__(self) -> None:
        super().__init__()
        self.prepared: dict[int, str] = {}
        self.tracked: list[tuple[int, bool]] = []  # (index, was it prepared before track?)

    def prepare(self, frame):
        self.prepared[frame.index] = threading.current_thread().name

    def track(self, frame):
        self.tracked.append((frame.index, frame.index in self.prepared))
        return super().track(frame)


class PreparingPlugin(FakePlugin):
    @hookimpl
    def slam3r_make_frontend(self, name, context):
        self.frontend = PreparingFrontend()
        return self.frontend


def _run(tmp_path, prefetch, **source_kw):
    cfg = load_config(data={"source": {"type": "fake", "prefetch": prefetch}, "frontend": "fake", "progress": False})
    host = PluginHost(builtins=False, entry_points=False)
    plugin = PreparingPlugin(**source_kw)
    host.register(plugin, "fake")
    pipe = Pipeline(cfg, output=str(tmp_path / f"run{prefetch}"), host=host)
    return run(cfg, pipeline=pipe), plugin.frontend


def test_the_loop_prefetches_file_sources_and_results_are_unchanged(tmp_path):
    ahead, fe_ahead = _run(tmp_path, prefetch=2, n=8)
    inline, fe_inline = _run(tmp_path, prefetch=0, n=8)
    assert [i for i, _ in fe_ahead.tracked] == list(range(8))
    assert all(was for _, was in fe_ahead.tracked)  # every frame was prepared before it was tracked
    assert set(fe_ahead.prepared.values()) == {"slam3r-prefetch"}
    assert fe_inline.prepared == {}  # prefetch 0: the loop never calls prepare
    np.testing.assert_array_equal(ahead.pose_array(), inline.pose_array())
    assert ahead.frames_seen == inline.frames_seen == 8


def test_a_bad_frame_stops_a_prefetched_run_with_the_frames_before_it_kept(tmp_path):
    result, fe = _run(tmp_path, prefetch=2, n=6, bad_at=4)
    assert result.ended_by == "error" and "frame_0004.png" in result.stop_reason
    assert result.frames_seen == 4 and (tmp_path / "run2" / "summary.json").is_file()


def test_stream3r_prepared_frames_give_the_same_estimate_as_inline():
    from slam3r_plugins.frontend_stream3r import Stream3rFrontend
    from tests.test_frontend_stream3r import tiny_model_cfg

    a, b = Stream3rFrontend(tiny_model_cfg()), Stream3rFrontend(tiny_model_cfg())  # same seed, same weights
    assert not a.prepares_ahead  # on the CPU the prefetch thread would take the model's cores
    rng = np.random.default_rng(3)
    for i in range(3):
        frame = Frame(index=i, timestamp=float(i), rgb=rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        a.prepare(frame)
        ea, eb = a.track(frame), b.track(frame)
        np.testing.assert_array_equal(ea.pose, eb.pose)
        np.testing.assert_array_equal(ea.depth, eb.depth)
    assert a._prepared == {}  # every prepared frame was consumed
