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
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rope import apply_rope_pair

try:  # optional extra: pip install slam3r[flash]
    from flash_attn import flash_attn_func as _flash_attn_func  # type: ignore
except Exception:  # pragma: no cover - not installed on CPU machines
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
_split_kv = {"enabled": True, "splits": 0, "kernel": "auto", "min_ratio": 4}


def configure_split_kv(enabled: Optional[bool] = None, splits: Optional[int] = None, kernel: Optional[str] = None,
                       min_ratio: Optional[int] = None) -> dict:
    """Tune the split-KV path of :func:`attention` (CUDA only); returns the settings.

    ``splits``: chunks per call (0 = automatic), ``kernel``: "auto" | "flash" | "cudnn" |
    "efficient" | "math", ``min_ratio``: use it when keys >= min_ratio * queries.
    """
    for k, v in (("enabled", enabled), ("splits", splits), ("kernel", kernel), ("min_ratio", min_ratio)):
        if v is not None:
            _split_kv[k] = v
    return dict(_split_kv)


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
    out = aten._scaled_dot_product_efficient_attention(q, k, v, None, True)
    return out[0], out[1][..., :nq]


def _auto_splits(nq: int, nk: int, heads: int, device: torch.device) -> int:
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    blocks = heads * ((nq + 127) // 128)  # query blocks of one launch
    # enough chunks for ~4 waves of query blocks, each chunk still >= 4 * nq keys
    want = max(1, (4 * 2 * sms) // max(blocks, 1))
    return int(max(1, min(want, nk // max(4 * nq, 1))))


def split_kv_attention(q: Tensor, k: Tensor, v: Tensor, splits: int = 0, kernel: str = "auto") -> Tensor:
    """Maskless attention with the keys split into ``splits`` chunks run as one batched launch.

    q ``[1, Nq, h, d]``, k/v ``[1, Nk, h, d]`` (NHD; batch 1).  Same result as :func:`attention`
    up to rounding; the chunks are merged in float32 with their log-sum-exp.
    """
    B, nq, h, d = q.shape
    nk = k.shape[1]
    if B != 1:
        raise ValueError("split_kv_attention needs batch 1")
    if kernel == "auto":
        kernel = "flash" if q.dtype in (torch.float16, torch.bfloat16) else "efficient"
    if splits <= 0:
        splits = _auto_splits(nq, nk, h, q.device)
    L = nk // splits
    main = splits * L
    qb = q.transpose(1, 2)
    kk = k[:, :main].reshape(splits, L, h, d).transpose(1, 2)
    vv = v[:, :main].reshape(splits, L, h, d).transpose(1, 2)
    o, lse = _partial_attention(qb.expand(splits, h, nq, d), kk, vv, kernel)
    if main < nk:
        o2, lse2 = _partial_attention(qb, k[:, main:].transpose(1, 2), v[:, main:].transpose(1, 2), kernel)
        o, lse = torch.cat([o, o2]), torch.cat([lse, lse2])
    w = torch.softmax(lse.float(), dim=0)  # [chunks, h, Nq]: each chunk's share of the softmax mass
    out = (o.float() * w[..., None]).sum(0, keepdim=True)
    return out.to(q.dtype).transpose(1, 2)


def _split_ok(q: Tensor, k: Tensor, mask: Optional[Tensor]) -> bool:
    cfg = _split_kv
    return (
        cfg["enabled"]
        and mask is None
        and q.is_cuda
        and q.shape[0] == 1
        and k.shape[1] >= cfg["min_ratio"] * q.shape[1]
        and (cfg["splits"] != 1)
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


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Scaled dot-product attention on NHD tensors with the selected backend.

    Args:
        q: ``[B, Nq, h, d]``; k, v: ``[B, Nk, h, d]`` (same dtype).
        mask: optional bool ``[Nq, Nk]`` (True = attend).  Every query row must allow at
            least one key.
    Returns:
        ``[B, Nq, h, d]``.
    """
    backend = _backend
    if backend == "reference":
        return reference_attention(q, k, v, mask)
    if backend == "auto" and _split_ok(q, k, mask):
        return split_kv_attention(q, k, v, _split_kv["splits"], _split_kv["kernel"])
    if backend in ("auto", "flash") and _flash_ok(q, k, mask):
        if k.stride(-1) != 1 or v.stride(-1) != 1:
            k, v = k.contiguous(), v.contiguous()
        return _flash_attn_func(q, k, v)
    return sdpa_attention(q, k, v, mask)


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
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def project(self, x: Tensor, rope=None) -> Tuple[Tensor, Tensor, Tensor]:
        """x ``[B, N, dim]`` -> q, k, v ``[B, N, h, d]`` (QK norm and RoPE applied to q, k)."""
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).unbind(2)
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
