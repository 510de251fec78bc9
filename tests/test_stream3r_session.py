"""StreamSession: streaming == batch, multi-frame steps, dropping frames, bounded window cache,
in-place cache writes, bad inputs.

The batch masks themselves are checked against a loop-by-loop transcription of the definition
(frame i attends the anchor and frames max(1, i - ws + 1) .. i), and the batch model against
upstream in test_stream3r_upstream.py; here the session must reproduce the batch model.
"""
from __future__ import annotations

import pytest
import torch

from stream3r import StreamSession
from stream3r.masks import batch_mask, frame_visibility
from tests.stream3r_helpers import close, lively_model


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models: one intra-op thread is fastest and immune to OpenMP spin-waits on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

KEYS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")
SMALL = dict(img_size=42, embed_dim=24, depth=2, num_heads=2, patch_embed="dinov2", dinov2_depth=1,
             dinov2_num_heads=2, camera_trunk_depth=2, camera_num_heads=4, camera_mlp_ratio=2.0, dpt_features=8,
             dpt_out_channels=(8, 8, 16, 16), dpt_intermediate_layers=(0, 1, 0, 1))


@pytest.fixture(scope="module")
def model():
    return lively_model(SMALL)


@pytest.fixture(scope="module")
def frames():
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 11, 3, 28, 42, generator=g)



def assert_same(out, ref, msg=""):
    for k in KEYS:
        assert out[k].shape == ref[k].shape, (k, msg)
        assert close(out[k], ref[k]), (k, msg, float((out[k] - ref[k]).abs().max()))


def stream(model, frames, mode, ws=5, chunks=None, **kw):
    s = StreamSession(model, mode=mode, window_size=ws, **kw)
    S = frames.shape[1]
    chunks = chunks or [1] * S
    outs, i = [], 0
    for c in chunks:
        outs.append(s.forward_stream(frames[:, i : i + c] if c > 1 else frames[:, i]))
        i += c
    assert i == S
    return s, {k: torch.cat([o[k] for o in outs], dim=1) for k in KEYS}


# ------------------------------------------------------------------------------- masks
def loop_mask(S, mode, ws):
    """Transcription of the definition, one frame at a time (True = may attend)."""
    m = torch.zeros(S, S, dtype=torch.bool)
    for i in range(S):
        for j in range(S):
            if mode == "full":
                m[i, j] = True
            elif mode == "causal":
                m[i, j] = j <= i
            else:
                m[i, j] = j == 0 or max(1, i - ws + 1) <= j <= i
    return m


@pytest.mark.parametrize("mode,ws", [("causal", 5), ("window", 1), ("window", 3), ("window", 5)])
def test_vectorised_masks_match_definition(mode, ws):
    S, P = 9, 3
    ids = torch.arange(S)
    assert torch.equal(frame_visibility(ids, ids, mode, ws), loop_mask(S, mode, ws))
    tok = batch_mask(S, P, mode, ws)
    assert tok.shape == (S * P, S * P)
    assert torch.equal(tok[::P, ::P], loop_mask(S, mode, ws))
    assert torch.equal(tok, loop_mask(S, mode, ws).repeat_interleave(P, 0).repeat_interleave(P, 1))
    assert batch_mask(S, P, "full") is None


# ------------------------------------------------------------------------------- streaming == batch
@pytest.mark.parametrize("mode,ws", [("causal", 5), ("window", 1), ("window", 2), ("window", 3), ("window", 5)])
def test_streaming_equals_batch(model, frames, mode, ws):
    with torch.no_grad():
        ref = model(frames, mode=mode, window_size=ws)
    s, out = stream(model, frames, mode, ws)
    assert_same(out, ref, f"{mode} ws={ws}")
    if mode == "window":
        assert s.num_cached_frames == min(frames.shape[1], 1 + ws)


@pytest.mark.parametrize("mode,ws,chunks", [("causal", 5, [3, 1, 4, 2, 1]), ("causal", 5, [11]),
                                            ("window", 3, [2, 3, 1, 4, 1]), ("window", 2, [5, 6]),
                                            ("window", 5, [1, 7, 3])])
def test_multi_frame_steps(model, frames, mode, ws, chunks):
    with torch.no_grad():
        ref = model(frames, mode=mode, window_size=ws)
    _, out = stream(model, frames, mode, ws, chunks)
    assert_same(out, ref, f"{mode} {chunks}")


