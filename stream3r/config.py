"""Architecture configuration of STream3R (a small dataclass that round-trips through config.json)."""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

log = logging.getLogger(__name__)

# patch_embed kind -> (embed_dim, depth, num_heads) of the DINOv2 ViT
DINOV2_PRESETS: Dict[str, Tuple[int, int, int]] = {
    "dinov2_vitl14_reg": (1024, 24, 16),
    "dinov2_vitb14_reg": (768, 12, 12),
    "dinov2_vits14_reg": (384, 12, 6),
}
PATCH_EMBED_KINDS = tuple(DINOV2_PRESETS) + ("dinov2", "conv")

# keys the official config.json carries that do not describe the architecture
_IGNORED_KEYS = {"freeze"}


@dataclass
class STream3RConfig:
    """Architecture of a STream3R model.  The defaults are the released model.

    Attributes:
        img_size: training image size; sets the DINOv2 positional-embedding grid (img_size / patch).
        patch_size: ViT patch size (14).
        embed_dim: aggregator width (the DINOv2 width must equal it).
        depth: number of frame/global block pairs.
        num_heads: aggregator heads (head_dim = embed_dim / num_heads, a multiple of 4 for RoPE).
        mlp_ratio: aggregator MLP hidden ratio.
        num_register_tokens: register tokens (DINOv2 and aggregator).
        patch_embed: "dinov2_vitl14_reg" | "dinov2_vitb14_reg" | "dinov2_vits14_reg" (preset
            sizes), "dinov2" (sizes from dinov2_depth / dinov2_num_heads) or "conv".
        dinov2_depth, dinov2_num_heads: override the preset's depth / heads (small test models).
        rope_freq: 2D RoPE base frequency (0 disables RoPE).
        camera_trunk_depth, camera_num_heads, camera_mlp_ratio, camera_iterations: camera head.
        dpt_features, dpt_out_channels, dpt_intermediate_layers: both DPT heads.
    """

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    patch_embed: str = "dinov2_vitl14_reg"
    dinov2_depth: Optional[int] = None
    dinov2_num_heads: Optional[int] = None
    rope_freq: float = 100.0
    camera_trunk_depth: int = 4
    camera_num_heads: int = 16
    camera_mlp_ratio: float = 4.0
    camera_iterations: int = 4
    dpt_features: int = 256
    dpt_out_channels: Tuple[int, int, int, int] = (256, 512, 1024, 1024)
    dpt_intermediate_layers: Tuple[int, int, int, int] = (4, 11, 17, 23)

    def __post_init__(self) -> None:
        self.dpt_out_channels = tuple(int(c) for c in self.dpt_out_channels)
        self.dpt_intermediate_layers = tuple(int(i) for i in self.dpt_intermediate_layers)
        self.validate()

    # ------------------------------------------------------------------ derived
    def dinov2_sizes(self) -> Tuple[int, int]:
        """(depth, num_heads) of the DINOv2 patch embed."""
        if self.patch_embed in DINOV2_PRESETS:
            _, d, h = DINOV2_PRESETS[self.patch_embed]
        else:
            d, h = 0, 0
        return (self.dinov2_depth if self.dinov2_depth is not None else d,
                self.dinov2_num_heads if self.dinov2_num_heads is not None else h)

    @property
    def head_layers(self) -> Tuple[int, ...]:
        """Aggregator layers the heads read (DPT layers and the last layer)."""
        return tuple(sorted(set(self.dpt_intermediate_layers) | {self.depth - 1}))

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise ValueError(f"STream3R config: {msg}")

        for name in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "camera_trunk_depth",
                     "camera_num_heads", "camera_iterations", "dpt_features"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(f"{name} must be a positive int, got {v!r}")
        if self.num_register_tokens < 0:
            bad("num_register_tokens must be >= 0")
        if self.patch_embed not in PATCH_EMBED_KINDS:
            bad(f"unknown patch_embed {self.patch_embed!r}; expected one of {PATCH_EMBED_KINDS}")
        if self.embed_dim % self.num_heads:
            bad(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.rope_freq > 0 and (self.embed_dim // self.num_heads) % 4:
            bad(f"head_dim {self.embed_dim // self.num_heads} must be a multiple of 4 for 2D RoPE")
        if (2 * self.embed_dim) % self.camera_num_heads:
            bad(f"camera head width {2 * self.embed_dim} is not divisible by camera_num_heads {self.camera_num_heads}")
        if self.patch_embed in DINOV2_PRESETS and DINOV2_PRESETS[self.patch_embed][0] != self.embed_dim:
            bad(f"patch_embed {self.patch_embed} has width {DINOV2_PRESETS[self.patch_embed][0]} but embed_dim is "
                f"{self.embed_dim} (use patch_embed='dinov2' with dinov2_depth/dinov2_num_heads for other widths)")
        if self.patch_embed.startswith("dinov2"):
            d, h = self.dinov2_sizes()
            if d < 1 or h < 1:
                bad("patch_embed='dinov2' needs dinov2_depth >= 1 and dinov2_num_heads >= 1")
            if self.embed_dim % h:
                bad(f"embed_dim {self.embed_dim} is not divisible by dinov2_num_heads {h}")
        if self.img_size % self.patch_size:
            bad(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if len(self.dpt_out_channels) != 4 or len(self.dpt_intermediate_layers) != 4:
            bad("dpt_out_channels and dpt_intermediate_layers need 4 entries each")
        if any(not 0 <= i < self.depth for i in self.dpt_intermediate_layers):
            bad(f"dpt_intermediate_layers {self.dpt_intermediate_layers} must lie in [0, depth={self.depth})")
        if self.dpt_features % 2:
            bad("dpt_features must be even")

    # ------------------------------------------------------------------ io
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["dpt_out_channels"] = list(self.dpt_out_channels)
        d["dpt_intermediate_layers"] = list(self.dpt_intermediate_layers)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], overrides: Optional[Mapping[str, Any]] = None,
                  strict: bool = True) -> "STream3RConfig":
        """Build from a dict (e.g. config.json) plus ``overrides``.

        Unknown keys in ``overrides`` are always an error.  Unknown keys in ``data`` are an error
        when ``strict`` (else logged and ignored); the official file's non-architecture keys
        (``freeze``) are always ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(k for k in (overrides or {}) if k not in names)
        if bad:
            raise ValueError(f"STream3R config: unknown keys {bad}; known: {sorted(names)}")
        unknown = sorted(k for k in data if k not in names and k not in _IGNORED_KEYS)
        if unknown and strict:
            raise ValueError(f"STream3R config: unknown keys {unknown}; known: {sorted(names)}")
        if unknown:
            log.warning("STream3R config: ignoring unknown keys %s", unknown)
        merged = {k: v for k, v in data.items() if k in names}
        merged.update(overrides or {})
        return cls(**merged)
