"""2D rotary position embedding (RoPE) with tables built once per resolution.

Convention (as in the released model): each head's ``head_dim`` features are split into
two halves; the first half is rotated by the token's row (y) position, the second by its
column (x) position.  Inside each half of ``D = head_dim / 2`` features the angle of feature
``i`` at position ``p`` is ``p * inv_freq[i mod D/2]`` with
``inv_freq = base ** (-arange(0, D, 2) / D)``, and ``x' = x * cos + rotate_half(x) * sin``
with ``rotate_half([a, b]) = [-b, a]`` (a, b: the two quarters of the half).

Positions: patch ``(row, col)`` of the ``grid_h x grid_w`` patch grid gets ``(row + 1, col + 1)``;
the special (camera / register) tokens in front of the patches sit at ``(0, 0)`` (identity
rotation).  There is no time component: every frame uses the same positions, so one table of
``[tokens_per_frame, head_dim]`` serves every frame, batch and cache position.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Tuple

import torch
from torch import Tensor


class RopeTable(NamedTuple):
    """cos and signed sin tables ``[P, 1, head_dim]`` (float32) for ``P`` tokens per frame."""

    cos: Tensor
    sin: Tensor

    @property
    def tokens_per_frame(self) -> int:
        return self.cos.shape[0]

    def apply(self, x: Tensor) -> Tensor:
        return apply_rope(x, self.cos, self.sin)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` ``[..., N, h, head_dim]`` (``N`` a multiple of ``P = cos.shape[0]``: frames end to
    end) in float32; returns x's dtype."""
    shape = x.shape
    P = cos.shape[0]
    h, d = shape[-2], shape[-1]
    xf = x.reshape(-1, P, h, d).float()
    # rotate_half inside each of the two halves: [a, b | c, e] -> [b, a | e, c]; the signs live in sin
    swapped = xf.view(-1, P, h, 2, 2, d // 4).flip(-2).reshape(xf.shape)
    return (xf * cos + swapped * sin).to(x.dtype).view(shape)


def apply_rope_pair(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> Tuple[Tensor, Tensor]:
    """:func:`apply_rope` on q and k ``[..., N, h, d]`` in one pass (fewer kernel launches)."""
    h = q.shape[-2]
    both = apply_rope(torch.cat([q, k], dim=-2), cos, sin)
    return both[..., :h, :], both[..., h:, :]


class Rope2D:
    """Factory and cache of :class:`RopeTable` s (``base`` = RoPE frequency, 100 in STream3R)."""

    def __init__(self, base: float = 100.0) -> None:
        self.base = float(base)
        self._tables: Dict[Tuple, RopeTable] = {}

    def axis_tables(self, dim: int, max_pos: int, device) -> Tuple[Tensor, Tensor]:
        """cos, sin of shape ``[max_pos, dim]`` for one axis (float32, as the reference)."""
        exponents = torch.arange(0, dim, 2, device=device).float() / dim
        inv_freq = 1.0 / (self.base**exponents)
        positions = torch.arange(max_pos, device=device, dtype=inv_freq.dtype)
        angles = torch.einsum("i,j->ij", positions, inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()

    def table(self, grid_h: int, grid_w: int, num_special: int, head_dim: int, device) -> RopeTable:
        """Table for ``num_special`` tokens at (0,0) followed by a ``grid_h x grid_w`` patch grid."""
        if head_dim % 4:
            raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
        device = torch.device(device)
        key = (grid_h, grid_w, num_special, head_dim, device)
        tab = self._tables.get(key)
        if tab is not None:
            return tab
        D = head_dim // 2
        cos_ax, sin_ax = self.axis_tables(D, max(grid_h, grid_w) + 1, device)
        rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w) + 1
        cols = torch.arange(grid_w, device=device).repeat(grid_h) + 1
        zeros = torch.zeros(num_special, dtype=rows.dtype, device=device)
        pos_y = torch.cat([zeros, rows])
        pos_x = torch.cat([zeros, cols])
        cos = torch.cat([cos_ax[pos_y], cos_ax[pos_x]], dim=-1)  # [P, head_dim]
        sin = torch.cat([sin_ax[pos_y], sin_ax[pos_x]], dim=-1)
        # fold the sign of rotate_half into sin: the first quarter of each half gets -sin
        sign = torch.ones(2, 2, D // 2, device=device)
        sign[:, 0] = -1.0
        sin = sin * sign.reshape(head_dim)
        tab = RopeTable(cos[:, None, :].contiguous(), sin[:, None, :].contiguous())
        self._tables[key] = tab
        return tab
