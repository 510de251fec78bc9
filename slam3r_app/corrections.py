"""Applying pose corrections at frame boundaries, and the world correction of frontends.

Backends propose :class:`~slam3r_app.types.PoseUpdate` objects through the hook
``slam3r_propose_corrections`` (polled after every frame's backends, and once more
with ``final=True`` before the run ends). :class:`CorrectionApplier` applies each to
the trajectory store, re-anchors the frontend, and broadcasts ``slam3r_poses_updated``.
A correction that does not fit the trajectory (unknown keyframe, non-finite or
scaled-where-rigid transform) is rejected with a warning naming the plugin; the run
never stops because of one.

Frontends and corrections. A frontend with ``follows_corrections = True`` (the rgbd
frontend) re-anchors itself in :meth:`Frontend.apply_correction` and keeps producing
poses in the corrected world. Any other frontend (STream3R) keeps its own world; the
applier then maps each of its new estimates through the *world correction* ``C``
(a Sim(3), identity until the first correction): ``pose <- strip(C @ pose)``,
``depth <- s * depth``, ``points <- C @ points`` with ``s = scale(C)``. After each
correction ``C <- delta_k @ C``, where ``delta_k = new @ inv(old)`` is the correction of
the newest keyframe -- the part of the map the frontend is looking at.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from .sim3 import sim3_scale, strip_scale, transform_points
from .types import Estimate, PoseUpdate

if TYPE_CHECKING:  # pragma: no cover
    from .context import RunContext

log = logging.getLogger("slam3r")

MAX_LOGGED = 200  # corrections listed in summary.json (the count is always exact)


def _flatten(results: Iterable[tuple[str, Any]]) -> list[tuple[str, PoseUpdate]]:
    out = []
    for name, res in results:
        items = res if isinstance(res, (list, tuple)) else [res]
        for u in items:
            if isinstance(u, PoseUpdate):
                out.append((name, u))
            elif u is not None:
                log.warning("plugin '%s' proposed a %s, not a PoseUpdate: ignored", name, type(u).__name__)
    return out


class CorrectionApplier:
    """Owns the frame-boundary application of corrections for one run (``Pipeline.corrections``).

    Args:
        context: the run context (its ``trajectory``, ``host`` and ``frontend``).
    """

    def __init__(self, context: "RunContext") -> None:
        self.context = context
        self.world = np.eye(4)  # C: a non-following frontend's world -> the app's world (Sim(3))
        self.applied = 0
        self.rejected = 0
        self.scale_updates = 0
        self.log: list[dict[str, Any]] = []

    def reset(self) -> None:
        self.world = np.eye(4)

    # ------------------------------------------------------------------ estimates
    def map_estimate(self, estimate: Estimate) -> None:
        """Bring a non-following frontend's estimate into the corrected world (in place)."""
        C = self.world
        if np.array_equal(C, np.eye(4)):
            return
        s = sim3_scale(C)
        estimate.pose = strip_scale(C @ np.asarray(estimate.pose, dtype=np.float64))
        if abs(s - 1.0) > 1e-12:
            if estimate.depth is not None:
                estimate.depth = (np.asarray(estimate.depth) * np.float32(s)).astype(np.float32)
        if estimate.points is not None:
            estimate.points = transform_points(C, estimate.points)
        estimate.extras["world_correction_scale"] = s

    # ------------------------------------------------------------------ corrections
    def collect(self, final: bool = False) -> list[PoseUpdate]:
        """Ask every plugin for ready corrections and apply them; returns the applied ones."""
        return self._apply_all("slam3r_propose_corrections", final=final)

    def refine(self) -> list[PoseUpdate]:
        """End of the stream: ask every plugin for a refinement of the whole trajectory and apply it."""
        return self._apply_all("slam3r_refine_trajectory")

    def _apply_all(self, hook: str, **kwargs: Any) -> list[PoseUpdate]:
        proposals = _flatten(self.context.host.call(hook, context=self.context, **kwargs))
        return [u for name, u in proposals if self.apply(u, source=name)]

    def apply(self, update: PoseUpdate, source: str = "") -> bool:
        """Apply one correction now: store, frontend, broadcast. False if it was rejected."""
        ctx = self.context
        traj = ctx.trajectory
        update.source = update.source or source
        latest = traj.last_keyframe()
        try:
            traj.apply(update)
        except (KeyError, ValueError) as e:
            self.rejected += 1
            log.warning("pose correction from '%s' rejected (%s): %s", update.source or "?", update.reason or "no reason",
                        e)
            return False
        if update.scale is not None and not update.keyframes and not update.frames:
            self.scale_updates += 1  # the world's scale only: no pose moved, the frontend's world is the same
            log.debug("world scale %.6g (%s) from '%s', trajectory revision %d", update.scale.value,
                      update.scale.provenance.value, update.source or "?", update.revision)
            ctx.host.call("slam3r_poses_updated", update=update, context=ctx)
            return True
        self.applied += 1
        fe = ctx.frontend
        if fe is not None and getattr(fe, "follows_corrections", False):
            try:
                fe.apply_correction(update, traj)
            except Exception as e:  # noqa: BLE001 - plugin code: a frontend bug must not lose the run
                log.error("frontend '%s' failed to follow the correction: %s: %s", getattr(fe, "name", "?"),
                          type(e).__name__, e)
        elif latest is not None:
            self.world = update.delta(latest) @ self.world
        moves = [float(np.linalg.norm(new[:3, 3] - old[:3, 3])) for old, new in update.moved.values()]
        log.info("pose correction %d from '%s'%s: %d keyframes and %d frames moved (largest shift %.4g), "
                 "trajectory revision %d", self.applied, update.source or "?",
                 f" ({update.reason})" if update.reason else "", len(update.moved), len(update.frames),
                 max(moves, default=0.0), update.revision)
        if len(self.log) < MAX_LOGGED:
            self.log.append({"revision": update.revision, "source": update.source, "reason": update.reason,
                             "kind": update.kind, "keyframes_moved": len(update.moved),
                             "frames_set": len(update.frames), "max_shift": max(moves, default=0.0),
                             "frame": traj.last_index()})
        ctx.host.call("slam3r_poses_updated", update=update, context=ctx)
        return True

    def summary(self) -> dict[str, Any]:
        return {"applied": self.applied, "rejected": self.rejected, "scale_updates": self.scale_updates,
                "scale": self.context.trajectory.world_scale.to_json(), "log": self.log}
