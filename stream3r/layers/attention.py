"""Multi-head attention and the attention kernels behind it.

Layout convention: every q/k/v tensor in this package is ``[batch, tokens, heads, head_dim]``
("NHD", the layout of flash-attn and of our KV cache).  Masks are boolean, ``True`` where a
query may attend a key, shaped ``[q_tokens, k_tokens]`` (broadcast over batch and heads).

Backends (``set_attention_backend``):

* ``"auto"`` (default): flash-attn for maskless fp16/bf16 CUDA calls when the optional
  ``flash_attn`` package is installed, otherwise ``torch.nn.functional.scaled_dot_product_attention``.
* ``"sdpa"``: always torch SDPA.
* ``"flash"``: flash-attn where it applies (maskless, CUDA, half precision), SDPA elsewhere.
* ``"reference"``: plain softmax(q k^T / sqrt(d)) v in float32 (tests, debugging).

CUDA fast paths of ``"auto"`` (see :func:`configure_split_kv` and :func:`configure_fast_paths`):

* cached attention with many more keys than queries (a streaming step): split-KV over
  cuDNN's flash kernel (bf16/fp16) or the Triton kernel (float32), partials merged by one
  Triton kernel;
* float32 with TF32 matmuls allowed (``torch.backends.cuda.matmul.allow_tf32``, as upstream
  runs "fp32"): every maskless attention with head_dim <= 64 goes through the Triton kernel in
  TF32 (SDPA's float32 kernel runs without tensor cores); with TF32 off, SDPA as before;
* QK LayerNorm + RoPE fused into one Triton kernel (``Attention.project``).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import triton_attention as _tri
from . import triton_norm_rope as _tnr
from .half_cpu import Linear
from .rope import apply_rope_pair

try:  # optional extra: pip install slam3r[flash]
    from flash_attn import flash_attn_func as _flash_attn_func  # type: ignore
except Exception:  # noqa: BLE001 # pragma: no cover - absent (ImportError) or a broken CUDA build (OSError, RuntimeError)
    _flash_attn_func = None

_BACKENDS = ("auto", "sdpa", "flash", "reference")
_backend = "auto"

# attend(q, k, v) -> out, all NHD; see Attention.forward
AttendFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def flash_attn_available() -> bool:
    """True when the optional ``flash_attn`` package imported."""
    return _flash_attn_func is not None


def set_attention_backend(name: str) -> None:
    """Select the attention kernel family (see module docstring)."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {_BACKENDS}")
    _backend = name


