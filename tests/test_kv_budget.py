"""The KV-cache budget (``model.cache_frames``, issue 23).

Truths used here, none taken from the code under test:

* a budgeted stream must equal one batch forward of the same frames whose frame-visibility matrix
  is the cache content the policy prescribes at each step (frame ``t`` attends exactly the frames
  cached when it was fed, and itself) -- the policy transcribed in the test from its definition
  (anchor always, then evict the oldest non-retained frame);
* a budget larger than the stream changes nothing, to the bit;
* the issue's bar: 600 frames, 120 of them kept (every 5th), budget 16 -> never more than 16 frames
  cached, every frame tracked with finite outputs.
"""
from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch

from slam3r_app.config import load_config
from slam3r_app.errors import ConfigError
from slam3r_app.place_hints import PlaceHints
from slam3r_app.types import Frame
from stream3r import StreamSession
from stream3r.layers.attention import attention
from stream3r.masks import token_mask
from stream3r.session import choose_evictions
from tests.stream3r_helpers import close, lively_model

KEYS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")
SMALL = dict(img_size=42, embed_dim=24, depth=2, num_heads=2, patch_embed="dinov2", dinov2_depth=1,
             dinov2_num_heads=2, camera_trunk_depth=2, camera_num_heads=4, camera_mlp_ratio=2.0, dpt_features=8,
             dpt_out_channels=(8, 8, 16, 16), dpt_intermediate_layers=(0, 1, 0, 1))
TINY_ARCH = {"embed_dim": 16, "depth": 1, "num_heads": 2, "patch_embed": "conv", "camera_trunk_depth": 1,
             "camera_num_heads": 2, "dpt_features": 8, "dpt_out_channels": [4, 8, 8, 8],
             "dpt_intermediate_layers": [0, 0, 0, 0]}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    return lively_model(SMALL)


@pytest.fixture(scope="module")
def frames():
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 12, 3, 28, 42, generator=g)



# ------------------------------------------------------------------------------- the policy alone
def test_choose_evictions_keeps_anchor_recent_and_retained():
    cached = [0, 2, 4, 6, 8, 10]
    assert choose_evictions(cached, 1) == [2]  # the oldest besides the anchor
    assert choose_evictions(cached, 3) == [2, 4, 6]  # the most recent stay
    assert choose_evictions(cached, 2, retain=[2]) == [4, 6]  # a retained frame is spared
    # only retained frames left besides the anchor: the lowest priority (last listed) goes first
    assert choose_evictions([0, 3, 5], 1, retain=[5, 3]) == [3]
    with pytest.raises(ValueError, match="only 2 besides the anchor"):
        choose_evictions([0, 3, 5], 3)


# ------------------------------------------------------------------------------- session level
def expected_visibility(S, keep, budget, retain_at=None):
    """Transcription of the policy: cached set before each step, eviction of the oldest
    non-anchor non-retained frame when the step would not fit; non-kept frames are dropped."""
    vis = torch.zeros(S, S, dtype=torch.bool)
    cached: list[int] = []
    for t in range(S):
        retain = (retain_at or {}).get(t, [])
        while budget is not None and len(cached) + 1 > budget:
            victims = [f for f in cached if f != 0 and f not in retain] or [f for f in cached if f != 0]
            cached.remove(min(victims))
        for j in cached + [t]:
            vis[t, j] = True
        if keep(t):
            cached.append(t)
    return vis


def batch_with_visibility(model, frames, vis):
    B, S, _, H, W = frames.shape
    P = model.aggregator.tokens_per_frame(H, W)
    agg, cam = token_mask(vis, P), token_mask(vis, 1)
    with torch.no_grad():
        return model.predict(frames, starts_stream=True, aggregator_attend=lambda i: partial(attention, mask=agg),
                             camera_attend=lambda it, i: partial(attention, mask=cam))


