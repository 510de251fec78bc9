"""A keyframe pose graph solved with GTSAM (SE(3) for metric RGB-D, Sim(3) when the scale is free).

Nodes are keyframes (their world transforms, ``[4, 4]`` float64, slam3r's convention
``x_world = s R x_cam + t``). Edges are relative measurements ``Z_ij = inv(T_i) @ T_j``:
odometry between consecutive keyframes (recorded once, when the newer keyframe is
added) and loop closures (from geometric verification), each with diagonal sigmas;
loop edges get a robust Huber kernel, so a wrong loop that slipped through the
verification pulls with a bounded (linear, not quadratic) force instead of bending the
whole map. Not Cauchy: with odometry sigmas that are too optimistic for the real drift
(always, for a monocular scale drift), Cauchy discards *true* loops that disagree with
the odometry by many sigmas (measured: a 20 % scale drift was 90 % undone by the robust
stage), while Huber keeps them; rejecting wrong loops is the verification's and the
drift gate's job. The first keyframe
is held by a tight prior (the gauge). Levenberg-Marquardt does the optimisation; no
hand-written solver. A robust kernel needs a start inside its basin -- a large drift
puts a true loop many sigmas away, where a redescending kernel gives it almost no weight -- so the
graph is solved twice: first with Gaussian loop edges (from the current poses), then
with the robust kernel from that solution.

GTSAM's ``Similarity3(R, t, s)`` maps ``p -> s (R p + t)``; the converters below
translate between that and slam3r's ``[[s R, t], [0, 1]]``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from slam3r_app.sim3 import sim3_scale

log = logging.getLogger("slam3r.loop_closure")


def _gtsam():
    try:
        import gtsam
    except ImportError as e:  # pragma: no cover - a dependency of slam3r
        raise ImportError(f"the loop_closure plugin needs GTSAM ({e}); install it with: pip install gtsam") from None
    return gtsam


def to_gtsam(T: np.ndarray, kind: str):
    """slam3r ``[4, 4]`` transform -> ``gtsam.Pose3`` (``se3``) or ``gtsam.Similarity3`` (``sim3``)."""
    g = _gtsam()
    T = np.asarray(T, dtype=np.float64)
    if kind == "se3":
        return g.Pose3(g.Rot3(T[:3, :3]), T[:3, 3].copy())
    s = sim3_scale(T)
    R = T[:3, :3] / s
    U, _, Vt = np.linalg.svd(R)
    R = U @ Vt
    return g.Similarity3(g.Rot3(R), T[:3, 3] / s, s)


def from_gtsam(X, kind: str) -> np.ndarray:
    """``gtsam.Pose3`` / ``gtsam.Similarity3`` -> slam3r ``[4, 4]`` transform."""
    if kind == "se3":
        return np.asarray(X.matrix(), dtype=np.float64)
    M = np.asarray(X.matrix(), dtype=np.float64)  # [[R, t], [0, 1/s]]
    s = 1.0 / M[3, 3]
    out = np.eye(4)
    out[:3, :3] = s * M[:3, :3]
    out[:3, 3] = s * M[:3, 3]
    return out


@dataclass
class Edge:
    """A relative measurement ``Z = inv(T_i) @ T_j`` between keyframes ``i`` and ``j``.

    ``sigmas``: rotation (rad, 3), translation (map units, 3) and, for Sim(3), log-scale (1).
    """

    i: int
    j: int
    Z: np.ndarray
    sigmas: np.ndarray
    kind: Literal["odometry", "loop"] = "odometry"
    robust: bool = False


@dataclass
class PoseGraph:
    """Keyframe nodes and edges; :meth:`optimize` returns new transforms for every node."""

    kind: Literal["se3", "sim3"] = "se3"
    robust_k: float = 3.0
    edges: list[Edge] = field(default_factory=list)

    def add_edge(self, edge: Edge) -> None:
        self.edges.append(edge)

    @property
    def loop_edges(self) -> list[Edge]:
        return [e for e in self.edges if e.kind == "loop"]

    def _noise(self, sigmas: np.ndarray, robust: bool):
        g = _gtsam()
        dim = 6 if self.kind == "se3" else 7
        s = np.asarray(sigmas, dtype=np.float64)[:dim]
        if len(s) < dim:
            raise ValueError(f"{self.kind} edges need {dim} sigmas, got {len(s)}")
        model = g.noiseModel.Diagonal.Sigmas(s)
        if robust:
            model = g.noiseModel.Robust.Create(g.noiseModel.mEstimator.Huber.Create(self.robust_k), model)
        return model

    def optimize(self, initial: dict[int, np.ndarray], anchor: int,
                 max_iterations: int = 100) -> tuple[dict[int, np.ndarray], dict[str, float]]:
        """Optimise from ``initial`` (``{keyframe: transform}``), holding ``anchor`` fixed.

        Only edges between nodes in ``initial`` are used. Returns the new transforms and
        ``{"error_before", "error_after", "iterations"}``.

        Raises:
            RuntimeError: GTSAM failed (indeterminate system, non-finite result).
        """
        g = _gtsam()
        values = g.Values()
        for k, T in initial.items():
            values.insert(int(k), to_gtsam(T, self.kind))
        before = None
        result, used, opt = values, 0, None
        for robust in (False, True) if any(e.robust for e in self.edges) else (False,):
            graph, used = self._graph(initial, anchor, robust)
            if before is None:
                before = graph.error(values)
            params = g.LevenbergMarquardtParams()
            params.setMaxIterations(int(max_iterations))
            try:
                opt = g.LevenbergMarquardtOptimizer(graph, result, params)
                result = opt.optimize()
            except RuntimeError as e:
                raise RuntimeError(f"GTSAM could not optimise the pose graph: {e}") from None
        after = graph.error(result)
        out = {int(k): from_gtsam(result.atPose3(int(k)) if self.kind == "se3" else result.atSimilarity3(int(k)),
                                  self.kind) for k in initial}
        if not all(np.all(np.isfinite(T)) for T in out.values()):
            raise RuntimeError("the pose graph optimisation returned non-finite poses")
        return out, {"error_before": float(before), "error_after": float(after),
                     "iterations": float(opt.iterations() if opt is not None else 0), "edges": float(used)}

    def _graph(self, initial: dict[int, np.ndarray], anchor: int, robust: bool):
        """The factor graph over ``initial``'s nodes; ``robust``: Huber on the edges marked robust."""
        g = _gtsam()
        graph = g.NonlinearFactorGraph()
        between = g.BetweenFactorPose3 if self.kind == "se3" else g.BetweenFactorSimilarity3
        prior = g.PriorFactorPose3 if self.kind == "se3" else g.PriorFactorSimilarity3
        dim = 6 if self.kind == "se3" else 7
        graph.add(prior(int(anchor), to_gtsam(initial[anchor], self.kind),
                        g.noiseModel.Diagonal.Sigmas(np.full(dim, 1e-6))))
        used = 0
        for e in self.edges:
            if e.i in initial and e.j in initial:
                graph.add(between(int(e.i), int(e.j), to_gtsam(e.Z, self.kind),
                                  self._noise(e.sigmas, e.robust and robust)))
                used += 1
        return graph, used
