"""Fused QK LayerNorm + 2D RoPE on CUDA (one Triton kernel instead of ~10 torch kernels).

The aggregator's attention projects ``qkv = Linear(x)`` then applies LayerNorm over head_dim to q
and to k, then rotates both with the frame's RoPE table (:mod:`stream3r.layers.rope`).  In torch
that is two LayerNorm launches, a concat, float32 casts, a flip, multiplies and adds; this kernel
reads q and k once from the packed ``qkv`` output and writes the rotated q and k ``[B, N, h, d]``.

Maths (float32 throughout, one rounding to the output dtype at the end):
``y = (x - mean) / sqrt(var + eps) * w + b``, ``out = y * cos + swap(y) * sin`` where ``swap``
exchanges the two quarters inside each half of head_dim and ``sin`` carries rotate_half's sign
(the layout of :class:`~stream3r.layers.rope.RopeTable`).  The torch path rounds ``y`` to the
input dtype before the rotation; this one does not (closer to upstream, whose LayerNorm runs in
float32 under autocast).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 # pragma: no cover - absent, or a CPU-only build failing at import (RuntimeError)
    triton = None
    tl = None


def triton_available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _qk_norm_rope(QKV, QW, QB, KW, KB, COS, SIN, QO, KO,
                      H, P, stride_tok, eps_q, eps_k,
                      D: tl.constexpr, HB: tl.constexpr):
        t = tl.program_id(0)  # one token: all heads of q and k
        hs = tl.arange(0, HB)
        hm = hs < H
        cols = tl.arange(0, D)
        HALF: tl.constexpr = D // 2
        QUART: tl.constexpr = D // 4
        pcols = (cols // HALF) * HALF + (cols % HALF + QUART) % HALF  # the partner inside each half
        pos = t % P
        c = tl.load(COS + pos * D + cols)[None, :]
        s = tl.load(SIN + pos * D + cols)[None, :]
        m2 = hm[:, None]
        # all loads first (q and k, and their partners), then the maths, then the stores
        qb = QKV + t * stride_tok + hs * D
        kb = QKV + t * stride_tok + (H + hs) * D
        xq = tl.load(qb[:, None] + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        xqp = tl.load(qb[:, None] + pcols[None, :], mask=m2, other=0.0).to(tl.float32)
        xk = tl.load(kb[:, None] + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        xkp = tl.load(kb[:, None] + pcols[None, :], mask=m2, other=0.0).to(tl.float32)
        oq = _norm_rotate(xq, xqp, QW, QB, cols, pcols, eps_q, c, s, D)
        ok = _norm_rotate(xk, xkp, KW, KB, cols, pcols, eps_k, c, s, D)
        dst = (t * H + hs)[:, None] * D + cols[None, :]
        tl.store(QO + dst, oq.to(QO.dtype.element_ty), mask=m2)
        tl.store(KO + dst, ok.to(KO.dtype.element_ty), mask=m2)

    @triton.jit
    def _norm_rotate(x, xp, W, B, cols, pcols, eps, c, s, D: tl.constexpr):
        mean = tl.sum(x, 1) / D
        xc = x - mean[:, None]
        var = tl.sum(xc * xc, 1) / D
        rstd = 1.0 / tl.sqrt(var + eps)
        w = tl.load(W + cols).to(tl.float32)
        b = tl.load(B + cols).to(tl.float32)
        wp = tl.load(W + pcols).to(tl.float32)
        bp = tl.load(B + pcols).to(tl.float32)
        y = xc * rstd[:, None] * w[None, :] + b[None, :]
        yp = (xp - mean[:, None]) * rstd[:, None] * wp[None, :] + bp[None, :]
        return y * c + yp * s


def qk_norm_rope(qkv: Tensor, heads: int, q_norm, k_norm, cos: Tensor, sin: Tensor) -> Tuple[Tensor, Tensor]:
    """q, k ``[B, N, h, d]`` (contiguous, qkv's dtype) from the packed projection ``qkv [B, N, 3*h*d]``.

    ``q_norm`` / ``k_norm``: the LayerNorm modules (over head_dim, with affine parameters);
    ``cos`` / ``sin``: RoPE tables ``[P, 1, d]`` (``N`` a multiple of ``P``)."""
    B, N, C3 = qkv.shape
    d = C3 // (3 * heads)
    P = cos.shape[0]
    if qkv.stride(-1) != 1 or qkv.stride(1) != C3 or qkv.stride(0) != N * C3:
        qkv = qkv.contiguous()
    q = torch.empty((B, N, heads, d), device=qkv.device, dtype=qkv.dtype)
    k = torch.empty_like(q)
    _qk_norm_rope[(B * N,)](qkv, q_norm.weight, q_norm.bias, k_norm.weight, k_norm.bias,
                            cos.reshape(P, d), sin.reshape(P, d), q, k,
                            heads, P, C3, float(q_norm.eps), float(k_norm.eps),
                            D=d, HB=triton.next_power_of_2(heads), num_warps=4)
    return q, k


def fused_ok(qkv: Tensor, q_norm, k_norm, rope) -> bool:
    """Whether :func:`qk_norm_rope` applies (CUDA, Triton, affine LayerNorms, a RoPE table)."""
    return (triton is not None and qkv.is_cuda and rope is not None
            and isinstance(q_norm, torch.nn.LayerNorm) and isinstance(k_norm, torch.nn.LayerNorm)
            and q_norm.weight is not None and k_norm.weight is not None and q_norm.bias is not None
            and k_norm.bias is not None and rope[0].dtype == torch.float32
            and q_norm.weight.numel() in (16, 32, 64, 128) and k_norm.weight.numel() == q_norm.weight.numel()
            and not (torch.is_grad_enabled() and qkv.requires_grad))