def get_attention_backend() -> str:
    return _backend


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Context manager form of :func:`set_attention_backend`."""
    old = _backend
    set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(old)


def reference_attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Plain attention in float32: softmax(q k^T / sqrt(d) with masked keys at -inf) v.

    Args:
        q: ``[B, Nq, h, d]``; k, v: ``[B, Nk, h, d]``.
        mask: optional bool ``[Nq, Nk]``, True = may attend.
    Returns:
        ``[B, Nq, h, d]`` in q's dtype.
    """
    scale = q.shape[-1] ** -0.5
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v.float()).to(q.dtype)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """torch SDPA on NHD tensors (the transposes are views, no copies)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


# ---------------------------------------------------------------------------------- split-KV
# A streaming step has few queries (one frame, ~1k tokens) against many cached keys (~n * 1k).
# One kernel launch then has too few query blocks to fill the GPU; splitting the keys into
# chunks that run as a batch of one launch, and merging the partial results with their
# log-sum-exp, keeps every multiprocessor busy ("flash-decoding").
# min_ratio: split when keys >= min_ratio * queries (below, one cuDNN call is as fast: H100
# measurements in benchmarks/NOTES.md); min_queries: never for a handful of queries (camera head).
_split_kv = {"enabled": True, "splits": 0, "kernel": "auto", "min_ratio": 16, "min_queries": 64}
_fast = {"norm_rope": True, "tf32_attention": True}
_cudnn_broken = {}


def configure_split_kv(enabled: Optional[bool] = None, splits: Optional[int] = None, kernel: Optional[str] = None,
                       min_ratio: Optional[int] = None, min_queries: Optional[int] = None) -> dict:
    """Tune the split-KV path of :func:`attention` (CUDA only); returns the settings (before the change).

    ``splits``: chunks per call (0 = automatic), ``kernel``: "auto" | "cudnn" | "flash" |
    "efficient" | "triton" | "math", ``min_ratio``: use it when keys >= min_ratio * queries,
    ``min_queries``: and queries >= min_queries.
    """
    old = dict(_split_kv)
    for k, v in (("enabled", enabled), ("splits", splits), ("kernel", kernel), ("min_ratio", min_ratio),
                 ("min_queries", min_queries)):
        if v is not None:
            _split_kv[k] = v
    return old


def configure_fast_paths(norm_rope: Optional[bool] = None, tf32_attention: Optional[bool] = None) -> dict:
    """Switch the CUDA fast paths: fused QK-norm + RoPE kernel, TF32 Triton attention for float32
    (used only while ``torch.backends.cuda.matmul.allow_tf32`` is on).  Returns the old settings."""
    old = dict(_fast)
    if norm_rope is not None:
        _fast["norm_rope"] = bool(norm_rope)
    if tf32_attention is not None:
        _fast["tf32_attention"] = bool(tf32_attention)
    return old


def _partial_attention(q: Tensor, k: Tensor, v: Tensor, kernel: str) -> Tuple[Tensor, Tensor]:
    """Attention on BHND tensors returning (out [B, h, Nq, d], logsumexp [B, h, Nq] float32)."""
    aten = torch.ops.aten
    nq = q.shape[2]
    if kernel == "math":  # plain float32 maths (any device; tests)
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
        lse = torch.logsumexp(scores, dim=-1)
        return torch.matmul(torch.exp(scores - lse[..., None]), v.float()).to(q.dtype), lse
    if kernel == "flash":
        out = aten._scaled_dot_product_flash_attention(q, k, v)
        return out[0], out[1]
    if kernel == "cudnn":
        out = aten._scaled_dot_product_cudnn_attention(q, k, v, None, True)
        return out[0], out[1].reshape(q.shape[0], q.shape[1], -1)[..., :nq]
    if kernel == "triton":  # NHD views in, [chunks, h, Nq, d] float32 out
        o, lse, _ = _tri.triton_attention_partial(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 1)
        return o, lse
    out = aten._scaled_dot_product_efficient_attention(q, k, v, None, True)
    return out[0], out[1][..., :nq]


def _auto_splits(nq: int, nk: int, heads: int, device: torch.device) -> int:
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    blocks = heads * ((nq + 127) // 128)  # query blocks of one launch
    # about one wave of query blocks per chunk set (H100: 8 chunks at 200 frames), each chunk >= 4 * nq keys
    want = max(1, (8 * sms) // max(blocks, 1))
    want = int(max(1, min(want, nk // max(4 * nq, 1))))
    # prefer a nearby count that divides the keys (one launch, no remainder chunk)
    for s in sorted(range(max(1, want - 2), want + 3), key=lambda s: (abs(s - want), -s)):
        if nk % s == 0 and nk // s >= 4 * nq:
            return s
    return want


# cuDNN builds an execution plan (~45 ms of CPU, sometimes a runtime compile of ~0.5 s) for every
# new shape; plans are cached by shape.  A growing causal cache changes its key length every frame,
# so the cuDNN path splits the keys into chunks of a fixed length (CUDNN_CHUNK_FRAMES * Nq keys)
# launched in groups of a power-of-two number of chunks (the set bits of the chunk count, largest
# first): the shapes cuDNN sees are (2^j chunks, fixed length), a handful over a whole stream.
# Whatever is left (fewer chunks than the smallest group, and the partial chunk) runs through FA2,
# which needs no plan.  (H100 measurements: benchmarks/NOTES.md.)
CUDNN_CHUNK_FRAMES = 8
CUDNN_MAX_GROUPS = 3


def _cudnn_groups(nq: int, nk: int) -> Tuple[list, int]:
    """([(first key, chunks)] for the cuDNN launches, first key of the FA2 tail) (see above)."""
    L = CUDNN_CHUNK_FRAMES * nq
    m = nk // L
    groups, start = [], 0
    for j in range(m.bit_length() - 1, -1, -1):
        if m >> j & 1 and len(groups) < CUDNN_MAX_GROUPS:
            groups.append((start, 1 << j))
            start += (1 << j) * L
    return groups, start


def _flash_split_part(qb: Tensor, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
    """FA2 over keys split into up to 8 equal chunks of whole frames (``Nq`` keys each) in one
    launch: (o [chunks, h, Nq, d], lse [chunks, h, Nq]).  qb: BHND view of q."""
    _, h, nq, d = qb.shape
    t = k.shape[1]
    chunks = 1
    if t % nq == 0 and t >= 4 * nq:
        units = t // nq
        chunks = max(c for c in range(1, 9) if units % c == 0 and units // c >= 2)
    L = t // chunks
    kk = k.reshape(chunks, L, h, d).transpose(1, 2)
    vv = v.reshape(chunks, L, h, d).transpose(1, 2)
    return _partial_attention(qb.expand(chunks, h, nq, d), kk, vv, "flash")


def _default_kernel(q: Tensor) -> str:
    if q.dtype in (torch.float16, torch.bfloat16):
        return "flash" if _cudnn_broken.get(q.device) else "cudnn"
    if _tf32_ok(q):
        return "triton"
    return "efficient"


def split_kv_attention(q: Tensor, k: Tensor, v: Tensor, splits: int = 0, kernel: str = "auto") -> Tensor:
    """Maskless attention with the keys split into ``splits`` chunks run as one batched launch.

    q ``[1, Nq, h, d]``, k/v ``[1, Nk, h, d]`` (NHD; batch 1).  Same result as :func:`attention`
    up to rounding; the chunks are merged in float32 with their log-sum-exp (one Triton kernel on
    CUDA).  ``kernel="auto"``: cuDNN for bf16/fp16 (flash if cuDNN fails), the Triton TF32 kernel
    for float32 when TF32 is allowed, else SDPA's memory-efficient kernel.  With cuDNN and
    ``splits=0`` the chunks have a fixed length, launched in power-of-two groups (see
    :func:`_cudnn_groups`), and the rest goes through FA2.
    """
    B, nq, h, d = q.shape
    nk = k.shape[1]
    if B != 1:
        raise ValueError("split_kv_attention needs batch 1")
    if kernel == "auto":
        kernel = _default_kernel(q)
    if kernel == "triton":
        return _tri.triton_attention(q, k, v, splits)
    qb = q.transpose(1, 2)
    try:
        if splits <= 0 and kernel == "cudnn":
            L = CUDNN_CHUNK_FRAMES * nq
            groups, tail = _cudnn_groups(nq, nk)
            parts = []
            for start, n in groups:
                kk = k[:, start:start + n * L].reshape(n, L, h, d).transpose(1, 2)
                vv = v[:, start:start + n * L].reshape(n, L, h, d).transpose(1, 2)
                parts.append(_partial_attention(qb.expand(n, h, nq, d), kk, vv, "cudnn"))
            if tail < nk:
                parts.append(_flash_split_part(qb, k[:, tail:], v[:, tail:]))
        else:
            if splits <= 0:
                splits = _auto_splits(nq, nk, h, q.device)
            L = nk // splits
            main = splits * L
            kk = k[:, :main].reshape(splits, L, h, d).transpose(1, 2)
            vv = v[:, :main].reshape(splits, L, h, d).transpose(1, 2)
            parts = [_partial_attention(qb.expand(splits, h, nq, d), kk, vv, kernel)]
            if main < nk:
                parts.append(_partial_attention(qb, k[:, main:].transpose(1, 2), v[:, main:].transpose(1, 2), kernel))
    except RuntimeError:
        if kernel != "cudnn" or not q.is_cuda:
            raise
        _cudnn_broken[q.device] = True  # e.g. no cuDNN attention for this GPU: flash from now on
        return split_kv_attention(q, k, v, 0, "flash")
    if q.is_cuda and _tri.triton_available():
        return _tri.merge_partials(parts, 1, q.dtype)
    o = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    lse = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    w = torch.softmax(lse.float(), dim=0)  # [chunks, h, Nq]: each chunk's share of the softmax mass
    out = (o.float() * w[..., None]).sum(0, keepdim=True)
    return out.to(q.dtype).transpose(1, 2)


# calls per shape of unsplit cached attention (callers that do not say whether the shape recurs):
# cuDNN only for a shape seen over many steps, FA2 otherwise (one step makes up to 24 calls of one
# shape, one per layer; a keyframe policy feeds ~5 steps of one shape)
_seen_shapes: dict = {}
CUDNN_AFTER_CALLS = 512


def _cached_half_attention(q: Tensor, k: Tensor, v: Tensor, stable: Optional[bool] = None) -> Tensor:
    """Maskless CUDA bf16/fp16 attention whose key length differs from the query length (a KV cache).

    ``stable``: the caller's word that this key length recurs every step (window mode's full
    ring): cuDNN; False: it changes (a growing cache): never unsplit cuDNN; None: cuDNN once the
    shape has been seen CUDNN_AFTER_CALLS times."""
    if not _split_kv["enabled"]:
        return sdpa_attention(q, k, v)
    if _split_ok(q, k, None):
        return split_kv_attention(q, k, v, _split_kv["splits"], _split_kv["kernel"])
    if stable and not _cudnn_broken.get(q.device):
        return sdpa_attention(q, k, v)  # torch's choice (cuDNN on an H100)
    if stable is None:
        key = (tuple(q.shape), tuple(k.shape), q.dtype, q.device)
        n = _seen_shapes.get(key, 0)
        if n >= CUDNN_AFTER_CALLS and not _cudnn_broken.get(q.device):
            return sdpa_attention(q, k, v)
        if len(_seen_shapes) > 4096:
            _seen_shapes.clear()
        _seen_shapes[key] = n + 1
    if q.shape[-1] > 256:
        return sdpa_attention(q, k, v)
    if q.shape[0] == 1 and q.shape[1] >= _split_kv["min_queries"] and _tri.triton_available():
        o, lse = _flash_split_part(q.transpose(1, 2), k, v)
        if o.shape[0] > 1:
            return _tri.merge_partials([(o, lse)], 1, q.dtype)
        return o.transpose(1, 2)
    out = torch.ops.aten._scaled_dot_product_flash_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out[0].transpose(1, 2)


def _split_ok(q: Tensor, k: Tensor, mask: Optional[Tensor]) -> bool:
    cfg = _split_kv
    return (
        cfg["enabled"]
        and mask is None
        and q.is_cuda
        and q.shape[0] == 1
        and q.shape[1] >= cfg["min_queries"]
        and k.shape[1] >= cfg["min_ratio"] * q.shape[1]
        and (cfg["splits"] != 1)
    )


def _tf32_ok(q: Tensor) -> bool:
    """float32 CUDA attention through the Triton TF32 kernel (TF32 matmuls allowed, head_dim <= 64)."""
    return (
        _fast["tf32_attention"]
        and q.dtype == torch.float32
        and q.is_cuda
        and q.shape[-1] in (16, 32, 64)
        and _tri.triton_available()
        and torch.backends.cuda.matmul.allow_tf32
        and not (torch.is_grad_enabled() and q.requires_grad)  # no backward through the kernel
    )


def _flash_ok(q: Tensor, k: Tensor, mask: Optional[Tensor]) -> bool:
    return (
        _flash_attn_func is not None
        and mask is None
        and q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and k.dtype == q.dtype
        and q.shape[-1] <= 256
    )


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None,
              stable: Optional[bool] = None) -> Tensor:
    """Scaled dot-product attention on NHD tensors with the selected backend.

    Args:
        q: ``[B, Nq, h, d]``; k, v: ``[B, Nk, h, d]`` (same dtype).
        mask: optional bool ``[Nq, Nk]`` (True = attend).  Every query row must allow at
            least one key.
        stable: for cached attention, whether this key length recurs at every step (lets CUDA
            pick cuDNN, whose per-shape plan costs ~45 ms to build; None = guess from history).
    Returns:
        ``[B, Nq, h, d]``.
    """
    backend = _backend
    if backend == "reference":
        return reference_attention(q, k, v, mask)
    if backend == "auto" and mask is None and _tf32_ok(q) and q.shape[1] >= 16 and _split_kv["kernel"] in ("auto", "triton"):
        return _tri.triton_attention(q, k, v, _split_kv["splits"] if _split_ok(q, k, mask) else 0)
    if (backend == "auto" and mask is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
            and k.shape[1] != q.shape[1] and _flash_attn_func is None and not (torch.is_grad_enabled() and q.requires_grad)):
        return _cached_half_attention(q, k, v, stable)
    if backend == "auto" and _split_ok(q, k, mask):
        return split_kv_attention(q, k, v, _split_kv["splits"], _split_kv["kernel"])
    if backend in ("auto", "flash") and _flash_ok(q, k, mask):
        if k.stride(-1) != 1 or v.stride(-1) != 1:
            k, v = k.contiguous(), v.contiguous()
        return _flash_attn_func(q, k, v)
    return sdpa_attention(q, k, v, mask)


_warmed: set = set()


def warmup_cached_attention(tokens: int, heads: int, head_dim: int, dtype: torch.dtype, device) -> None:
    """Compile the Triton kernels (and build the first cuDNN plans) that streaming with ``tokens``
    queries per step will use, now rather than in the middle of a stream (the first compile of the
    merge kernel takes seconds; Triton keeps it on disk for later processes).  Once per process and
    shape; a no-op off CUDA or without Triton."""
    device = torch.device(device)
    key = (tokens, heads, head_dim, dtype, device)
    if key in _warmed or device.type != "cuda" or not _tri.triton_available():
        return
    _warmed.add(key)
    n = (_split_kv["min_ratio"] + 1) * tokens
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, tokens, heads, head_dim, device=device, generator=g).to(dtype)
    k = torch.randn(1, n, heads, head_dim, device=device, generator=g).to(dtype)
    with torch.inference_mode():
        attention(q, k, k)
        attention(q, k[:, :4 * tokens], k[:, :4 * tokens])


def _compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - old torch
        return False


class Attention(nn.Module):
    """Multi-head self-attention with optional QK LayerNorm and 2D RoPE.

    Parameters (checkpoint names): ``qkv`` (Linear dim -> 3*dim, packed [q; k; v], heads
    contiguous inside each), ``q_norm`` / ``k_norm`` (LayerNorm over head_dim, only with
    ``qk_norm``), ``proj``.

    ``forward(x, rope, attend)``: x ``[B, N, dim]``.  ``rope`` (a
    :class:`~stream3r.layers.rope.RopeTable` ``(cos, sin)`` or None) rotates q and k after the QK norm.
    ``attend`` replaces plain self-attention: it receives the new q, k, v (NHD) and returns
    the attention output; KV caches and masks are implemented that way, so this module
    stays unaware of streaming.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.proj = Linear(dim, dim, bias=proj_bias)

    def project(self, x: Tensor, rope=None) -> Tuple[Tensor, Tensor, Tensor]:
        """x ``[B, N, dim]`` (in the qkv weight's dtype) -> q, k, v ``[B, N, h, d]`` in that dtype (QK
        norm and RoPE applied to q, k; with float32 norms they run in float32 and q, k are rounded once)."""
        B, N, _ = x.shape
        qkv = self.qkv(x)
        if _fast["norm_rope"] and _tnr.fused_ok(qkv, self.q_norm, self.k_norm, rope) and not _compiling():
            q, k = _tnr.qk_norm_rope(qkv, self.num_heads, self.q_norm, self.k_norm, rope[0], rope[1])
            return q, k, qkv.view(B, N, 3, self.num_heads, self.head_dim)[:, :, 2]
        q, k, v = qkv.view(B, N, 3, self.num_heads, self.head_dim).unbind(2)
        w = getattr(self.q_norm, "weight", None)
        if w is not None and w.dtype != q.dtype:
            # mixed precision (float32 norms, bf16 projection): norm and rotate in the wider dtype and
            # round once to v's dtype, as the fused kernel does
            wide = torch.promote_types(q.dtype, w.dtype)
            q, k = self.q_norm(q.to(wide)), self.k_norm(k.to(wide))
            if rope is not None:
                q, k = apply_rope_pair(q, k, rope[0], rope[1])
            return q.to(v.dtype), k.to(v.dtype), v
        q = self.q_norm(q)
        k = self.k_norm(k)
        if rope is not None:
            q, k = apply_rope_pair(q, k, rope[0], rope[1])
        return q, k, v

    def forward(self, x: Tensor, rope=None, attend: Optional[AttendFn] = None) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.project(x, rope)
        out = attend(q, k, v) if attend is not None else attention(q, k, v)
        return self.proj(out.reshape(B, N, C))
