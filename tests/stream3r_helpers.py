"""Shared by the STream3R model tests: a small seeded model whose every part matters, and a relative check."""
from __future__ import annotations

import torch

from stream3r import STream3R


def lively_model(config: dict, seed: int = 0) -> STream3R:
    """A small ``STream3R(**config)`` in eval mode, seeded, with LayerScales and tokens made large enough to
    matter (their defaults are ~0, which would hide mistakes in the blocks they scale)."""
    torch.manual_seed(seed)
    m = STream3R(**config).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.2, 0.6)
            elif name.endswith(("camera_token", "register_token")):
                p.normal_(0, 0.5)
    return m


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 2e-4) -> bool:
    """``max |a - b| / max |b| <= tol`` (relative to the reference's largest value)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) <= tol
