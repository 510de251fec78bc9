"""Patch embeddings: a strided convolution, and the DINOv2 ViT with register tokens.

Both map normalised images ``[N, 3, H, W]`` (H, W multiples of the patch size) to patch
tokens ``[N, (H/p) * (W/p), dim]`` in row-major patch order.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .block import Block
from .half_cpu import Conv2d


class PatchEmbed(nn.Module):
    """``proj``: Conv2d(3, dim, kernel=stride=patch) -> tokens ``[N, h*w, dim]``."""

    def __init__(self, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 1024) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """x ``[N, 3, H, W]`` (any float dtype; cast to the weights') -> ``[N, h*w, dim]`` in the weights' dtype."""
        return self.proj(x.to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)


class DinoV2Encoder(nn.Module):
    """DINOv2 ViT (LayerScale, ``num_register_tokens`` registers, no block chunking).

    The token stream runs in the dtype of ``cls_token`` (float32 in the mixed-precision recipe,
    where only the linear / conv weights are half: see :mod:`stream3r.layers.block`).

    Token sequence: ``[cls, registers, patches]``; the learned positional embedding
    (``pos_embed``: ``[1, 1 + g*g, dim]`` for the ``g x g`` training grid, ``g = img_size/patch``)
    is added to cls and patches *before* the registers are inserted.  For another grid
    ``h x w`` the patch part is resized with bicubic, antialiased interpolation to the
    explicit size ``(h, w)`` in float32, except when the grid is the training grid
    (square, same size).  ``forward`` returns the final-LayerNorm'd patch tokens only.

    Checkpoint names: ``cls_token, pos_embed, register_tokens, mask_token`` (unused at
    inference), ``patch_embed.proj``, ``blocks.N.*``, ``norm``.
    """

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        init_values: float = 1.0,
    ) -> None:
        super().__init__()
        grid = img_size // patch_size
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, init_values=init_values, norm_eps=1e-6) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._pos_cache: Dict[Tuple, Tensor] = {}

    def position_embedding(self, grid_h: int, grid_w: int) -> Tensor:
        """``[1, 1 + grid_h*grid_w, dim]`` positional embedding for this grid (cached per weights)."""
        pe = self.pos_embed
        key = (grid_h, grid_w, pe.device, pe.dtype, pe.data_ptr(), pe._version)
        hit = self._pos_cache.get(key)
        if hit is not None:
            return hit
        n = pe.shape[1] - 1
        side = int(math.sqrt(n))
        if grid_h * grid_w == n and grid_h == grid_w:
            out = pe
        else:
            pef = pe.float()
            patch = pef[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
            patch = F.interpolate(patch, size=(grid_h, grid_w), mode="bicubic", antialias=True)
            patch = patch.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
            out = torch.cat([pef[:, :1], patch], dim=1).to(pe.dtype)
        if not torch.is_grad_enabled():  # never cache a tensor that carries an autograd graph
            self._pos_cache.clear()  # one resolution at a time is the common case
            self._pos_cache[key] = out
        return out

    def forward(self, x: Tensor) -> Tensor:
        N, _, H, W = x.shape
        gh, gw = H // self.patch_size, W // self.patch_size
        tok = self.patch_embed(x).to(self.cls_token.dtype)  # the residual stream's dtype (float32 when mixed)
        tok = torch.cat([self.cls_token.expand(N, -1, -1), tok], dim=1)
        tok = tok + self.position_embedding(gh, gw)
        if self.register_tokens is not None:
            tok = torch.cat([tok[:, :1], self.register_tokens.expand(N, -1, -1), tok[:, 1:]], dim=1)
        for blk in self.blocks:
            tok = blk(tok)
        tok = self.norm(tok)
        return tok[:, 1 + self.num_register_tokens :]