def stream_budgeted(model, frames, keep, budget, retain_at=None, **kw):
    s = StreamSession(model, mode="causal", cache_frames=budget, **kw)
    outs, held = [], []
    for t in range(frames.shape[1]):
        if retain_at and t in retain_at:
            s.retain(retain_at[t])
        outs.append(s.forward_stream(frames[:, t]))
        held.append(s.num_cached_frames)
        if not keep(t):
            s.drop_last(1)
    return s, {k: torch.cat([o[k] for o in outs], dim=1) for k in KEYS}, held


@pytest.mark.parametrize("budget,keep", [(4, lambda t: True), (3, lambda t: t % 2 == 0), (5, lambda t: t % 3 != 1)])
def test_budgeted_stream_equals_batch_with_the_policys_visibility(model, frames, budget, keep):
    S = frames.shape[1]
    s, out, held = stream_budgeted(model, frames, keep, budget)
    assert max(held) <= budget and s.evictions > 0
    ref = batch_with_visibility(model, frames, expected_visibility(S, keep, budget))
    for k in KEYS:
        assert close(out[k], ref[k]), (k, float((out[k] - ref[k]).abs().max()))


def test_retained_frames_survive_eviction(model, frames):
    S = frames.shape[1]
    retain_at = {t: [1] for t in range(2, S)}  # from step 2 on, frame 1 must stay
    s, out, held = stream_budgeted(model, frames, lambda t: True, 4, retain_at)
    assert 1 in s.cached_frame_ids and 0 in s.cached_frame_ids and max(held) <= 4
    ref = batch_with_visibility(model, frames, expected_visibility(S, lambda t: True, 4, retain_at))
    for k in KEYS:
        assert close(out[k], ref[k]), k


def test_budget_larger_than_the_stream_is_bit_identical(model, frames):
    keep = lambda t: t % 3 != 2  # noqa: E731  (a keyframe-like stream)
    _, a, _ = stream_budgeted(model, frames, keep, None)
    s, b, held = stream_budgeted(model, frames, keep, frames.shape[1] + 1)
    assert s.evictions == 0
    for k in KEYS:
        assert torch.equal(a[k], b[k]), k


def test_window_budget_below_the_ring_shrinks_the_window(model, frames):
    s = StreamSession(model, mode="window", window_size=5, cache_frames=3)
    assert s.window_size == 2
    with torch.no_grad():
        ref = model(frames, mode="window", window_size=2)
    outs = [s.forward_stream(frames[:, t]) for t in range(frames.shape[1])]
    assert s.num_cached_frames == 3
    assert close(torch.cat([o["pose_enc"] for o in outs], 1), ref["pose_enc"])
    with pytest.raises(ValueError, match="int >= 2"):
        StreamSession(model, cache_frames=1)
    with pytest.raises(ValueError, match="does not fit"):
        StreamSession(model, cache_frames=3).forward_stream(frames[:, :3])


def test_cache_frames_config_is_checked():
    assert load_config(data={"model": {"cache_frames": 16}}).run.model.cache_frames == 16
    assert load_config(data={}).run.model.cache_frames == "auto"
    assert load_config(data={"model": {"cache_frames": None}}).run.model.cache_frames is None
    with pytest.raises(ConfigError, match="cache_frames"):
        load_config(data={"model": {"cache_frames": 1}})


# ------------------------------------------------------------------------------- the frontend
def tiny_cfg(**kw):
    data = {"random_weights": True, "device": "cpu", "image_size": 28, "arch": TINY_ARCH, **kw}
    return load_config(data={"model": data}).run.model


def test_issue_bar_600_frames_120_keyframes_budget_16():
    from slam3r_plugins.frontend_stream3r import Stream3rFrontend

    fe = Stream3rFrontend(tiny_cfg(cache_frames=16))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    held, kept = [], 0
    for i in range(600):
        rgb = np.roll(base, i % 32, axis=1)
        est = fe.track(Frame(index=i, timestamp=i / 30, rgb=rgb))
        held.append(fe.session.num_cached_frames)
        assert np.isfinite(est.pose).all() and np.isfinite(est.depth).all(), i
        if i % 5 == 0:
            kept += 1
        else:
            fe.forget_last()
    st = fe.stats()
    assert kept == 120 and max(held) <= 16 and st["cache_frames_max"] <= 16 and st["cache_budget"] == 16
    assert st["cache_evictions"] == 120 - 15  # 16 slots: 15 keyframes + the current frame
    assert 0 in fe.session.cached_frame_ids  # the anchor never leaves


