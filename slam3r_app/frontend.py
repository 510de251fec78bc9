"""The frontend interface: turns frames into per-frame estimates.

Frontends are plugins (hook ``slam3r_make_frontend``). The loop calls, per frame::

    estimate = frontend.track(frame)
    if not decision.keep:
        frontend.forget_last()     # drop the frame from the frontend's memory

and ``frontend.close()`` at the end. The outer API follows DROID-SLAM's
(``track(frame)`` ... ``terminate()``); see :class:`slam3r_app.pipeline.Pipeline`.
"""
from __future__ import annotations

import abc
from typing import Any

from .types import Estimate, Frame


class Frontend(abc.ABC):
    """Base class for frontends.

    Attributes:
        name: the config name (``stream3r``, ``rgbd``, ...).
        needs_depth: the frontend needs sensor depth in every frame.
        metric: poses and depth come out in metres.
    """

    name: str = "frontend"
    needs_depth: bool = False
    metric: bool = False

    @abc.abstractmethod
    def track(self, frame: Frame) -> Estimate:
        """Estimate pose, intrinsics and depth for ``frame`` (at ``frame``'s resolution)."""

    def forget_last(self) -> None:
        """Drop the newest tracked frame from the frontend's memory (keyframe policy).

        Afterwards the frontend behaves as if that frame had never been fed, except
        that its estimate was already returned. Default: nothing to forget.
        """

    def reset(self) -> None:
        """Forget everything; the next frame starts a new map."""

    def stats(self) -> dict[str, Any]:
        """Small live statistics for the progress bar / viewer (``{"cache_frames": 12, ...}``)."""
        return {}

    def close(self) -> None:
        """Release models and devices."""