def test_batched_streams(model):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 7, 3, 28, 28, generator=g)
    for mode, ws in (("causal", 5), ("window", 2)):
        with torch.no_grad():
            ref = model(x, mode=mode, window_size=ws)
        s = StreamSession(model, mode=mode, window_size=ws)
        outs = [s.forward_stream(x[:, i : i + 1]) for i in range(7)]
        assert_same({k: torch.cat([o[k] for o in outs], 1) for k in KEYS}, ref, mode)
        # and the two batch elements are independent streams
        with torch.no_grad():
            ref1 = model(x[1:], mode=mode, window_size=ws)
        assert close(ref["depth"][1], ref1["depth"][0])


def test_accepted_frame_shapes(model, frames):
    with torch.no_grad():
        ref = model(frames[:, :3], mode="causal")
    s = StreamSession(model)
    a = s.forward_stream(frames[0, 0])  # [3, H, W]
    b = s.forward_stream(frames[0, 1:2])  # [1, 3, H, W]
    c = s.forward_stream(frames[:, 2:3])  # [B, s, 3, H, W]
    for i, o in enumerate((a, b, c)):
        assert o["pose_enc"].shape == (1, 1, 9)
        assert o["depth"].shape == (1, 1, 28, 42, 1)
        assert close(o["depth"][:, 0], ref["depth"][:, i])
    assert s.num_frames == 3


# ------------------------------------------------------------------------------- dropping frames
@pytest.mark.parametrize("mode,ws", [("causal", 5), ("window", 2), ("window", 3)])
def test_keyframe_dropping_equals_never_feeding(model, frames, mode, ws):
    keep = [0, 1, 4, 5, 7, 10]  # e.g. a keyframe policy; the rest are dropped right after feeding
    s = StreamSession(model, mode=mode, window_size=ws)
    kept_outs = []
    for i in range(frames.shape[1]):
        out = s.forward_stream(frames[:, i])
        if i in keep:
            kept_outs.append(out)
        else:
            s.drop_last()
    assert s.num_frames == len(keep)
    with torch.no_grad():  # independent truth: the batch model on the kept frames only
        ref = model(frames[:, keep], mode=mode, window_size=ws)
    assert_same({k: torch.cat([o[k] for o in kept_outs], 1) for k in KEYS}, ref, mode)


def test_drop_several_causal_and_drop_all(model, frames):
    s = StreamSession(model, mode="causal")
    for i in range(6):
        s.forward_stream(frames[:, i])
    s.drop_last(3)
    assert s.num_frames == 3 and s.num_cached_frames == 3
    out = s.forward_stream(frames[:, 6])
    with torch.no_grad():
        ref = model(frames[:, [0, 1, 2, 6]], mode="causal")
    assert close(out["depth"][:, 0], ref["depth"][:, 3])
    s.drop_last(4)  # everything: the next frame is an anchor again
    assert s.num_frames == 0 and s.num_cached_frames == 0
    out = s.forward_stream(frames[:, 5])
    with torch.no_grad():
        ref = model(frames[:, 5:6], mode="causal")
    assert close(out["pose_enc"], ref["pose_enc"])


def test_window_drop_that_cannot_be_exact_raises(model, frames):
    s = StreamSession(model, mode="window", window_size=2)
    for i in range(6):
        s.forward_stream(frames[:, i])
    with pytest.raises(ValueError, match="window"):
        s.drop_last(2)  # frame 3 already left the 2-frame ring
    assert s.num_frames == 6  # state unchanged
    s.drop_last(1)
    with pytest.raises(ValueError):
        s.drop_last(7)


def test_drop_then_multi_frame_step(model, frames):
    s = StreamSession(model, mode="window", window_size=3)
    outs = [s.forward_stream(frames[:, :4])]
    s.forward_stream(frames[:, 4])
    s.drop_last()
    outs.append(s.forward_stream(frames[:, 5:9]))
    with torch.no_grad():
        ref = model(frames[:, [0, 1, 2, 3, 5, 6, 7, 8]], mode="window", window_size=3)
    assert_same({k: torch.cat([o[k] for o in outs], 1) for k in KEYS}, ref)


# ------------------------------------------------------------------------------- cache behaviour
def test_window_cache_is_bounded_and_written_in_place(model, frames):
    ws = 3
    s = StreamSession(model, mode="window", window_size=ws)
    sizes, ptrs = [], []
    for i in range(frames.shape[1]):
        s.forward_stream(frames[:, i])
        assert s.num_cached_frames <= 1 + ws
        sizes.append(s.cache_bytes)
        ptrs.append(s._agg.k[0].data_ptr())
    assert len(set(sizes)) == 1 and len(set(ptrs)) == 1  # allocated once, never grows, never moves
    P = 1 + 4 + 2 * 3
    dim = SMALL["embed_dim"]
    agg = 2 * SMALL["depth"] * (1 + ws) * P * dim * 4
    cam = 2 * 4 * SMALL["camera_trunk_depth"] * (1 + ws) * 2 * dim * 4
    assert sizes[0] == agg + cam


