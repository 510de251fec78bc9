"""The frontend interface: turns frames into per-frame estimates.

Frontends are plugins (hook ``slam3r_make_frontend``). The loop calls, per frame::

    estimate = frontend.track(frame)
    if not decision.keep:
        frontend.forget_last()     # drop the frame from the frontend's memory
    ...
    frontend.apply_correction(update, trajectory)   # after a pose correction (follows_corrections)

and ``frontend.close()`` at the end. With ``source.prefetch`` (file sources), the loop
calls ``frontend.prepare(frame)`` from a background thread ahead of ``track(frame)``.
The outer API follows DROID-SLAM's (``track(frame)`` ... ``terminate()``); see
:class:`slam3r_app.pipeline.Pipeline`.
"""
from __future__ import annotations

import abc
import contextlib
from typing import Any, ContextManager, Optional

from .timing import StageTimes
from .types import Estimate, Frame


class Frontend(abc.ABC):
    """Base class for frontends.

    Attributes:
        name: the config name (``stream3r``, ``rgbd``, ...).
        needs_depth: the frontend needs sensor depth in every frame.
        metric: poses and depth come out in metres.
        follows_corrections: the frontend re-anchors itself on the corrected trajectory
            (:meth:`apply_correction`) and keeps producing poses in the corrected world.
            When False, the core maps every new estimate through the world correction
            (see :mod:`slam3r_app.corrections`).
        timer: set by the pipeline; time sub-stages with ``with self.stage("model"):``
            (recorded as ``frontend.model`` in the run's timing summary).
    """

    name: str = "frontend"
    needs_depth: bool = False
    metric: bool = False
    follows_corrections: bool = False
    timer: Optional[StageTimes] = None

    def stage(self, name: str) -> ContextManager[None]:
        """Time a part of :meth:`track` as ``frontend.<name>`` (a no-op without a timer)."""
        if self.timer is None:
            return contextlib.nullcontext()
        return self.timer.stage(f"frontend.{name}")

    @property
    def prepares_ahead(self) -> bool:
        """Whether the loop should call :meth:`prepare` in its prefetch thread. Default: when
        :meth:`prepare` is overridden. A frontend computing on the CPU says False: the
        prefetch thread would take cores from it rather than overlap with a device."""
        return type(self).prepare is not Frontend.prepare

    def prepare(self, frame: Frame) -> None:
        """Optional CPU work for ``frame`` (decoding, resizing) that may run ahead of :meth:`track`.

        For file sources the loop calls this from its prefetch thread while the previous
        frame is being tracked (``source.prefetch``); it must only touch state that
        :meth:`track` reads back for the same ``frame.index`` (and be thread-safe with
        respect to it). :meth:`track` must work without it. Errors raised here are
        ignored: ``track`` redoes the work and reports them. Default: nothing.
        """

    @abc.abstractmethod
    def track(self, frame: Frame) -> Estimate:
        """Estimate pose, intrinsics and depth for ``frame`` (at ``frame``'s resolution)."""

    def forget_last(self) -> None:
        """Drop the newest tracked frame from the frontend's memory (keyframe policy).

        Afterwards the frontend behaves as if that frame had never been fed, except
        that its estimate was already returned. Default: nothing to forget.
        """

    def apply_correction(self, update: Any, trajectory: Any) -> None:
        """A pose correction was applied (only called when :attr:`follows_corrections`).

        Re-anchor on the corrected poses: read the current pose of the frames you
        track against from ``trajectory`` (a
        :class:`~slam3r_app.trajectory_store.TrajectoryStore`). ``update.frames`` holds
        relocalised frames (e.g. the last, lost one: continue from its new pose).
        """

    def reset(self) -> None:
        """Forget everything; the next frame starts a new map."""

    def stats(self) -> dict[str, Any]:
        """Small live statistics for the progress bar / viewer (``{"cache_frames": 12, ...}``)."""
        return {}

    def close(self) -> None:
        """Release models and devices."""
