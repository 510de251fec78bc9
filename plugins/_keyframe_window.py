"""A sliding window of recent keyframes refined as a small SE(3) pose graph (GTSAM), for the rgbd frontend.

The rgbd frontend tracks each frame against one reference keyframe, so the pose of each new
keyframe inherits every error of the chain before it. DVO-SLAM's remedy, on an existing solver:
when a keyframe is added, it is also registered to a few other recent keyframes that see the same
place; the window's poses are then the least-squares solution of all these relative measurements
(each weighted by its information matrix, from the registration's correspondences) with the
keyframes that left the window held fixed. A keyframe measured against several others drifts less
than one measured against its predecessor only.

Poses are camera-to-world ``[4, 4]`` float64 (the frontend's internal world); a measurement
``Z_ij = inv(T_i) @ T_j`` with a ``[6, 6]`` information matrix in GTSAM's tangent order
(rotation, then translation), which is also Open3D's. Levenberg-Marquardt (GTSAM) does the
optimisation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class _Edge:
    i: int
    j: int
    Z: np.ndarray  # [4, 4] inv(T_i) @ T_j
    info: np.ndarray  # [6, 6]


@dataclass
class KeyframeWindow:
    """Keyframe poses (by id) and the relative measurements between them; :meth:`optimise` refines the window.

    Args:
        size: keyframes that move in an optimisation (the newest); older ones are held fixed.
    """

    size: int = 8
    poses: dict[int, np.ndarray] = field(default_factory=dict)
    edges: list[_Edge] = field(default_factory=list)
    order: list[int] = field(default_factory=list)

    def add(self, kid: int, pose: np.ndarray) -> None:
        self.poses[kid] = np.asarray(pose, dtype=np.float64).copy()
        self.order.append(kid)

    def measure(self, i: int, j: int, Z: np.ndarray, info: np.ndarray) -> None:
        """Record ``Z = inv(T_i) @ T_j`` with its information matrix (symmetrised, floored to stay definite)."""
        A = 0.5 * (np.asarray(info, dtype=np.float64) + np.asarray(info, dtype=np.float64).T)
        A = A + 1e-6 * np.eye(6) * max(1.0, float(np.trace(A)) / 6)
        self.edges.append(_Edge(i, j, np.asarray(Z, dtype=np.float64).copy(), A))

    def forget_before(self, keep: int) -> None:
        """Drop keyframes (and edges) older than the last ``keep`` (memory stays bounded)."""
        if len(self.order) <= keep:
            return
        old = set(self.order[:-keep])
        self.order = self.order[-keep:]
        for k in old:
            self.poses.pop(k, None)
        self.edges = [e for e in self.edges if e.i not in old and e.j not in old]

    def optimise(self, iterations: int = 20) -> Optional[dict[int, np.ndarray]]:
        """Refine the newest ``size`` keyframes; returns their new poses (None: nothing to refine)."""
        import gtsam

        movable = self.order[-self.size:]
        ids = {k for e in self.edges for k in (e.i, e.j) if k in self.poses}
        if not ids or not any(k in ids for k in movable[:-1] + movable[-1:]):
            return None
        graph = gtsam.NonlinearFactorGraph()
        values = gtsam.Values()
        fixed = [k for k in ids if k not in movable] or [min(ids, key=self.order.index)]
        tight = gtsam.noiseModel.Isotropic.Sigma(6, 1e-6)
        for k in ids:
            values.insert(k, gtsam.Pose3(self.poses[k]))
        for k in fixed:
            graph.add(gtsam.PriorFactorPose3(k, gtsam.Pose3(self.poses[k]), tight))
        for e in self.edges:
            if e.i in ids and e.j in ids:
                noise = gtsam.noiseModel.Gaussian.Information(e.info)
                graph.add(gtsam.BetweenFactorPose3(e.i, e.j, gtsam.Pose3(e.Z), noise))
        params = gtsam.LevenbergMarquardtParams()
        params.setMaxIterations(int(iterations))
        result = gtsam.LevenbergMarquardtOptimizer(graph, values, params).optimize()
        out = {}
        for k in ids:
            if k in fixed:
                continue
            T = np.asarray(result.atPose3(k).matrix(), dtype=np.float64)
            self.poses[k] = T
            out[k] = T
        return out