def test_retrieved_keyframe_comes_back_into_the_cache():
    from slam3r_plugins.frontend_stream3r import Stream3rFrontend

    places = PlaceHints()
    fe = Stream3rFrontend(tiny_cfg(cache_frames=5, cache_relevant=2), places=places)
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (24, 32, 3), dtype=np.uint8) for _ in range(30)]
    for i in range(20):  # every frame kept: frames 0 and 16..19 remain (budget 5, the next step needs a slot)
        fe.track(Frame(index=i, timestamp=float(i), rgb=imgs[i]))
    assert 3 not in fe._sid or fe._sid[3] not in fe.session.cached_frame_ids
    places.publish(19, [3, 4])  # the camera is back where keyframes 3 and 4 were taken
    for i in range(20, 23):  # one extra step per retrieval: the best-ranked missing keyframe, 3
        fe.track(Frame(index=i, timestamp=float(i), rgb=imgs[i]))
        assert fe.session.num_cached_frames <= 5
    assert fe._sid[3] in fe.session.cached_frame_ids and fe.stats()["cache_readmissions"] == 1
    places.publish(22, [4, 3])  # the next keyframe's retrieval
    fe.track(Frame(index=23, timestamp=23.0, rgb=imgs[23]))
    cached = set(fe.session.cached_frame_ids)
    assert fe._sid[3] in cached and fe._sid[4] in cached and 0 in cached  # 3 retained, 4 fed again
    st = fe.stats()
    assert st["cache_readmissions"] == 2 and st["cache_frames_max"] <= 5
    fe.track(Frame(index=24, timestamp=24.0, rgb=imgs[24]))  # nothing missing: no extra step
    assert fe.stats()["cache_readmissions"] == 2


def test_auto_budget_is_set_at_the_first_frame_and_reported(tmp_path):
    from slam3r_app.cli import main as cli_main

    src = tmp_path / "seq"
    assert cli_main(["synth", "--out", str(src), "--frames", "40", "--format", "tum", "--width", "32",
                     "--height", "24", "-q"]) == 0
    out = tmp_path / "run"
    arch = ("model.arch={embed_dim: 16, depth: 1, num_heads: 2, patch_embed: conv, camera_trunk_depth: 1, "
            "camera_num_heads: 2, dpt_features: 8, dpt_out_channels: [4, 8, 8, 8], dpt_intermediate_layers: [0, 0, 0, 0]}")
    rc = cli_main(["--config", "tum.yaml", "--set", f"source.path={src}", "--set", "model.random_weights=true",
                   "--set", arch, "--set", "model.image_size=28", "--set", "model.device=cpu",
                   "--set", "disable=[fusion,pointcloud,viewer,evaluation,loop_closure,exports]",
                   "--set", "keyframes.mode=motion", "--set", "keyframes.min_translation=1e9",
                   "--set", "keyframes.min_rotation_deg=180", "--set", "keyframes.max_interval=2",
                   "--set", "source.prefetch=0", "--set", "source.stride=1", "--set", "source.max_frames=40",
                   "--output", str(out), "--quiet"])
    assert rc == 0
    fs = json.loads((out / "summary.json").read_text())["frontend_stats"]
    assert fs["cache_budget"] == 32 and fs["cache_budget_source"].startswith("auto")
    assert fs["cache_frames_max"] == 21 and fs["cache_frames"] == 20  # 20 keyframes of 40, + the current frame
    assert fs["cache_evictions"] == 0 and fs["cache_mb_per_frame"] > 0
    assert "KV-cache budget: 32 frames (auto" in (out / "run.log").read_text()
