"""Camera head: iterative pose refinement on the camera tokens of the last aggregator layer.

Input: camera tokens ``[B, S, C]`` (token 0 of each frame, ``C = 2 * embed_dim``).  Output:
pose encoding ``[B, S, 9]`` = translation (3, linear), quaternion xyzw (4, linear), field of
view (fov_h, fov_w; ReLU), describing the world-to-camera transform (OpenCV axes).

Each of ``iterations`` (4) rounds starts again from the normalised camera tokens ``x``:

    shift, scale, gate = Linear(SiLU(embed_pose(prev)))          # prev: raw pose so far,
    h = gate * (LN(x) * (1 + scale) + shift) + x                 #   empty_pose_tokens at first
    h = trunk(h)             # blocks attending across frames (mask / KV cache via ``attend``)
    raw = raw + pose_branch(trunk_norm(h))

The trunk's attention pattern across frames is the aggregator's (full / causal / window with
one token per frame); in streaming each (iteration, trunk layer) pair has its own KV cache.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..layers.attention import AttendFn
from ..layers.block import Block, Mlp
from .activations import activate_pose


class CameraHead(nn.Module):
    """See module docstring.  Checkpoint names: ``empty_pose_tokens``, ``trunk.N.*``,
    ``token_norm``, ``trunk_norm``, ``embed_pose``, ``poseLN_modulation.1``, ``pose_branch.fc1/fc2``."""

    def __init__(self, dim_in: int = 2048, trunk_depth: int = 4, num_heads: int = 16, mlp_ratio: float = 4.0,
                 init_values: float = 0.01, iterations: int = 4) -> None:
        super().__init__()
        self.target_dim = 9
        self.trunk_depth = trunk_depth
        self.iterations = iterations
        self.num_heads = num_heads
        self.head_dim = dim_in // num_heads
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, self.target_dim))
        self.trunk = nn.Sequential(
            *[Block(dim_in, num_heads, mlp_ratio, init_values=init_values) for _ in range(trunk_depth)]
        )
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.embed_pose = nn.Linear(self.target_dim, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, self.target_dim)

    def output_layers(self) -> list:
        """Everything but the trunk blocks (norms, pose embedding / modulation, pose branch) and
        the empty pose tokens: what stays float32 with half heads (:meth:`STream3R.to_inference`)."""
        return [self.token_norm, self.trunk_norm, self.embed_pose, self.poseLN_modulation, self.adaln_norm,
                self.pose_branch, self.empty_pose_tokens]

    def forward(self, camera_tokens: Tensor, attend: Optional[Callable[[int, int], Optional[AttendFn]]] = None) -> Tensor:
        """camera_tokens ``[B, S, C]`` -> pose encoding ``[B, S, 9]`` (last iteration).

        ``attend(iteration, layer)`` returns the attention callback of that trunk layer (None:
        full attention among these S frames).
        """
        B, S, _ = camera_tokens.shape
        odt = self.token_norm.weight.dtype  # the output layers' dtype (float32 unless all-half heads)
        tdt = self.trunk[0].norm1.weight.dtype  # the trunk's
        x = self.token_norm(camera_tokens.to(odt))
        x_ln = self.adaln_norm(x)
        raw = None
        for it in range(self.iterations):
            prev = self.empty_pose_tokens.expand(B, S, -1) if raw is None else raw
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(prev)).chunk(3, dim=-1)
            h = (gate * (x_ln * (1 + scale) + shift) + x).to(tdt)
            for i, blk in enumerate(self.trunk):
                h = blk(h, attend=attend(it, i) if attend is not None else None)
            delta = self.pose_branch(self.trunk_norm(h.to(odt)))
            raw = delta if raw is None else raw + delta
        return activate_pose(raw)
