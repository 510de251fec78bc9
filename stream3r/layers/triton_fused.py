"""Small fused CUDA kernels (Triton) for memory-bound steps of a streaming step.

* :func:`add_scale_norm`: ``x' = x + y * gamma`` (a residual through LayerScale) and
  ``LayerNorm(x')`` in one pass (the transformer block's second residual + ``norm2``), or the
  residual alone.  Same maths as ``torch.addcmul`` then ``layer_norm``: ``x'`` is rounded to x's
  dtype before the norm (the norm sees exactly the tensor the next residual adds to), statistics
  in float32.  The dtypes may differ (mixed precision: a float32 residual stream ``x``, a bf16
  update ``y``, float32 ``gamma`` and norm parameters, the normalised output in bf16 for the next
  matmul: ``out_dtype``).
* :func:`layer_norm_to`: ``LayerNorm(x)`` computed in float32 and written in ``out_dtype`` (a
  float32 residual stream normalised straight into the next matmul's bf16 input); rows may be
  strided (``x [G, R, C]``, e.g. the patch tokens of each frame after its special tokens).
* :func:`upsample_bilinear_nhwc`: bilinear resize with ``align_corners=True`` of a channels_last
  map, optionally adding a ``[C, OH, OW]`` map (the DPT's position embedding) before the single
  rounding to the output dtype.  torch's NHWC bilinear kernel reads the input with poor
  coalescing (~90 us for the DPT's last resize on an H100); this one gathers whole channel vectors.

Each function has an ``*_ok`` predicate; callers fall back to torch elsewhere (CPU, no Triton,
autograd, torch.compile).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 # pragma: no cover - absent, or a CPU-only build failing at import (RuntimeError)
    triton = None
    tl = None

_enabled = {"on": True}


def set_fused_enabled(on: bool) -> bool:
    """Switch these kernels on/off (benchmarks, debugging); returns the old setting."""
    old = _enabled["on"]
    _enabled["on"] = bool(on)
    return old


def _compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - old torch
        return False


def _base_ok(*ts: Tensor, interpret: bool = False) -> bool:
    return (_enabled["on"] and triton is not None and all(t.is_cuda or interpret for t in ts) and not _compiling()
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in ts)))


if triton is not None:

    @triton.jit
    def _norm_rows_kernel(X, W, B, HO, R, C, sxg, sxr, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0)  # output row (contiguous [G * R, C]); input row (row // R, row % R)
        cols = tl.arange(0, BLOCK)
        m = cols < C
        xf = tl.load(X + (row // R) * sxg + (row % R) * sxr + cols, mask=m, other=0.0).to(tl.float32)
        mean = tl.sum(xf, 0) / C
        xc = tl.where(m, xf - mean, 0.0)
        var = tl.sum(xc * xc, 0) / C
        rstd = 1.0 / tl.sqrt(var + eps)
        w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
        b = tl.load(B + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(HO + row * C + cols, (xc * rstd * w + b).to(HO.dtype.element_ty), mask=m)

    @triton.jit
    def _add_scale_norm_kernel(X, Y, G, W, B, XO, HO, C, eps, HAS_NORM: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        m = cols < C
        x = tl.load(X + row * C + cols, mask=m, other=0.0).to(tl.float32)
        y = tl.load(Y + row * C + cols, mask=m, other=0.0).to(tl.float32)
        g = tl.load(G + cols, mask=m, other=0.0).to(tl.float32)
        xn = (x + y * g).to(XO.dtype.element_ty)
        tl.store(XO + row * C + cols, xn, mask=m)
        if HAS_NORM:
            xf = xn.to(tl.float32)
            mean = tl.sum(xf, 0) / C
            xc = tl.where(m, xf - mean, 0.0)
            var = tl.sum(xc * xc, 0) / C
            rstd = 1.0 / tl.sqrt(var + eps)
            w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
            b = tl.load(B + cols, mask=m, other=0.0).to(tl.float32)
            tl.store(HO + row * C + cols, (xc * rstd * w + b).to(HO.dtype.element_ty), mask=m)

    @triton.jit
    def _upsample_kernel(X, E, Y, NPIX, H, W, OH, OW, C, sh, sw,
                         sxn, sxh, sxw, syn, syh, syw, seh, sew,
                         HAS_E: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        pid = tl.program_id(0)
        pc = tl.program_id(1)
        p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
        pm = p < NPIX
        n = p // (OH * OW)
        r = p % (OH * OW)
        oy = r // OW
        ox = r % OW
        fy = oy.to(tl.float32) * sh
        fx = ox.to(tl.float32) * sw
        y0 = fy.to(tl.int32)  # fy >= 0: truncation = floor, as torch
        x0 = fx.to(tl.int32)
        ly = fy - y0.to(tl.float32)
        lx = fx - x0.to(tl.float32)
        y1 = tl.where(y0 < H - 1, y0 + 1, y0)
        x1 = tl.where(x0 < W - 1, x0 + 1, x0)
        c = pc * BLOCK_C + tl.arange(0, BLOCK_C)
        cm = c < C
        m2 = pm[:, None] & cm[None, :]
        base = X + n * sxn
        v00 = tl.load(base[:, None] + (y0 * sxh + x0 * sxw)[:, None] + c[None, :], mask=m2, other=0.0).to(tl.float32)
        v01 = tl.load(base[:, None] + (y0 * sxh + x1 * sxw)[:, None] + c[None, :], mask=m2, other=0.0).to(tl.float32)
        v10 = tl.load(base[:, None] + (y1 * sxh + x0 * sxw)[:, None] + c[None, :], mask=m2, other=0.0).to(tl.float32)
        v11 = tl.load(base[:, None] + (y1 * sxh + x1 * sxw)[:, None] + c[None, :], mask=m2, other=0.0).to(tl.float32)
        wx = lx[:, None]
        wy = ly[:, None]
        out = (1.0 - wy) * ((1.0 - wx) * v00 + wx * v01) + wy * ((1.0 - wx) * v10 + wx * v11)
        if HAS_E:
            out += tl.load(E + (oy * seh + ox * sew)[:, None] + c[None, :], mask=m2, other=0.0).to(tl.float32)
        tl.store(Y + (n * syn + oy * syh + ox * syw)[:, None] + c[None, :], out.to(Y.dtype.element_ty), mask=m2)


_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _norm_params_ok(norm, C: int) -> bool:
    return (norm.weight is not None and norm.bias is not None and norm.weight.numel() == C
            and norm.weight.is_contiguous() and norm.bias.is_contiguous()
            and norm.weight.dtype in _FLOATS and norm.bias.dtype in _FLOATS)


def add_scale_norm_ok(x: Tensor, y: Tensor, gamma: Tensor, norm=None) -> bool:
    if not _base_ok(x, y):
        return False
    C = x.shape[-1]
    ok = (x.dtype in _FLOATS and y.dtype in _FLOATS and gamma.dtype in _FLOATS and x.is_contiguous()
          and y.is_contiguous() and gamma.is_contiguous() and x.shape == y.shape and gamma.numel() == C and C <= 8192)
    if norm is not None:
        ok = ok and _norm_params_ok(norm, C)
    return ok


def add_scale_norm(x: Tensor, y: Tensor, gamma: Tensor, norm=None,
                   out_dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """``(x + y * gamma, norm(x + y * gamma))`` over the last dim (``norm``: a LayerNorm or None).

    ``x + y * gamma`` is computed in float32 and written in x's dtype; the norm of that rounded
    tensor is written in ``out_dtype`` (default x's dtype)."""
    C = x.shape[-1]
    rows = x.numel() // C
    xo = torch.empty_like(x)
    ho = torch.empty_like(x, dtype=out_dtype or x.dtype) if norm is not None else xo
    block = triton.next_power_of_2(C)
    warps = 4 if block <= 2048 else 8
    _add_scale_norm_kernel[(rows,)](
        x, y, gamma, norm.weight if norm is not None else gamma, norm.bias if norm is not None else gamma,
        xo, ho, C, float(norm.eps) if norm is not None else 0.0,
        HAS_NORM=norm is not None, BLOCK=block, num_warps=warps)
    return xo, (ho if norm is not None else None)


def layer_norm_to_ok(x: Tensor, norm) -> bool:
    """Whether :func:`layer_norm_to` applies: CUDA, Triton, a LayerNorm with affine parameters, the
    last dim contiguous and at most 8192 wide, x of rank 2 or 3 with rows strided as a [G, R, C] view."""
    if not _base_ok(x) or x.dtype not in _FLOATS or x.dim() not in (2, 3) or x.stride(-1) != 1:
        return False
    C = x.shape[-1]
    if C > 8192 or not _norm_params_ok(norm, C):
        return False
    if x.dim() == 3 and x.shape[1] > 1 and x.shape[0] > 1 and x.stride(0) < x.shape[1] * x.stride(1):
        return False  # overlapping rows: not a plain strided view
    return True


def layer_norm_to(x: Tensor, norm, out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """``norm(x)`` (a LayerNorm over the last dim) computed in float32 from x in its own dtype and
    written contiguous in ``out_dtype`` (default x's dtype).  ``x``: ``[R, C]`` or ``[G, R, C]``
    with unit stride in C (rows may be strided, e.g. a slice of tokens of each frame)."""
    if x.dim() == 2:
        x3 = x[None]
    else:
        x3 = x
    G, R, C = x3.shape
    out = torch.empty((G, R, C), device=x.device, dtype=out_dtype or x.dtype)
    block = triton.next_power_of_2(C)
    warps = 4 if block <= 2048 else 8
    _norm_rows_kernel[(G * R,)](x3, norm.weight, norm.bias, out, R, C, x3.stride(0), x3.stride(1), float(norm.eps),
                                BLOCK=block, num_warps=warps)
    return out.view(x.shape)


def upsample_ok(x: Tensor, add: Optional[Tensor] = None) -> bool:
    return (_base_ok(x) and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and (add is None or (add.dim() == 3 and add.shape[0] == x.shape[1] and add.stride(0) == 1)))


def upsample_bilinear_nhwc(x: Tensor, size: Tuple[int, int], add: Optional[Tensor] = None) -> Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=True) (+ add)`` for a channels_last
    ``x [N, C, H, W]``; ``add``: ``[C, OH, OW]`` with unit channel stride (HWC memory).  Returns a
    channels_last tensor in x's dtype."""
    N, C, H, W = x.shape
    OH, OW = int(size[0]), int(size[1])
    y = torch.empty((N, C, OH, OW), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    sh = (H - 1) / (OH - 1) if OH > 1 else 0.0
    sw = (W - 1) / (OW - 1) if OW > 1 else 0.0
    npix = N * OH * OW
    bc = min(128, triton.next_power_of_2(C))
    bp = max(1, 4096 // bc)
    e = add if add is not None else x
    grid = (triton.cdiv(npix, bp), triton.cdiv(C, bc))
    _upsample_kernel[grid](
        x, e, y, npix, H, W, OH, OW, C, float(sh), float(sw),
        x.stride(0), x.stride(2), x.stride(3), y.stride(0), y.stride(2), y.stride(3),
        e.stride(1) if add is not None else 0, e.stride(2) if add is not None else 0,
        HAS_E=add is not None, BLOCK_P=bp, BLOCK_C=bc, num_warps=4)
    return y
