"""Building blocks of STream3R: attention (+ backends), RoPE, transformer block, patch embeds."""
from .attention import (
                        Attention,
                        attention,
                        attention_backend,
                        flash_attn_available,
                        get_attention_backend,
                        reference_attention,
                        sdpa_attention,
                        set_attention_backend,
)
from .block import Block, LayerScale, Mlp
from .patch_embed import DinoV2Encoder, PatchEmbed
from .rope import Rope2D, RopeTable

__all__ = [
    "Attention", "attention", "attention_backend", "flash_attn_available", "get_attention_backend",
    "reference_attention", "sdpa_attention", "set_attention_backend", "Block", "LayerScale", "Mlp",
    "DinoV2Encoder", "PatchEmbed", "Rope2D", "RopeTable",
]
