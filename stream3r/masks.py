"""Which frames may attend which: the "full", "causal" and "window" attention patterns.

Frame ``i`` (0-based position in the stream; frame 0 is the anchor) may attend frame ``j`` when

* ``full``:   always;
* ``causal``: ``j <= i``;
* ``window``: ``j <= i`` and (``j == 0`` or ``j >= i - window_size + 1``), i.e. the anchor plus
  frames ``max(1, i - window_size + 1) .. i`` (the released model's batch mask, default size 5).

Every function here is vectorised over frames (no Python loops) and works from integer frame
ids, so the same code builds the batch masks and the masks of a streaming step over cache slots.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

MODES = ("full", "causal", "window")
STREAM_MODES = ("causal", "window")


def check_mode(mode: str, window_size: int = 5, streaming: bool = False) -> None:
    """ValueError for an unknown mode or a window_size < 1."""
    allowed = STREAM_MODES if streaming else MODES
    if mode not in allowed:
        raise ValueError(f"unknown attention mode {mode!r}; expected one of {allowed}")
    if mode == "window":
        if isinstance(window_size, bool) or not isinstance(window_size, int):
            raise ValueError(f"window_size must be an int >= 1, got {window_size!r}")
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")


def frame_visibility(q_ids: Tensor, k_ids: Tensor, mode: str, window_size: int = 5) -> Optional[Tensor]:
    """Bool ``[len(q_ids), len(k_ids)]``: True where query frame may attend key frame.

    Returns None for ``full`` (no mask).  Negative key ids mark empty cache slots (never visible).
    """
    if mode == "full":
        return None
    q = q_ids.view(-1, 1)
    k = k_ids.view(1, -1)
    vis = (k <= q) & (k >= 0)
    if mode == "window":
        vis = vis & ((k == 0) | (k >= q - window_size + 1))
    elif mode != "causal":
        raise ValueError(f"unknown attention mode {mode!r}")
    return vis


def token_mask(frame_mask: Optional[Tensor], q_tokens_per_frame: int,
               k_tokens_per_frame: Optional[int] = None) -> Optional[Tensor]:
    """Expand a frame-level mask ``[Fq, Fk]`` to tokens ``[Fq*Pq, Fk*Pk]`` (frames laid end to end)."""
    if frame_mask is None:
        return None
    pq = q_tokens_per_frame
    pk = pq if k_tokens_per_frame is None else k_tokens_per_frame
    fq, fk = frame_mask.shape
    return frame_mask[:, None, :, None].expand(fq, pq, fk, pk).reshape(fq * pq, fk * pk)


def batch_mask(num_frames: int, tokens_per_frame: int, mode: str, window_size: int = 5, device=None) -> Optional[Tensor]:
    """Token mask for a batch forward over ``num_frames`` frames of ``tokens_per_frame`` tokens."""
    if mode == "full":
        return None
    ids = torch.arange(num_frames, device=device)
    return token_mask(frame_visibility(ids, ids, mode, window_size), tokens_per_frame)
