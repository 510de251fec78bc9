"""Streaming inference with a KV cache: one frame (or a few) at a time.

``StreamSession(model, mode="causal" | "window", window_size=5, max_frames=None)``;
``forward_stream(frames)`` returns the predictions of just those frames, equal (to float
tolerance) to the same frames' rows of ``model(all_frames_so_far, mode=mode,
window_size=window_size)``.

KV cache layout
---------------
Every global attention layer of the aggregator, and every (iteration, trunk layer) pair of the
camera head, owns a key and a value tensor ``[B, slots * P, heads, head_dim]`` (``P`` tokens per
frame: ``1 + registers + patches`` in the aggregator, 1 in the camera head).  Frames occupy
*slots*; the host keeps the stream position (frame id) of each slot, so no step reads anything
back from the device.

* causal: slot ``i`` holds frame ``i``.  Storage is allocated once for ``max_frames`` frames
  (or ``grow_frames`` at a time), and grows layer by layer (so the transient extra memory is
  one layer's cache, not a second copy of the whole cache).  Growing caches fragment torch's
  default CUDA caching allocator: run with ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``
  (or give ``max_frames``) to keep reserved memory close to allocated memory.
* window: slot 0 holds the anchor (frame 0) and slots ``1 .. window_size`` form a ring of the
  most recent frames: ``(1 + window_size) * P`` tokens per layer, fixed.  Attention has no
  mask and RoPE has no time component, so the order of frames inside the ring is irrelevant.

A one-frame step writes the new keys/values into their slot in place and attends, without a
mask, over a contiguous prefix of the slots (this is what fast kernels like best; on CUDA the
keys are split into chunks run as one batched launch, see ``layers.attention.split_kv_attention``).
A step with several frames attends with a block-causal (or window) mask among the new frames.

On CUDA, one-frame steps are replayed as CUDA graphs by default (:class:`PiecewiseGraph`): the
static parts of the network run as captured graphs and only the cached attention calls run
eagerly in between, which removes most of the per-frame launch cost.  In window mode, once the
ring is full every step has the same shapes and cache addresses, so the whole step (cache writes
through a device-side slot index, attention included) is one CUDA graph (:class:`FullStepGraph`).
All graphs of a session share one memory pool.

Cache budget (``cache_frames``)
------------------------------
``StreamSession(..., cache_frames=N)`` bounds the frames held in the cache, the step's own frame
included, in every mode.  Causal mode: before a step that would exceed ``N``, frames are evicted
(:func:`choose_evictions`): never the anchor (frame 0), then the oldest frames that the caller did
not ask to keep (:meth:`retain`), then the retained ones, lowest priority first.  An evicted slot is
refilled by the newest slot (one frame's keys/values copied per layer), so the cached frames stay a
contiguous prefix of the storage; their order there does not matter (no mask, no time in RoPE).
With ``N`` reached, every step attends over exactly ``N`` frames: a shape that recurs, so on CUDA the
whole step is one CUDA graph as in window mode.  Window mode: the ring holds ``1 + window_size``
frames; a budget below that shrinks the window to ``N - 1`` (with a warning).  ``cache_frames=None``
(the library default) keeps every frame, as before; a budget larger than the stream changes
nothing (same slots, same kernels, bit-identical outputs).

``drop_last(n)`` removes the newest frames so that the session is exactly as if they had never
been fed (keyframe policies call it right after ``forward_stream`` for a non-keyframe).  In
window mode frames that already left the ring cannot be brought back, so a drop that would need
them raises ValueError (dropping the newest frame is always possible).

Host syncs: none in the per-frame path when the input is on the GPU (the [0, 1] range check
runs on CPU inputs only unless ``check_values=True``).  No past predictions are kept.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .layers.attention import attention, warmup_cached_attention
from .masks import check_mode, frame_visibility, token_mask
from .model import HEADS, STream3R, _check_heads, check_images  # noqa: F401

log = logging.getLogger(__name__)

# CUDA-graph capture checks only this thread's CUDA calls: another thread of the process (the
# app's prefetch thread pinning the next image, a viewer) may allocate host or device memory
# meanwhile without invalidating the capture.
CAPTURE_MODE = "thread_local"


def choose_evictions(cached: Sequence[int], n: int, retain: Sequence[int] = (), anchor: int = 0) -> List[int]:
    """The ``n`` frames to evict from ``cached`` (stream positions): never ``anchor``; first the
    frames not in ``retain``, oldest first (so the most recent ones stay), then the retained ones,
    lowest priority (last in ``retain``) first.

    >>> choose_evictions([0, 3, 5, 8, 9], 2, retain=[3])
    [5, 8]
    """
    keep_rank = {f: r for r, f in enumerate(retain)}
    pool = [f for f in cached if f != anchor]
    plain = sorted(f for f in pool if f not in keep_rank)
    kept = sorted((f for f in pool if f in keep_rank), key=lambda f: -keep_rank[f])
    order = plain + kept
    if n > len(order):
        raise ValueError(f"cannot evict {n} frames: only {len(order)} besides the anchor are cached")
    return order[:n]


class KVStore:
    """Key/value storage of ``num_layers`` attention layers in frame slots (see module docstring).

    Storage is allocated lazily at the first write (shape taken from the keys), per layer, with
    ``capacity`` frame slots; :meth:`reserve` grows one layer's storage.
    """

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self.k: List[Optional[Tensor]] = [None] * num_layers
        self.v: List[Optional[Tensor]] = [None] * num_layers
        self.tokens_per_frame = 0

    def clear(self) -> None:
        self.k = [None] * self.num_layers
        self.v = [None] * self.num_layers
        self.tokens_per_frame = 0

    def capacity(self, layer: int) -> int:
        k = self.k[layer]
        return 0 if k is None else k.shape[1] // self.tokens_per_frame

    def reserve(self, layer: int, like: Tensor, tokens_per_frame: int, slots: int) -> None:
        """Make layer ``layer`` hold at least ``slots`` frames (copying what it holds)."""
        self.tokens_per_frame = tokens_per_frame
        old_k, old_v = self.k[layer], self.v[layer]
        if old_k is not None and old_k.shape[1] >= slots * tokens_per_frame:
            return
        B, _, h, d = like.shape
        shape = (B, slots * tokens_per_frame, h, d)
        # zeros, not empty: masked-out (never written) slots must hold finite values (0 * NaN = NaN)
        new_k = torch.zeros(shape, dtype=like.dtype, device=like.device)
        new_v = torch.zeros(shape, dtype=like.dtype, device=like.device)
        if old_k is not None:
            n = old_k.shape[1]
            new_k[:, :n].copy_(old_k)
            new_v[:, :n].copy_(old_v)
        self.k[layer], self.v[layer] = new_k, new_v  # old storage freed here

    def write(self, layer: int, slot: int, k: Tensor, v: Tensor) -> None:
        """Copy ``k, v`` ``[B, m * P, h, d]`` into slots ``slot .. slot + m - 1``."""
        P = self.tokens_per_frame
        a, b = slot * P, slot * P + k.shape[1]
        self.k[layer][:, a:b].copy_(k)
        self.v[layer][:, a:b].copy_(v)

    def move(self, layer: int, src: int, dst: int) -> None:
        """Copy frame slot ``src`` of layer ``layer`` onto slot ``dst`` (eviction compaction)."""
        P = self.tokens_per_frame
        self.k[layer][:, dst * P:(dst + 1) * P].copy_(self.k[layer][:, src * P:(src + 1) * P])
        self.v[layer][:, dst * P:(dst + 1) * P].copy_(self.v[layer][:, src * P:(src + 1) * P])

    def bytes_per_frame(self) -> int:
        """Bytes one frame slot takes over all layers (0 before the first write)."""
        cap = self.capacity(0) if self.k[0] is not None else 0
        return self.nbytes // cap if cap else 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v if t is not None)


@dataclass
class _StepPlan:
    """How one forward_stream step uses the cache (same for every layer of a store)."""

    kind: str  # "prefix": write new frames at write_slot.., attend slots [0, prefix); "concat": see below
    write_slot: int = 0  # prefix: first slot of the new frames (they are contiguous)
    prefix: int = 0  # prefix: number of slots attended
    frame_mask: Optional[Tensor] = None  # [s, keys in frames] bool, None = maskless
    old_slots: int = 0  # concat: existing slots [0, old_slots) + the new frames are attended
    commits: List[Tuple[int, int]] = field(default_factory=list)  # concat: (slot, new frame index) to store
    capacity: int = 0  # slots the storage must hold for this step
    _token_masks: Dict[int, Optional[Tensor]] = field(default_factory=dict)

    def token_mask(self, tokens_per_frame: int) -> Optional[Tensor]:
        """The frame mask expanded to tokens (built once per step and tokens-per-frame)."""
        if self.frame_mask is None:
            return None
        if tokens_per_frame not in self._token_masks:
            self._token_masks[tokens_per_frame] = token_mask(self.frame_mask, tokens_per_frame)
        return self._token_masks[tokens_per_frame]


class StreamSession:
    """KV-cached streaming inference (see module docstring).

    Args:
        model: a :class:`~stream3r.model.STream3R` (eval mode is set by the caller; the session
            runs under ``torch.inference_mode``).
        mode: "causal" or "window".
        window_size: frames attended besides the anchor in window mode, the current one
            included (>= 1); the released model was trained with 5.
        max_frames: causal mode: cache capacity to allocate up front (frames); the cache still
            grows past it.  Ignored in window mode (the cache is ``1 + window_size`` frames).
        grow_frames: causal mode: growth step when the capacity is reached.
        heads: default heads to run (subset of "camera", "depth", "point").
        check_values: check the [0, 1] range of inputs: True, False, or None = only for CPU
            tensors (a GPU check would be a host sync per frame).
        cache_frames: the most frames the KV cache may hold, the step's own included (>= 2), or
            None (no bound); see "Cache budget" in the module docstring.
        cuda_graphs: on CUDA, replay one-frame steps as CUDA graphs (see :class:`PiecewiseGraph`;
            None = yes on CUDA, falling back to eager steps with a warning if capture fails):
            the static parts of the step are captured once per frame size (and once for the first
            frame of a stream) and the cached attention runs eagerly between them.  Removes most of
            the per-frame CPU launch cost.  Graphs survive clear(); free them with release_graphs().
    """

    def __init__(self, model: STream3R, mode: str = "causal", window_size: int = 5, max_frames: Optional[int] = None,
                 grow_frames: int = 8, heads: Optional[Sequence[str]] = None,
                 check_values: Optional[bool] = None, cuda_graphs: Optional[bool] = None,
                 cache_frames: Optional[int] = None) -> None:
        check_mode(mode, window_size, streaming=True)
        if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1):
            raise ValueError(f"max_frames must be None or an int >= 1, got {max_frames!r}")
        if grow_frames < 1:
            raise ValueError(f"grow_frames must be >= 1, got {grow_frames}")
        self.model = model
        self.mode = mode
        self.window_size = window_size
        self.max_frames = max_frames
        self.grow_frames = grow_frames
        self.heads = _check_heads(heads)
        self.check_values = check_values
        self.cuda_graphs = cuda_graphs
        self.cache_frames: Optional[int] = None
        self.evictions = 0  # frames evicted for the budget so far
        self._retain: List[int] = []  # frame ids the caller wants kept, highest priority first
        self.set_cache_frames(cache_frames)
        self._graphs: Dict[tuple, object] = {}  # by (shape, heads, dtype, first frame or not / full step)
        self._pool = None  # CUDA graph memory pool shared by this session's graphs
        self._full_ok = True  # False after a failed full-step capture
        cam = model.camera_head
        self._agg = KVStore(model.aggregator.depth)
        self._cam = KVStore(cam.iterations * cam.trunk_depth)
        self.clear()

    # ------------------------------------------------------------------ state
    def clear(self) -> None:
        """Forget every frame and free the cache."""
        # full-step graphs hold the cache's addresses: they die with it
        self._graphs = {k: g for k, g in getattr(self, "_graphs", {}).items() if k[-1] != "full"}
        self._agg.clear()
        self._cam.clear()
        self._slot_ids: List[int] = []  # frame id held by each slot (-1 = empty)
        self._retain = []
        self._num_frames = 0  # frames in the stream (the next frame's id)
        self._frame_hw: Optional[Tuple[int, int]] = None
        self._batch: Optional[int] = None

    def release_graphs(self) -> None:
        """Free the captured CUDA graphs (and their memory pool)."""
        self._graphs.clear()
        self._pool = None

    def set_cache_frames(self, n: Optional[int]) -> None:
        """Set the cache budget (frames, >= 2; None = no bound).  While frames are cached, a
        smaller budget takes effect at the next step (causal) or is refused (window)."""
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 2):
            raise ValueError(f"cache_frames must be None or an int >= 2 (the anchor and the current frame), got {n!r}")
        if self.mode == "window" and n is not None and n < 1 + self.window_size:
            if getattr(self, "_slot_ids", None):
                raise ValueError(f"cannot shrink the window ring to {n} frames while it holds frames; clear() first")
            log.warning("cache budget of %d frames < 1 + window_size (%d): the window shrinks to %d frames",
                        n, 1 + self.window_size, n - 1)
            self.window_size = n - 1
        if n is not None and self.max_frames is not None:
            self.max_frames = min(self.max_frames, n)
        self.cache_frames = n

    def retain(self, frame_ids: Sequence[int]) -> None:
        """Frames to keep when the budget forces an eviction, highest priority first (stream
        positions as returned by :attr:`cached_frame_ids`); replaces the previous list."""
        self._retain = [int(i) for i in frame_ids]

    @property
    def cached_frame_ids(self) -> List[int]:
        """Stream positions of the cached frames, oldest first."""
        return sorted(i for i in self._slot_ids if i >= 0)

    def evict(self, frame_ids: Sequence[int]) -> None:
        """Remove these cached frames from a causal cache (newest slots move into the holes)."""
        if self.mode != "causal":
            raise ValueError("evict() needs a causal session (window mode evicts by its ring)")
        drop = set(int(i) for i in frame_ids) & set(self._slot_ids)
        if not drop:
            return
        ids = list(self._slot_ids)
        keep_n = len(ids) - len(drop)
        holes = [j for j in range(keep_n) if ids[j] in drop]
        movers = [j for j in range(keep_n, len(ids)) if ids[j] not in drop]
        with torch.inference_mode():  # the cache tensors are inference tensors
            for store in (self._agg, self._cam):
                for layer in range(store.num_layers):
                    if store.k[layer] is None:
                        continue
                    for dst, src in zip(holes, movers):
                        store.move(layer, src, dst)
        for dst, src in zip(holes, movers):
            ids[dst] = ids[src]
        self._slot_ids = ids[:keep_n]
        self._retain = [i for i in self._retain if i not in drop]
        self.evictions += len(drop)

    def _make_room(self, s: int) -> None:
        """Causal mode with a budget: evict so that ``s`` new frames fit (see :func:`choose_evictions`)."""
        if self.cache_frames is None or self.mode != "causal":
            return
        if s > self.cache_frames - 1:
            raise ValueError(f"a step of {s} frames does not fit a cache budget of {self.cache_frames} frames "
                             "(the anchor stays): feed fewer frames at a time")
        need = len(self._slot_ids) + s - self.cache_frames
        if need > 0:
            self.evict(choose_evictions(self.cached_frame_ids, need, self._retain))

    @property
    def num_frames(self) -> int:
        """Frames in the stream so far (fed minus dropped); the next frame's position."""
        return self._num_frames

    @property
    def num_cached_frames(self) -> int:
        """Frames whose keys/values are held in the cache."""
        return sum(1 for i in self._slot_ids if i >= 0)

    @property
    def cache_bytes(self) -> int:
        """Bytes of KV storage allocated (aggregator + camera head)."""
        return self._agg.nbytes + self._cam.nbytes

    @property
    def cache_capacity_frames(self) -> int:
        return self._agg.capacity(0) if self._agg.k[0] is not None else 0

    def drop_last(self, n: int = 1) -> None:
        """Remove the newest ``n`` frames, as if they had never been fed.

        Raises ValueError when ``n`` exceeds the frames in the stream, or in window mode when the
        state without them cannot be restored (frames that already left the ring are needed).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"drop_last needs an int n >= 0, got {n!r}")
        if n == 0:
            return
        if n > self._num_frames:
            raise ValueError(f"cannot drop {n} frames: the stream holds {self._num_frames}")
        last = self._num_frames - n - 1  # newest frame that remains
        if last < 0:
            self.clear()
            return
        if self.mode == "causal":  # new frames sit at the end of the slots
            self._slot_ids = [i for i in self._slot_ids if i <= last]
            self._retain = [i for i in self._retain if i <= last]
        else:
            needed = {0} | set(range(max(1, last - self.window_size + 2), last + 1))
            present = set(i for i in self._slot_ids if 0 <= i <= last)
            if not needed <= present:
                lost = sorted(needed - present)
                raise ValueError(
                    f"window mode cannot drop {n} frames exactly: frames {lost} already left the "
                    f"{self.window_size}-frame window cache (drop the newest frame right after feeding it)")
            self._slot_ids = [i if i <= last else -1 for i in self._slot_ids]
        self._num_frames = last + 1

    forget_last = drop_last

    # ------------------------------------------------------------------ planning (host only)
    def _plan(self, s: int, device: torch.device) -> Tuple[_StepPlan, List[int]]:
        """Plan a step of ``s`` new frames; returns the plan and the new slot ids."""
        n0 = self._num_frames
        new_ids = list(range(n0, n0 + s))
        ids = list(self._slot_ids)
        if self.mode == "causal":
            c = len(ids)  # occupied slots (a contiguous prefix; == n0 unless frames were evicted)
            ids = ids + new_ids
            mask = None
            if s > 1:
                if c == n0:  # slot i holds frame i
                    mask = frame_visibility(torch.arange(n0, n0 + s, device=device),
                                            torch.arange(n0 + s, device=device), "causal")
                else:
                    mask = frame_visibility(torch.tensor(new_ids, device=device), torch.tensor(ids, device=device),
                                            "causal")
            cap = c + s
            return _StepPlan("prefix", write_slot=c, prefix=c + s, frame_mask=mask, capacity=cap), ids
        ws = self.window_size
        if not ids:
            ids = [-1] * (1 + ws)
        commits: Dict[int, int] = {}
        for j, fid in enumerate(new_ids):
            if fid == 0:
                slot = 0
            else:
                empty = [k for k in range(1, 1 + ws) if ids[k] < 0]
                slot = empty[0] if empty else min(range(1, 1 + ws), key=lambda k: ids[k])
            ids[slot] = fid
            commits[slot] = j
        if s == 1:
            slot = next(iter(commits))
            valid = [i >= 0 for i in ids]
            prefix = max(k for k, ok in enumerate(valid) if ok) + 1
            mask = None
            if not all(valid[:prefix]):  # a hole (never expected): mask empty slots out
                mask = torch.tensor([valid[:prefix]], device=device)
            return _StepPlan("prefix", write_slot=slot, prefix=prefix, frame_mask=mask, capacity=1 + ws), ids
        old = list(self._slot_ids) if self._slot_ids else []
        key_ids = torch.tensor(old + new_ids, device=device)
        mask = frame_visibility(torch.tensor(new_ids, device=device), key_ids, "window", ws)
        plan = _StepPlan("concat", frame_mask=mask, old_slots=len(old), commits=sorted(commits.items()),
                         capacity=1 + ws)
        return plan, ids

    def _attend_fn(self, store: KVStore, layer: int, plan: _StepPlan, tokens_per_frame: int, s: int):
        P = tokens_per_frame

        def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            cur = store.capacity(layer) if store.tokens_per_frame == P else 0
            if cur < plan.capacity:
                if self.mode == "causal":  # first allocation: max_frames (or grow_frames); then grow in steps
                    step = (self.max_frames or self.grow_frames) if cur == 0 else cur + self.grow_frames
                    if self.cache_frames is not None:
                        step = min(step, self.cache_frames)
                    store.reserve(layer, k, P, max(plan.capacity, step))
                else:
                    store.reserve(layer, k, P, plan.capacity)
            mask = plan.token_mask(P)
            if plan.kind == "prefix":
                store.write(layer, plan.write_slot, k, v)
                n = plan.prefix * P
                # a full window ring / a full budgeted cache has the same key length at every step
                # (cuDNN may plan once)
                stable = plan.prefix == self._ring_frames()
                return attention(q, store.k[layer][:, :n], store.v[layer][:, :n], mask, stable=stable)
            n = plan.old_slots * P
            keys = torch.cat([store.k[layer][:, :n], k], dim=1)
            vals = torch.cat([store.v[layer][:, :n], v], dim=1)
            out = attention(q, keys, vals, mask)
            for slot, j in plan.commits:
                store.write(layer, slot, k[:, j * P:(j + 1) * P], v[:, j * P:(j + 1) * P])
            return out

        return attend

    # ------------------------------------------------------------------ step
    def _as_frames(self, frames: Tensor) -> Tensor:
        if not isinstance(frames, torch.Tensor):
            raise ValueError(f"frames must be a torch.Tensor, got {type(frames).__name__}")
        if frames.dim() == 3:
            frames = frames[None, None]
        elif frames.dim() == 4:
            frames = frames[None]
        elif frames.dim() != 5:
            raise ValueError(f"frames must have shape [3, H, W], [s, 3, H, W] or [B, s, 3, H, W], got "
                             f"{tuple(frames.shape)} (rank {frames.dim()})")
        check = self.check_values if self.check_values is not None else frames.device.type == "cpu"
        return check_images(frames, self.model.patch_size, check, what="frames")

    def forward_stream(self, frames: Tensor, heads: Optional[Sequence[str]] = None) -> Dict[str, Tensor]:
        """Feed the next frame(s); returns the predictions of these frames only.

        Args:
            frames: ``[3, H, W]`` or ``[1, 3, H, W]`` (one frame), ``[s, 3, H, W]`` (s frames), or
                ``[B, s, 3, H, W]``; floats in [0, 1]; every frame of a stream has the same size.
            heads: heads to run for this call (default: the session's).
        Returns:
            dict (``pose_enc [B, s, 9]``, ``depth [B, s, H, W, 1]``, ``depth_conf``,
            ``world_points``, ``world_points_conf``), on the model's device.
        """
        heads = self.heads if heads is None else _check_heads(heads)
        x = self._as_frames(frames)
        B, s, _, H, W = x.shape
        if self._frame_hw is not None and (H, W) != self._frame_hw:
            raise ValueError(f"frame size {H}x{W} differs from this stream's {self._frame_hw[0]}x{self._frame_hw[1]}; "
                             "call clear() to start a new stream")
        if self._batch is not None and B != self._batch:
            raise ValueError(f"batch size {B} differs from this stream's {self._batch}; call clear() first")
        device = self.model.aggregator.camera_token.device
        x = x.to(device, non_blocking=True)
        self._make_room(s)
        plan, new_ids = self._plan(s, device)
        P = self.model.aggregator.tokens_per_frame(H, W)
        cam = self.model.camera_head
        agg_attend = lambda i: self._attend_fn(self._agg, i, plan, P, s)  # noqa: E731
        cam_attend = lambda it, i: self._attend_fn(self._cam, it * cam.trunk_depth + i, plan, 1, s)  # noqa: E731
        use_graph = self.cuda_graphs is not False and x.is_cuda and s == 1
        starts = self._num_frames == 0
        if x.is_cuda and s == 1:  # Triton compiles / first cuDNN plans now, not mid-stream (once per process)
            agg = self.model.aggregator
            warmup_cached_attention(P, agg.num_heads, agg.head_dim, self.model.compute_dtype, x.device)
        ring = self._ring_frames()
        full = (use_graph and self._full_ok and ring is not None and not starts and plan.kind == "prefix"
                and plan.frame_mask is None and plan.prefix == ring
                and self._agg.tokens_per_frame == P and self._agg.capacity(0) == ring
                and self._cam.capacity(0) == ring)
        try:
            with torch.inference_mode():
                if full:
                    out = self._full_step(x, heads, plan.write_slot, P)
                    if out is None:
                        full = False
                if full:
                    pass
                elif use_graph:
                    key = (B, H, W, tuple(heads), x.device, self.model.precision, starts)
                    graph = self._graphs.get(key)
                    if graph is None:
                        if len(self._graphs) >= 4:  # e.g. several frame sizes: keep the pools bounded
                            self._graphs.clear()
                        try:
                            graph = PiecewiseGraph.capture(self.model, x, heads, agg_attend, cam_attend, key, starts,
                                                           pool=self._graph_pool())
                        except GraphCaptureError as e:
                            if self.cuda_graphs:  # asked for explicitly
                                raise
                            log.warning("CUDA graph capture failed (%s); streaming without CUDA graphs", e)
                            self.cuda_graphs = False
                        else:
                            self._graphs[key] = graph
                    if graph is not None:
                        out = graph.run(x, agg_attend, cam_attend)
                    else:  # capture failed: this frame's slot holds the warm-up's (valid) keys; redo eagerly
                        out = self.model.predict(x, starts_stream=starts, aggregator_attend=agg_attend,
                                                 camera_attend=cam_attend, heads=heads)
                else:
                    out = self.model.predict(x, starts_stream=starts, aggregator_attend=agg_attend,
                                             camera_attend=cam_attend, heads=heads)
        except BaseException:
            if plan.kind == "concat":  # some layers may already hold the new frames: the ring is not exact
                self.clear()
            raise
        self._slot_ids = new_ids
        self._num_frames += s
        self._frame_hw = (H, W)
        self._batch = B
        return out

    __call__ = forward_stream

    # ------------------------------------------------------------------ full-step graphs
    def _ring_frames(self) -> Optional[int]:
        """Frames of a full fixed-size cache (window ring, or a causal cache at its budget), else None."""
        if self.mode == "window":
            return 1 + self.window_size
        return self.cache_frames

    def _graph_pool(self):
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return self._pool

    def _full_step(self, x: Tensor, heads, slot: int, P: int) -> Optional[Dict[str, Tensor]]:
        """One window step with a full ring as a single CUDA graph; None if it cannot be captured."""
        agg, cam = self._agg, self._cam
        key = (x.shape, tuple(heads), x.device, self.model.precision,
               agg.k[0].data_ptr(), cam.k[0].data_ptr(), "full")
        graph = self._graphs.get(key)
        if graph is None:
            for k in [k for k in self._graphs if k[-1] == "full"]:
                del self._graphs[k]
            try:
                graph = FullStepGraph.capture(self, x, heads, slot, P, key)
            except GraphCaptureError as e:
                log.warning("full-step CUDA graph capture failed (%s); window steps stay piecewise", e)
                self._full_ok = False
                return None
            self._graphs[key] = graph
            return graph.first_outputs
        return graph.run(x, slot)


class GraphCaptureError(RuntimeError):
    """Capturing a streaming step as CUDA graphs failed."""


class FullStepGraph:
    """A whole window-mode step (ring full) as one CUDA graph.

    The cache writes go through ``index_copy_`` with device-side slot indices (set before each
    replay), attention runs over the whole ring (same shape every step: cuDNN's plan is built by
    the eager warm-up step before capture), and nothing runs eagerly: no launch gaps and no
    staging copies between pieces.  Captured against the session's cache tensors: dropped when
    the cache is freed (``clear``).
    """

    def __init__(self, key, static_in, graph, outputs, idx_agg, idx_cam, first_outputs) -> None:
        self.key = key
        self.static_in = static_in
        self.graph = graph
        self.outputs = outputs
        self.idx_agg = idx_agg
        self.idx_cam = idx_cam
        self.first_outputs = first_outputs

    @staticmethod
    def _attend(store: KVStore, layer: int, idx: Tensor):
        def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            K, V = store.k[layer], store.v[layer]
            K.index_copy_(1, idx, k)
            V.index_copy_(1, idx, v)
            return attention(q, K, V, None, stable=True)

        return attend

    def set_slot(self, slot: int) -> None:
        P = self.idx_agg.shape[0]
        self.idx_agg.copy_(torch.arange(slot * P, (slot + 1) * P, device=self.idx_agg.device), non_blocking=True)
        self.idx_cam.fill_(slot)

    @classmethod
    def capture(cls, session: "StreamSession", x: Tensor, heads, slot: int, P: int, key) -> "FullStepGraph":
        model = session.model
        cam = model.camera_head
        dev = x.device
        idx_agg = torch.empty(P, dtype=torch.long, device=dev)
        idx_cam = torch.empty(1, dtype=torch.long, device=dev)
        agg_attend = lambda i: cls._attend(session._agg, i, idx_agg)  # noqa: E731
        cam_attend = lambda it, i: cls._attend(session._cam, it * cam.trunk_depth + i, idx_cam)  # noqa: E731
        static_in = x.clone()
        stream = torch.cuda.Stream(device=dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        self = cls(key, static_in, None, None, idx_agg, idx_cam, None)
        try:
            with torch.cuda.stream(stream):
                self.set_slot(slot)
                # eager warm-up: this frame's real step (writes its keys / values, builds plans)
                first = model.predict(static_in, starts_stream=False, aggregator_attend=agg_attend,
                                      camera_attend=cam_attend, heads=heads)
                graph = torch.cuda.CUDAGraph()
                graph.capture_begin(pool=session._graph_pool(), capture_error_mode=CAPTURE_MODE)
                try:
                    outputs = model.predict(static_in, starts_stream=False, aggregator_attend=agg_attend,
                                            camera_attend=cam_attend, heads=heads)
                finally:
                    graph.capture_end()
        except Exception as e:
            raise GraphCaptureError(f"{type(e).__name__}: {e}") from e
        torch.cuda.current_stream(dev).wait_stream(stream)
        self.graph, self.outputs, self.first_outputs = graph, outputs, first
        return self

    def run(self, x: Tensor, slot: int) -> Dict[str, Tensor]:
        self.static_in.copy_(x)
        self.set_slot(slot)
        self.graph.replay()
        return {k: v.clone() for k, v in self.outputs.items()}


class PiecewiseGraph:
    """One streaming step (one frame) as CUDA graphs.

    The step is cut at every cached-attention call (24 aggregator layers, 16 camera-head
    layers): the pieces in between have static shapes and addresses and are captured as CUDA
    graphs sharing one memory pool; the attention calls (cache write + attention over a key
    length that grows every frame) run eagerly between the replays, reading q, k, v from the
    captured buffers and writing their output into the buffer the next piece reads.

    Capture (``capture``): an eager warm-up step on a side stream, then a dry run of the model
    under capture (its attention calls run on not-yet-computed data; their cache writes go to the
    slot that the real step rewrites).  ``run`` copies the frame into the static input, replays
    graph 0, attention 0, graph 1, ... and returns copies of the static outputs.
    """

    def __init__(self, key, static_in, graphs, calls, outputs) -> None:
        self.key = key
        self.static_in = static_in
        self.graphs = graphs
        self.calls = calls  # (kind, index, q, k, v, out): static buffers around each eager attention
        self.outputs = outputs

    @classmethod
    def capture(cls, model, x: Tensor, heads, agg_attend, cam_attend, key, starts_stream: bool = False,
                pool=None) -> "PiecewiseGraph":
        stream = torch.cuda.Stream(device=x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        if pool is None:
            pool = torch.cuda.graph_pool_handle()
        static_in = x.clone()
        graphs: List = []
        calls: List = []
        current: List = []

        def begin() -> None:
            g = torch.cuda.CUDAGraph()
            g.capture_begin(pool=pool, capture_error_mode=CAPTURE_MODE)
            current[:] = [g]

        def end() -> None:
            current[0].capture_end()
            graphs.append(current[0])

        staging: Dict[str, Tuple[Tensor, Tensor, Tensor]] = {}

        def wrap(kind, index, real):
            def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
                # q, k, v go through one static buffer per kind (shared by all layers), so that the
                # pieces' own tensors can be reused by the pool instead of staying pinned
                bufs = staging.get(kind)
                if bufs is None:
                    bufs = staging[kind] = (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v))
                sq, sk, sv = bufs
                sq.copy_(q)
                sk.copy_(k)
                sv.copy_(v)
                end()
                out = real(sq, sk, sv)
                calls.append((kind, index, sq, sk, sv, out))
                begin()
                return out

            return attend

        with torch.cuda.stream(stream):
            # warm-up on this stream (library handles, workspaces); also a valid step for this frame
            model.predict(static_in, starts_stream=starts_stream, aggregator_attend=agg_attend,
                          camera_attend=cam_attend, heads=heads)
            try:
                begin()
                try:
                    outputs = model.predict(
                        static_in, starts_stream=starts_stream,
                        aggregator_attend=lambda i: wrap("agg", i, agg_attend(i)),
                        camera_attend=lambda it, i: wrap("cam", (it, i), cam_attend(it, i)),
                        heads=heads)
                finally:
                    end()
            except Exception as e:
                raise GraphCaptureError(f"{type(e).__name__}: {e}") from e
        torch.cuda.current_stream(x.device).wait_stream(stream)
        return cls(key, static_in, graphs, calls, outputs)

    def run(self, x: Tensor, agg_attend, cam_attend) -> Dict[str, Tensor]:
        self.static_in.copy_(x)
        for g, call in zip(self.graphs, self.calls + [None]):
            g.replay()
            if call is not None:
                kind, index, q, k, v, out = call
                fn = agg_attend(index) if kind == "agg" else cam_attend(*index)
                out.copy_(fn(q, k, v))
        return {k: v.clone() for k, v in self.outputs.items()}
