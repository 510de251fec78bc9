"""Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))).

Used by the DINOv2 patch embed (LayerNorm eps 1e-6, LayerScale 1.0, no QK norm), the
aggregator's frame and global blocks (eps 1e-5, QK LayerNorm, 2D RoPE) and the camera
head trunk (eps 1e-5, no QK norm, no RoPE).  Parameter names follow the checkpoint:
``norm1, attn.{qkv,q_norm,k_norm,proj}, ls1.gamma, norm2, mlp.{fc1,fc2}, ls2.gamma``.

Precision follows the parameters' dtypes, so one block serves every recipe
(:meth:`stream3r.model.STream3R.to_inference`):

* all float32 (the reference) or all half (bf16 everywhere): everything runs in that dtype;
* mixed (the accelerator default): the residual stream ``x`` is float32 (the dtype it arrives
  in), the norms and LayerScale gammas are float32, and the linear layers hold bf16 weights.
  Each norm is computed in float32 and written in the dtype of the matmul that reads it; each
  residual ``x + gamma * y`` is computed in float32 from the matmul's bf16 output ``y``.  That is
  what bf16 autocast does with float32 weights (upstream's half-precision recipe), without
  casting the weights at every call.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import triton_fused as _tf
from .attention import AttendFn, Attention, attention
from .half_cpu import Linear


class Mlp(nn.Module):
    """fc1 -> exact (erf) GELU -> fc2."""

    def __init__(self, in_features: int, hidden_features: int, out_features: Optional[int] = None,
                 bias: bool = True) -> None:
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel scale ``x * gamma``."""

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Transformer block; ``forward(x [B, N, dim], rope=None, attend=None)``.

    ``rope`` and ``attend`` are passed to :class:`~stream3r.layers.attention.Attention`
    (``attend`` lets a caller plug in masks or a KV cache).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        init_values: Optional[float] = None,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: Tensor, rope=None, attend: Optional[AttendFn] = None) -> Tensor:
        if attend is None:
            return _IMPL["full"](self, x, rope)
        q, k, v = _IMPL["qkv"](self, x, rope)
        return _IMPL["finish"](self, x, attend(q, k, v))


def norm_to(norm: nn.Module, x: Tensor, dtype: torch.dtype) -> Tensor:
    """``norm(x)`` written in ``dtype``: computed in the wider of x's and the norm's dtypes
    (float32 in the mixed recipe; one Triton kernel on CUDA), rounded once to ``dtype``."""
    if isinstance(norm, nn.LayerNorm) and _tf.layer_norm_to_ok(x, norm):
        return _tf.layer_norm_to(x, norm, dtype)
    w = getattr(norm, "weight", None)
    if w is not None and w.dtype != x.dtype:
        x = x.to(torch.promote_types(x.dtype, w.dtype))
    return norm(x).to(dtype)


def linear_to(layer: nn.Linear, x: Tensor, dtype: torch.dtype) -> Tensor:
    """``layer(x)`` with the output written in ``dtype``.

    A half GEMM accumulates in float32; in the mixed recipe the layers whose output is added to
    the float32 residual stream (attention ``proj``, MLP ``fc2``) write that float32 result
    instead of rounding it to half first (one rounding fewer per residual update than autocast).
    CUDA: one cuBLAS call with a float32 output (``out_dtype``, torch >= 2.8); elsewhere the half
    weights and inputs are widened exactly and multiplied in float32 (the same products, float32
    accumulation).  When ``dtype`` is the weight's dtype this is ``layer(x)``."""
    w = layer.weight
    if w.dtype == dtype or x.dtype != w.dtype:
        return layer(x)
    if x.is_cuda:
        how = _mm_out_dtype_mode(x.device, w.dtype, dtype)
        if how is not None:
            x2 = x.reshape(-1, x.shape[-1])
            if how == "addmm" and layer.bias is not None:
                y = torch.addmm(layer.bias, x2, w.t(), out_dtype=dtype)
            else:
                y = torch.mm(x2, w.t(), out_dtype=dtype)
                if layer.bias is not None:
                    y = y + layer.bias.to(dtype)
            return y.view(*x.shape[:-1], w.shape[0])
    b = None if layer.bias is None else layer.bias.to(dtype)
    if dtype == torch.float32 and x.device.type == "cpu":
        from .half_cpu import _wide_weight

        return F.linear(x.float(), _wide_weight(w), b)
    return F.linear(x.to(dtype), w.to(dtype), b)


