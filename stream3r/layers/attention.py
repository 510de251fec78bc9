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
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    :class:`~stream3r.layers.rope.RopeTable` or None) rotates q and k after the QK norm.
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

    def forward(self, x: Tensor, rope=None, attend: Optional[AttendFn] = None) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).unbind(2)
        q = self.q_norm(q)
        k = self.k_norm(k)
        if rope is not None:
            q = rope.apply(q)
            k = rope.apply(k)
        out = attend(q, k, v) if attend is not None else attention(q, k, v)
        return self.proj(out.reshape(B, N, C))
