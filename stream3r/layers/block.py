"""Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))).

Used by the DINOv2 patch embed (LayerNorm eps 1e-6, LayerScale 1.0, no QK norm), the
aggregator's frame and global blocks (eps 1e-5, QK LayerNorm, 2D RoPE) and the camera
head trunk (eps 1e-5, no QK norm, no RoPE).  Parameter names follow the checkpoint:
``norm1, attn.{qkv,q_norm,k_norm,proj}, ls1.gamma, norm2, mlp.{fc1,fc2}, ls2.gamma``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import triton_fused as _tf
from .attention import Attention, AttendFn


class Mlp(nn.Module):
    """fc1 -> exact (erf) GELU -> fc2."""

    def __init__(self, in_features: int, hidden_features: int, out_features: Optional[int] = None,
                 bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

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


# The block split around its attention call, so that the parts with static shapes can be compiled
# (torch.compile) while cached / masked attention stays eager.  See set_block_compile.
def _residual(x: Tensor, y: Tensor, ls: nn.Module) -> Tensor:
    """``x + ls(y)``; with a LayerScale one fused kernel (``addcmul``, or Triton on CUDA: one
    rounding instead of two)."""
    if isinstance(ls, LayerScale):
        if _tf.add_scale_norm_ok(x, y, ls.gamma):
            return _tf.add_scale_norm(x, y, ls.gamma)[0]
        return torch.addcmul(x, y, ls.gamma)
    return x + ls(y)


def _residual_norm(x: Tensor, y: Tensor, ls: nn.Module, norm: nn.Module):
    """``x' = x + ls(y)`` and ``norm(x')`` (one Triton pass on CUDA)."""
    if isinstance(ls, LayerScale) and isinstance(norm, nn.LayerNorm) and _tf.add_scale_norm_ok(x, y, ls.gamma, norm):
        return _tf.add_scale_norm(x, y, ls.gamma, norm)
    x = _residual(x, y, ls)
    return x, norm(x)


def _block_full(block: Block, x: Tensor, rope=None) -> Tensor:
    x, h = _residual_norm(x, block.attn(block.norm1(x), rope=rope), block.ls1, block.norm2)
    return _residual(x, block.mlp(h), block.ls2)


def _block_qkv(block: Block, x: Tensor, rope=None):
    return block.attn.project(block.norm1(x), rope)


def _block_finish(block: Block, x: Tensor, attn_out: Tensor) -> Tensor:
    B, N, C = x.shape
    x, h = _residual_norm(x, block.attn.proj(attn_out.reshape(B, N, C)), block.ls1, block.norm2)
    return _residual(x, block.mlp(h), block.ls2)


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