def test_causal_cache_preallocated_from_max_frames(model, frames):
    s = StreamSession(model, mode="causal", max_frames=11)
    ptrs = []
    for i in range(11):
        s.forward_stream(frames[:, i])
        ptrs.append((s._agg.k[1].data_ptr(), s._cam.k[5].data_ptr()))
    assert len(set(ptrs)) == 1
    assert s.cache_capacity_frames == 11 and s.num_cached_frames == 11


def test_causal_cache_grows_in_chunks(model, frames):
    with torch.no_grad():
        ref = model(frames, mode="causal")
    s, out = stream(model, frames, "causal", grow_frames=3)
    assert_same(out, ref)
    assert s.cache_capacity_frames == 12  # 3 -> 6 -> 9 -> 12
    s.clear()
    assert s.cache_bytes == 0 and s.num_frames == 0


def test_heads_subset(model, frames):
    s = StreamSession(model, heads=("camera",))
    out = s.forward_stream(frames[:, 0])
    assert set(out) == {"pose_enc"}
    out = s.forward_stream(frames[:, 1], heads=("depth",))
    assert set(out) == {"depth", "depth_conf"}
    with torch.no_grad():
        ref = model(frames[:, :2], mode="causal")
    assert close(out["depth"][:, 0], ref["depth"][:, 1])


# ------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_value_errors(model, frames):
    s = StreamSession(model)
    x = frames[:, 0]
    with pytest.raises(ValueError, match="rank"):
        s.forward_stream(x[0, 0])  # [H, W]
    with pytest.raises(ValueError, match="rank"):
        s.forward_stream(frames[None])  # 6-D
    with pytest.raises(ValueError, match="multiples"):
        s.forward_stream(torch.rand(3, 30, 42))
    with pytest.raises(ValueError, match="integer"):
        s.forward_stream((x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        s.forward_stream(x * 255)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        s.forward_stream(x - 0.5)
    with pytest.raises(ValueError, match="3 channels"):
        s.forward_stream(torch.rand(1, 4, 28, 42))
    s.forward_stream(x)
    with pytest.raises(ValueError, match="differs"):
        s.forward_stream(torch.rand(3, 42, 42))
    s.clear()
    s.forward_stream(torch.rand(3, 42, 42))  # a new stream may have another size
    with pytest.raises(ValueError, match="mode"):
        StreamSession(model, mode="full")
    with pytest.raises(ValueError, match="mode"):
        StreamSession(model, mode="sliding")
    for bad in (0, -1):
        with pytest.raises(ValueError, match="window_size"):
            StreamSession(model, mode="window", window_size=bad)
    with pytest.raises(ValueError, match="max_frames"):
        StreamSession(model, max_frames=0)


def test_model_bad_inputs(model):
    x = torch.rand(2, 3, 28, 28)
    with pytest.raises(ValueError, match="mode"):
        model(x, mode="bidirectional")
    with pytest.raises(ValueError, match="window_size"):
        model(x, mode="window", window_size=0)
    with pytest.raises(ValueError, match="rank"):
        model(x[0])
    with pytest.raises(ValueError, match="multiples"):
        model(torch.rand(2, 3, 28, 20))
    with pytest.raises(ValueError, match="integer"):
        model(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model(x * 3)
    with pytest.raises(ValueError, match="heads"):
        model(x, heads=("normals",))


def test_cudnn_key_groups_partition_the_cache_with_recurring_shapes():
    from stream3r.layers.attention import CUDNN_CHUNK_FRAMES, CUDNN_MAX_GROUPS, _cudnn_groups

    P = 37
    shapes = set()
    for nf in range(1, 300):
        groups, tail = _cudnn_groups(P, nf * P)
        pos = 0
        for start, n in groups:
            assert start == pos and n & (n - 1) == 0  # contiguous, power-of-two chunk counts
            pos += n * CUDNN_CHUNK_FRAMES * P
            shapes.add(n)
        assert pos == tail <= nf * P and len(groups) <= CUDNN_MAX_GROUPS
    assert len(shapes) <= 6  # a handful of cuDNN shapes over a 300-frame stream
