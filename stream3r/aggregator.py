"""The alternating-attention trunk: DINOv2 patch tokens -> frame / global attention pairs.

Per frame the token sequence is ``[camera, registers (R), patches (h*w)]``, ``P = 1 + R + h*w``
tokens.  The camera and register tokens have two learned values each
(``camera_token [1, 2, 1, C]``, ``register_token [1, 2, R, C]``): index 0 for the first frame of
the stream (the anchor), index 1 for every other frame.

Layer ``i`` = frame block ``i`` (attention inside each frame, ``[B*S, P, C]``) followed by global
block ``i`` (attention across frames, ``[B, S*P, C]``; masked or cached through an ``attend``
callback).  The output of layer ``i`` is ``concat(frame_out_i, global_out_i)``: ``[B, S, P, 2C]``, in
the token stream's dtype (float32 in the mixed-precision recipe: see :mod:`stream3r.layers.block`).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional

import torch
from torch import Tensor, nn

from .layers.attention import AttendFn
from .layers.block import Block
from .layers.patch_embed import DinoV2Encoder, PatchEmbed
from .layers.rope import Rope2D

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Aggregator(nn.Module):
    """Alternating frame/global attention over a sequence of frames (see module docstring).

    Checkpoint names: ``camera_token``, ``register_token``, ``patch_embed.*``,
    ``frame_blocks.N.*``, ``global_blocks.N.*``.  The ImageNet mean/std are non-persistent
    buffers (not in the checkpoint).
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
        patch_embed: str = "dinov2",
        dinov2_depth: int = 24,
        dinov2_num_heads: int = 16,
        rope_freq: float = 100.0,
        init_values: float = 0.01,
    ) -> None:
        super().__init__()
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, embed_dim) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, num_register_tokens, embed_dim) * 1e-6)
        if patch_embed == "conv":
            self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        else:
            self.patch_embed = DinoV2Encoder(
                img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=dinov2_depth,
                num_heads=dinov2_num_heads, mlp_ratio=4.0, num_register_tokens=num_register_tokens, init_values=1.0,
            )
        self.frame_blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, init_values=init_values, qk_norm=True) for _ in range(depth)]
        )
        self.global_blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, init_values=init_values, qk_norm=True) for _ in range(depth)]
        )
        self.register_buffer("_resnet_mean", torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_resnet_std", torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1), persistent=False)
        self.rope = Rope2D(rope_freq) if rope_freq > 0 else None
        self.depth = depth
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.patch_size = patch_size
        self.patch_start_idx = 1 + num_register_tokens

    def reset_buffers(self, device=None) -> None:
        """(Re)create the non-persistent normalisation buffers (after building on the meta device)."""
        dev = device if device is not None else self.camera_token.device
        dtype = self.camera_token.dtype if self.camera_token.dtype.is_floating_point else torch.float32
        self._resnet_mean = torch.tensor(IMAGENET_MEAN, device=dev, dtype=dtype).view(1, 1, 3, 1, 1)
        self._resnet_std = torch.tensor(IMAGENET_STD, device=dev, dtype=dtype).view(1, 1, 3, 1, 1)

    def tokens_per_frame(self, height: int, width: int) -> int:
        return self.patch_start_idx + (height // self.patch_size) * (width // self.patch_size)

    def _special_tokens(self, param: Tensor, B: int, S: int, starts_stream: bool) -> Tensor:
        """``[B*S, X, C]``: value 0 for the stream's first frame, value 1 for every other frame."""
        first = param[:, 0:1] if starts_stream else param[:, 1:2]
        parts = [first.expand(B, 1, *param.shape[2:])]
        if S > 1:
            parts.append(param[:, 1:2].expand(B, S - 1, *param.shape[2:]))
        return torch.cat(parts, dim=1).reshape(B * S, *param.shape[2:])

    def forward(
        self,
        images: Tensor,
        starts_stream: bool = True,
        global_attend: Optional[Callable[[int], Optional[AttendFn]]] = None,
        keep_layers: Optional[Iterable[int]] = None,
    ) -> Dict[int, Tensor]:
        """Run the trunk.

        Args:
            images: ``[B, S, 3, H, W]`` in [0, 1].
            starts_stream: the first of these frames is frame 0 of the stream (anchor tokens).
            global_attend: ``layer_index -> attend`` callback for the global blocks (masks,
                KV caches); None = full attention among these frames.
            keep_layers: layer indices whose outputs to return (default: all).
        Returns:
            ``{layer_index: [B, S, P, 2C]}``.
        """
        B, S, _, H, W = images.shape
        # normalise in float32 (as the fp32 reference); the token stream runs in the special tokens'
        # dtype (float32 in the mixed recipe, where only linear / conv weights are half)
        rdt = self.camera_token.dtype
        x = (images.float() - self._resnet_mean.float()) / self._resnet_std.float()
        x = x.to(rdt)
        patches = self.patch_embed(x.reshape(B * S, 3, H, W)).to(rdt)
        C = patches.shape[-1]
        tokens = torch.cat(
            [
                self._special_tokens(self.camera_token, B, S, starts_stream),
                self._special_tokens(self.register_token, B, S, starts_stream).to(rdt),
                patches,
            ],
            dim=1,
        )
        P = tokens.shape[1]
        rope = None
        if self.rope is not None:
            rope = self.rope.table(H // self.patch_size, W // self.patch_size, self.patch_start_idx, self.head_dim,
                                   tokens.device)
        keep = set(range(self.depth)) if keep_layers is None else set(keep_layers)
        outputs: Dict[int, Tensor] = {}
        for i in range(self.depth):
            tokens = self.frame_blocks[i](tokens, rope=rope)
            frame_out = tokens
            attend = global_attend(i) if global_attend is not None else None
            tokens = self.global_blocks[i](tokens.view(B, S * P, C), rope=rope, attend=attend).view(B * S, P, C)
            if i in keep:
                outputs[i] = torch.cat([frame_out.view(B, S, P, C), tokens.view(B, S, P, C)], dim=-1)
        return outputs