_MM_OUT_DTYPE: dict = {}


def _mm_out_dtype_mode(device: torch.device, half: torch.dtype, out: torch.dtype) -> Optional[str]:
    """How this torch does a half GEMM with a wider output on ``device``: ``"addmm"`` (bias in the
    half dtype fused), ``"mm"`` (bias added after), or None (not supported: widened float32
    GEMM, with a warning).  Probed once per combination."""
    key = (device, half, out)
    if key not in _MM_OUT_DTYPE:
        a = torch.ones(2, 8, device=device, dtype=half)
        b = torch.ones(8, 4, device=device, dtype=half)
        how = None
        try:
            if torch.addmm(torch.ones(4, device=device, dtype=half), a, b, out_dtype=out).dtype == out:
                how = "addmm"
        except (RuntimeError, TypeError):
            try:
                if torch.mm(a, b, out_dtype=out).dtype == out:
                    how = "mm"
            except (RuntimeError, TypeError):
                pass
        if how is None:
            import logging

            logging.getLogger(__name__).warning(
                "torch %s has no %s GEMM with a %s output on %s: the mixed recipe's residual layers run as "
                "widened float32 GEMMs (same result, slower)", torch.__version__, half, out, device)
        _MM_OUT_DTYPE[key] = how
    return _MM_OUT_DTYPE[key]


# The block split around its attention call, so that the parts with static shapes can be compiled
# (torch.compile) while cached / masked attention stays eager.  See set_block_compile.
def _residual(x: Tensor, y: Tensor, ls: nn.Module) -> Tensor:
    """``x + ls(y)`` in x's dtype (the residual stream's); with a LayerScale one fused kernel
    (``addcmul``, or Triton on CUDA: one rounding instead of two)."""
    if isinstance(ls, LayerScale):
        if _tf.add_scale_norm_ok(x, y, ls.gamma):
            return _tf.add_scale_norm(x, y, ls.gamma)[0]
        return torch.addcmul(x, y, ls.gamma).to(x.dtype)
    return (x + ls(y)).to(x.dtype)


def _residual_norm(x: Tensor, y: Tensor, ls: nn.Module, norm: nn.Module, out_dtype: torch.dtype):
    """``x' = x + ls(y)`` (x's dtype) and ``norm(x')`` in ``out_dtype`` (one Triton pass on CUDA)."""
    if isinstance(ls, LayerScale) and isinstance(norm, nn.LayerNorm) and _tf.add_scale_norm_ok(x, y, ls.gamma, norm):
        return _tf.add_scale_norm(x, y, ls.gamma, norm, out_dtype)
    x = _residual(x, y, ls)
    return x, norm_to(norm, x, out_dtype)


def _mlp_to(mlp: Mlp, h: Tensor, dtype: torch.dtype) -> Tensor:
    return linear_to(mlp.fc2, mlp.act(mlp.fc1(h)), dtype)


def _block_full(block: Block, x: Tensor, rope=None) -> Tensor:
    q, k, v = block.attn.project(norm_to(block.norm1, x, block.attn.qkv.weight.dtype), rope)
    return _block_finish(block, x, attention(q, k, v))


def _block_qkv(block: Block, x: Tensor, rope=None):
    return block.attn.project(norm_to(block.norm1, x, block.attn.qkv.weight.dtype), rope)


def _block_finish(block: Block, x: Tensor, attn_out: Tensor) -> Tensor:
    B, N, C = x.shape
    y = linear_to(block.attn.proj, attn_out.reshape(B, N, C), x.dtype)
    x, h = _residual_norm(x, y, block.ls1, block.norm2, block.mlp.fc1.weight.dtype)
    return _residual(x, _mlp_to(block.mlp, h, x.dtype), block.ls2)


_RAW = {"full": _block_full, "qkv": _block_qkv, "finish": _block_finish}
_IMPL = dict(_RAW)


def set_block_compile(mode: Optional[str] = None) -> None:
    """Run the blocks' static-shape parts through ``torch.compile`` (``mode`` as torch.compile's,
    e.g. "default" or "max-autotune-no-cudagraphs"); None restores eager execution."""
    if mode is None:
        _IMPL.update(_RAW)
        return
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    kw = {} if mode == "default" else {"mode": mode}
    _IMPL.update({k: torch.compile(f, dynamic=False, **kw) for k, f in _RAW.items()})
