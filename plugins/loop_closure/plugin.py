"""Loop closure and relocalisation (plugin ``loop_closure``): place recognition, geometric
verification and a GTSAM pose graph; corrections go back to the core as ``PoseUpdate``.

Per keyframe (``slam3r_process_frame`` with ``estimate.is_keyframe``):

1. **Features**: ORB on the full-resolution frame, lifted to 3D with the estimate's depth
   (sensor depth for the rgbd frontend, predicted depth for STream3R), quantised into
   visual words (:mod:`.retrieval`, a shipped 1024-word vocabulary) and kept in
   the keyframe store (``context.keyframes[i].features["orb"]``, counted in its budget: the
   plugin keeps no copy, so a keyframe whose features the store drops is no longer a candidate).
2. **Odometry edge** to the previous keyframe: their relative transform when the newer one
   is added (what the frontend measured). Across a tracking loss the edge goes to the
   keyframe the frame was relocalised against; across a new rgbd segment it is a weak link.
3. **Retrieval** by appearance (tf-idf bag of words), skipping the newest ``exclude_recent``
   keyframes; candidates must score at least ``min_score`` and ``min_score_ratio`` x the score of
   the previous keyframe (DBoW's normalisation). Metric runs (``geometric``) also take candidates
   from the *pose prior* when appearance closed no loop: the ``pose_candidates`` older keyframes
   whose estimated viewpoint is nearest (view distance at most ``pose_max_view_distance``) and that
   lie at least ``pose_min_path`` of path away (a nearer one holds no drift worth a loop) -- what a
   low-texture scene needs, where ORB words retrieve nothing.
4. **Verification** (:mod:`.verification`): descriptor matches lifted with depth,
   3D-3D RANSAC (rigid for metric RGB-D, with scale for monocular depth), ICP on the
   keyframe store's depth, inlier / overlap / RMSE gates. Where ORB finds too few matches or
   inliers in a low-texture query (fewer than ``geo_fallback_features`` features with depth), and
   for the pose-prior candidates, the depth alone decides
   (:mod:`slam3r_plugins.global_registration`: FPFH + RANSAC, ICP from there and from the prior,
   overlap ``geo_min_overlap``, RMSE, a geometric-constraint gate against planes that let ICP
   slide, and a free-space check: at most ``geo_max_violation`` of each view may lie in space
   the other camera saw empty). Then a plausibility gate: the
   correction the loop implies must be explainable as drift accumulated between the two
   keyframes: a rotation of at most ``drift_base_deg + drift_rate_deg x path + drift_turn_rate x
   degrees turned``, and a shift of at most ``drift_base + drift_rate x path`` (path in median
   depths) plus what the correction's own rotation explains (a heading error grown along the path
   moves its end by about half the path times the angle). The path is the shortest route between
   the two keyframes through odometry steps and loops already accepted (a loop has length 0): once
   the second lap is tied to the first, little drift is left between them. Identical rooms 2 m
   apart, with no rotation between them, are not drift of a 2 m shift after a 6 m walk. With
   ``min_consistent`` > 1 a loop is accepted only after that many keyframes in a row each
   found a loop implying the same correction.
5. **Pose graph** (:mod:`.pose_graph`, GTSAM): keyframe nodes, odometry edges, loop edges with
   a robust Huber kernel; SE(3) when the estimates are metric, Sim(3) otherwise (scale
   drift of monocular frontends). Levenberg-Marquardt after every accepted loop; the
   optimised keyframe transforms go to the core as one ``PoseUpdate``.

Relocalisation: when a frame's tracking is lost (``estimate.status == "lost"``, e.g. the
rgbd frontend's motion guard rejected it), the same retrieval and verification run
against all keyframes; when ORB fails, metric runs try the frame's depth against the
keyframes whose viewpoint is nearest its last good pose, ``reloc_geometric_candidates`` a frame
and further out with every frame lost in a row (a pose found so must lie within
``reloc_max_view_distance`` + 0.5 per lost frame of that pose). On success a
``PoseUpdate(frames={i: pose})`` puts the frame back on the map (status ``relocalized``) and the
frontend continues from it. Relocalisation is always done on the frame loop's thread (it is what
the loop is waiting for).

Culling (``cull``): after its loops are searched, a keyframe whose place an older keyframe already
covers -- view distance at most ``cull_view_distance``, at least ``cull_overlap`` of its depth on
the older one's surface, at most ``cull_max_path`` of path (odometry and loops) between them, so
that the cover is not an artefact of drift -- gives its payload back to the keyframe store and
leaves retrieval; its node stays in the pose graph and its pose in the trajectory (frames anchored
to it follow corrections). An hour in one room then keeps the images, depth and features of the
room's distinct viewpoints, not of every minute.

Threads: with ``background: true`` (``auto``: live sources, and any run whose frontend computes on
a GPU, where the frame loop's thread must keep the device fed) keyframes are handed to a
worker thread that does steps 1-5 off the frame loop's critical path; the hook
``slam3r_propose_corrections`` only hands over finished updates, so a slow optimisation
never delays a frame. File sources with a CPU frontend run inline by default, so a run is repeatable.

A verification or optimisation that fails rejects the loop and logs why; the run never
stops because of it. Outputs: ``loops.json`` (counts first; ``rejections``: every rejection
counted under its name -- ``orb.few_matches``, ``geometry.free_space``, ``drift_gate.turn``, ... --
with ``rejection_meanings`` saying what each name means; then the accepted loops and
relocalisations with their statistics and which path verified them, and the first
``MAX_RECORDS`` rejected candidates with the gate that rejected each), metrics ``loops_accepted``,
``loop_candidates_rejected``, ``relocalizations``, ``pose_graph_optimizations``.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slam3r_app.hookspecs import hookimpl
from slam3r_app.signals import leave_signals_to_the_main_thread
from slam3r_app.sim3 import sim3_inverse, sim3_scale, strip_scale
from slam3r_app.types import PoseUpdate, TrackingStatus

from ..features import FrameFeatures, extract
from ..global_registration import REJECTIONS as GEOMETRY_REJECTIONS
from ..global_registration import (
    CloudCache,
    GlobalRegistrationOptions,
    depth_agreement,
    nearest_views,
    prepare,
    register,
    view_distance,
)
from .pose_graph import Edge, PoseGraph
from .retrieval import BowDatabase, Vocabulary
from .verification import REJECTIONS as ORB_REJECTIONS
from .verification import Verification, VerifyOptions, verify

log = logging.getLogger("slam3r.loop_closure")

SECTION = "loop_closure"
STATE_KEY = "_loop_closure"


class LoopClosureOptions(BaseModel):
    """``loop_closure:`` place recognition, loop verification, pose graph, relocalisation."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="detect loops and optimise the keyframe pose graph")
    kind: Literal["auto", "se3", "sim3"] = Field(
        "auto", description="pose graph: se3 (metric, rigid), sim3 (scale free); auto: se3 when the estimates are metric")
    background: Literal["auto", "on", "off"] = Field(
        "auto", description="run loop detection and optimisation in a worker thread; auto: on for live sources "
        "and for a frontend on a GPU")
    relocalize: bool = Field(True, description="recover lost frames against the keyframes")
    vocabulary: Optional[str] = Field(None, description="ORB vocabulary .npz (tools/train_orb_vocabulary.py); None: shipped")
    features: int = Field(1000, ge=100, le=10000, description="ORB features per keyframe")
    exclude_recent: int = Field(15, ge=1, description="newest keyframes never considered as loop candidates")
    candidates: int = Field(3, ge=1, le=20, description="candidates verified per keyframe, best score first")
    min_score: float = Field(0.05, ge=0, le=1, description="minimum tf-idf cosine similarity of a candidate")
    min_score_ratio: float = Field(
        0.3, ge=0, description="candidate score relative to the score of the previous keyframe (0: off)")
    min_inliers: int = Field(30, ge=6, description="RANSAC inliers a loop needs")
    min_inlier_ratio: float = Field(0.3, ge=0, le=1, description="RANSAC inliers / 3D matches")
    min_overlap: float = Field(0.35, ge=0, le=1, description="ICP fitness (overlap of the two views' depth)")
    max_rmse: float = Field(0.02, gt=0, description="ICP inlier RMSE, as a fraction of the median depth")
    drift_base: float = Field(0.1, ge=0, description="plausibility gate: translation correction allowed at zero path "
                                                     "length, in median depths")
    drift_rate: float = Field(0.05, ge=0, description="plausibility gate: extra translation correction per median "
                                                      "depth of path travelled between the two keyframes")
    drift_base_deg: float = Field(10.0, ge=0, description="plausibility gate: rotation correction at zero path, "
                                                          "degrees")
    drift_rate_deg: float = Field(4.0, ge=0, description="plausibility gate: extra degrees per median depth of path")
    drift_turn_rate: float = Field(0.15, ge=0, description="plausibility gate: extra rotation correction per degree "
                                                           "turned between the two keyframes (rotational drift)")
    drift_scale_base: float = Field(0.1, ge=0, description="sim3: |log scale| correction allowed at zero path")
    drift_scale_rate: float = Field(0.1, ge=0, description="sim3: extra |log scale| correction per median depth of "
                                                           "path (monocular scale drift)")
    min_consistent: int = Field(1, ge=1, le=5, description="keyframes in a row whose loops imply the same correction "
                                                           "before a loop is accepted")
    reloc_min_inliers: int = Field(40, ge=6, description="RANSAC inliers a relocalisation needs")
    reloc_candidates: int = Field(5, ge=1, le=50, description="keyframes tried per lost frame")
    odom_sigma_trans: float = Field(0.003, gt=0, description="odometry edge: translation sigma, fraction of median "
                                                             "depth, plus odom_sigma_trans_rate x step")
    odom_sigma_trans_rate: float = Field(0.02, ge=0, description="odometry edge: translation sigma per unit of step")
    odom_sigma_rot_deg: float = Field(0.2, gt=0, description="odometry edge: rotation sigma, degrees, plus 2 % of the turn")
    loop_sigma_trans: float = Field(0.01, gt=0, description="loop edge: translation sigma, fraction of median depth")
    loop_sigma_rot_deg: float = Field(0.5, gt=0, description="loop edge: rotation sigma, degrees")
    robust_k: float = Field(3.0, gt=0, description="Huber kernel width (whitened units) of loop edges")
    max_queue: int = Field(50, ge=1, description="background: keyframes waiting for the worker; beyond, the oldest "
                                                 "waiting one is only added to the graph, not searched for loops")
    geometric: bool = Field(
        True, description="metric (se3) runs: verify a candidate by its depth alone (FPFH + RANSAC + ICP, gated on "
                          "overlap) when ORB finds too few matches or inliers (low texture), and try the pose-prior "
                          "candidates that way")
    pose_candidates: int = Field(2, ge=0, le=10, description="loop candidates also from the pose prior: this many "
                                                             "earlier keyframes with the closest estimated viewpoint "
                                                             "(verified by geometry; 0: appearance only)")
    pose_max_view_distance: float = Field(1.0, gt=0, description="pose-prior candidates: at most this view distance "
                                                                 "(centres + look-at points apart, median depths)")
    pose_min_path: float = Field(3.0, ge=0, description="pose-prior candidates: at least this much path (median depths, "
                                                        "through odometry and loops) from the query: nearer ones hold "
                                                        "no drift worth a loop")
    geo_fallback_features: int = Field(150, ge=0, description="loops: a candidate that ORB rejects for too few "
                                                             "matches is tried by geometry only when the query "
                                                             "keyframe has fewer ORB features with depth than this "
                                                             "(low texture; relocalisation always tries)")
    geo_min_overlap: float = Field(0.5, ge=0, le=1, description="geometric verification: overlap of the query's depth "
                                                                "with the candidate's after ICP")
    geo_max_rmse: float = Field(0.5, gt=0, description="geometric verification: inlier RMSE after ICP, in voxels "
                                                       "(2 % of the median depth)")
    geo_min_constraint: float = Field(0.001, ge=0, description="geometric verification: smallest eigenvalue of the "
                                                               "point-to-plane normal equations (0: a plane or a "
                                                               "corridor that lets ICP slide)")
    geo_max_violation: float = Field(0.05, ge=0, le=1, description="geometric verification: at most this fraction "
                                                                   "of each view's depth may land in front of the "
                                                                   "other's surface (space that camera saw empty)")
    reloc_geometric_candidates: int = Field(3, ge=0, le=20, description="relocalisation by geometry: keyframes tried "
                                                                        "per lost frame, nearest to the last pose first "
                                                                        "and further out with every lost frame")
    reloc_max_view_distance: float = Field(2.0, gt=0, description="relocalisation by geometry: the pose found may be "
                                                                  "at most this view distance (median depths) from "
                                                                  "the last good pose, plus 0.5 per lost frame")
    cull: bool = Field(True, description="cull a keyframe whose place an older keyframe already covers (similar "
                                         "viewpoint, its depth seen again, little drift between them): its payload "
                                         "leaves the keyframe store and it is no longer a candidate; its pose stays")
    cull_view_distance: float = Field(0.1, ge=0, description="culling: at most this view distance (median depths) "
                                                             "from the covering keyframe")
    cull_overlap: float = Field(0.8, ge=0, le=1, description="culling: at least this fraction of the keyframe's depth "
                                                             "lands on the covering keyframe's surface")
    cull_max_path: float = Field(2.0, ge=0, description="culling: at most this much path (median depths, through "
                                                        "odometry and loops) between the two: no drift to hide")


@dataclass
class _KF:
    index: int
    feats: Optional[FrameFeatures]  # None: held by the keyframe store (see LoopCloser._features)
    words: np.ndarray
    median_depth: float
    path: float  # path length travelled up to this keyframe (map units)
    turn: float  # degrees turned up to this keyframe
    culled: bool = False  # covered by an older keyframe: no payload, never a candidate


@dataclass
class _Pending:
    """A verified loop waiting for consistency (``min_consistent``)."""

    cand: int
    query: int
    T: np.ndarray
    correction: np.ndarray
    stats: dict[str, Any]


@dataclass
class LoopCloserStats:
    keyframes: int = 0
    candidates_tried: int = 0
    rejected: int = 0
    rejected_implausible: int = 0
    accepted: int = 0
    relocalizations: int = 0
    reloc_failed: int = 0
    optimizations: int = 0
    optimization_failures: int = 0
    seconds: float = 0.0
    loops: list[dict[str, Any]] = field(default_factory=list)
    relocs: list[dict[str, Any]] = field(default_factory=list)
    implausible: list[dict[str, Any]] = field(default_factory=list)  # verified, rejected by the drift gate
    reasons: dict[str, int] = field(default_factory=dict)  # named rejection counters ("orb.few_matches", ...)
    geometric_loops: int = 0
    geometric_relocalizations: int = 0
    culled: int = 0
    rejected_candidates: list[dict[str, Any]] = field(default_factory=list)  # the first MAX_RECORDS, with why


MAX_RECORDS = 1000  # rejected candidates listed in loops.json (all are counted)
#: loops.json's explanation of every rejection counter
REJECTION_MEANINGS = {
    **{f"orb.{k}": v for k, v in ORB_REJECTIONS.items()},
    **{f"geometry.{k}": v for k, v in GEOMETRY_REJECTIONS.items()},
    "features_dropped": "the candidate's features were dropped by the keyframe store's budget (keyframe_store.max_memory_mb)",
    "drift_gate.shift": "verified, but the correction's shift is more than the drift the path between the two allows",
    "drift_gate.turn": "verified, but the correction's rotation is more than the drift the path allows",
    "drift_gate.scale": "verified, but the correction's scale change is more than the drift the path allows (sim3)",
    "geometry.free_space": "aligned, but too much of one view lies in space the other camera saw empty "
                           "(loop_closure.geo_max_violation): a wall matched onto a wall of a different place",
    "reloc.too_far": "relocalisation by geometry put the frame further from its last good pose than "
                     "reloc_max_view_distance (+0.5 per lost frame) allows",
}


class LoopCloser:
    """Place recognition + verification + pose graph for one run (thread-safe).

    Args:
        opts: the ``loop_closure:`` options.
        context: the run context (its ``trajectory`` and ``keyframes`` stores).
        kind: ``se3`` or ``sim3``.
    """

    def __init__(self, opts: LoopClosureOptions, context: Any, kind: str) -> None:
        self.opts = opts
        self.context = context
        self.kind = kind
        self.vocabulary = Vocabulary.load(opts.vocabulary)
        self.db = BowDatabase(len(self.vocabulary))
        self.graph = PoseGraph(kind=kind, robust_k=opts.robust_k)  # type: ignore[arg-type]
        self.kfs: dict[int, _KF] = {}
        self.order: list[int] = []
        self.stats = LoopCloserStats()
        self.lock = threading.RLock()
        self.pending: list[_Pending] = []
        self.dirty = False  # loops added since the last optimisation
        self.link_to: Optional[int] = None  # relocalised against this keyframe: the next keyframe links to it
        self.weak_link = False  # a new segment started: the next odometry edge is weak
        self.last_segment: Any = None
        self.anchor: Optional[int] = None
        self.adj: dict[int, list[tuple[int, float, float]]] = {}  # drift graph: odometry steps and loops
        self.unapplied_links: list[tuple[int, int]] = []
        self.clouds = CloudCache(64)  # keyframes' depth prepared for geometric verification
        self.lost_run = 0  # frames lost in a row (relocalisation widens its geometric search with it)

    # ------------------------------------------------------------------ helpers
    def _verify_opts(self, reloc: bool = False) -> VerifyOptions:
        o = self.opts
        return VerifyOptions(with_scale=self.kind == "sim3", min_inliers=o.reloc_min_inliers if reloc else o.min_inliers,
                             min_inlier_ratio=o.min_inlier_ratio, min_overlap=o.min_overlap, max_rmse=o.max_rmse)

    def _points(self, index: int) -> Optional[np.ndarray]:
        rec = self.context.keyframes.get(index)
        if rec is None or rec.depth is None:
            return None
        return rec.camera_points()[0]

    def _features(self, index: int) -> Optional[FrameFeatures]:
        """Keyframe ``index``'s ORB features: the keyframe store's copy (None once it dropped them
        for its budget), or the plugin's own without a store."""
        kf = self.kfs.get(index)
        if kf is not None and kf.feats is not None:
            return kf.feats
        rec = self.context.keyframes.get(index)
        return None if rec is None else rec.features.get("orb")

    def _reject(self, code: str, record: Optional[dict[str, Any]] = None) -> None:
        """Count a rejection under its name (:data:`REJECTION_MEANINGS`); keep the first records."""
        self.stats.reasons[code] = self.stats.reasons.get(code, 0) + 1
        if record is not None and len(self.stats.rejected_candidates) < MAX_RECORDS:
            self.stats.rejected_candidates.append({**record, "rejected_by": code})

    @property
    def geometric(self) -> bool:
        return bool(self.opts.geometric) and self.kind == "se3"

    def _geo_opts(self) -> GlobalRegistrationOptions:
        o = self.opts
        return GlobalRegistrationOptions(min_overlap=o.geo_min_overlap, max_rmse=o.geo_max_rmse,
                                         min_constraint=o.geo_min_constraint)

    def _cloud(self, index: int):
        """Keyframe ``index``'s depth prepared for global registration (cached), or None without depth."""
        def make():
            pts = self._points(index)
            return prepare(pts, self._geo_opts()) if pts is not None and len(pts) >= 30 else None
        return self.clouds.get(index, make)

    def _verify(self, cand: int, feats_q: Optional[FrameFeatures], q_points: Optional[np.ndarray],
                T_prior: Optional[np.ndarray], reloc: bool, by_pose: bool, record: dict[str, Any],
                q_image: Optional[tuple[np.ndarray, np.ndarray]] = None,
                q_cloud: Any = None) -> tuple[Optional[Verification], str]:
        """Verify candidate ``cand`` for a query: ORB first (appearance candidates), then the depth geometry
        when ORB finds too little (low texture) or for pose-prior candidates. ``T_prior``: the query's
        ``T_cq`` as the trajectory has it (a start for ICP); ``q_image``: the query's ``(depth, K)`` for the
        visibility check; ``q_cloud``: a callable giving the query's prepared cloud (built once).
        Returns ``(accepted verification or None, "orb" | "geometry")``; rejections are counted under
        their names."""
        c = self.kfs[cand]
        v: Optional[Verification] = None
        if not by_pose:
            c_feats = self._features(cand)
            if c_feats is None:
                self._reject("features_dropped", record)
            elif feats_q is not None:
                v = verify(feats_q, c_feats, q_points, self._points(cand), c.median_depth, self._verify_opts(reloc))
                if v.accepted:
                    return v, "orb"
                self._reject(f"orb.{v.code}", {**record, **v.stats})
                log.debug("candidate %d -> %s rejected by ORB: %s %s", cand, record.get("query"), v.reason, v.stats)
                if v.code not in ("few_matches", "few_inliers", "low_inlier_ratio"):
                    return None, "orb"  # ORB had enough to judge (and found a conflict): geometry must not overrule
                if not reloc and int(feats_q.valid3d().sum()) >= self.opts.geo_fallback_features:
                    return None, "orb"  # a textured view that ORB cannot match is another place: spare the time
        if not self.geometric or q_points is None or len(q_points) < 30:
            return None, "orb"
        tgt = self._cloud(cand)
        if tgt is None:
            return None, "geometry"
        src = q_cloud() if q_cloud is not None else prepare(q_points, self._geo_opts())
        g = register(src, tgt, self._geo_opts(), prior=T_prior)
        if not g.accepted:
            self._reject(f"geometry.{g.code}", {**record, **g.stats})
            log.debug("candidate %d -> %s rejected by geometry: %s %s", cand, record.get("query"), g.reason, g.stats)
            return None, "geometry"
        why = self._visibility(cand, q_points, g.transform, q_image, g.stats)
        if why:
            self._reject("geometry.free_space", {**record, **g.stats})
            log.debug("candidate %d -> %s rejected by geometry: %s %s", cand, record.get("query"), why, g.stats)
            return None, "geometry"
        return Verification(True, transform=g.transform, stats=dict(g.stats)), "geometry"

    def _visibility(self, cand: int, q_points: np.ndarray, T_cq: np.ndarray,
                    q_image: Optional[tuple[np.ndarray, np.ndarray]], stats: dict[str, Any]) -> str:
        """Why the alignment ``T_cq`` is refuted by what the two cameras saw ("" when it is not): more than
        ``geo_max_violation`` of each view's depth lands in front of the other's surface (in space that
        camera saw empty). Both directions must violate: something that moved between the two views (a
        person walking through) lies in the other's free space one way only -- seen the other way it is
        hidden behind the first view's surface -- while a wrong alignment violates both ways. Adds
        ``free_space_violation`` (the smaller of the two) and both fractions to ``stats``."""
        rec = self.context.keyframes.get(cand) if self.context.keyframes is not None else None
        if rec is None or rec.depth is None:
            return ""
        _, v1, _ = depth_agreement(q_points, T_cq, rec.depth, rec.intrinsics)
        v2 = 0.0
        if q_image is not None:
            c_points = self._points(cand)
            if c_points is not None and len(c_points):
                _, v2, _ = depth_agreement(c_points, sim3_inverse(T_cq), q_image[0], q_image[1])
        both = min(v1, v2) if q_image is not None else v1
        stats.update(free_space_violation=round(both, 4), free_space_query=round(v1, 4), free_space_candidate=round(v2, 4))
        if both > self.opts.geo_max_violation:
            return (f"{both:.0%} of each view lies in space the other camera saw empty "
                    f"(> {self.opts.geo_max_violation:.0%})")
        return ""

    # ------------------------------------------------------------------ keyframes
    def add_keyframe(self, index: int, rgb: np.ndarray, depth: Optional[np.ndarray], K: np.ndarray,
                     T_now: np.ndarray, segment: Any = None,
                     refs: Optional[dict[int, np.ndarray]] = None) -> Optional[PoseUpdate]:
        """Add a keyframe; returns a correction or None.

        Args:
            T_now: the keyframe's world transform when it was added.
            refs: ``{keyframe: transform}`` of the keyframes it may be linked to by odometry (the
                previous one, a relocalisation anchor), read at the same moment as ``T_now``
                (in background mode a correction may be applied before the worker gets here).
        """
        t0 = time.perf_counter()
        try:
            feats = extract(rgb, depth, K, n_features=self.opts.features)
            feats.words = self.vocabulary.quantize(feats.descriptors)
            valid = depth[np.isfinite(depth) & (depth > 0)] if depth is not None else np.zeros(0)
            md = float(np.median(valid)) if len(valid) else 0.0
            with self.lock:
                return self._add(index, feats, md, np.asarray(T_now, np.float64), segment, refs or {})
        finally:
            self.stats.seconds += time.perf_counter() - t0

    def _add(self, index: int, feats: FrameFeatures, md: float, T: np.ndarray, segment: Any,
             refs: dict[int, np.ndarray]) -> Optional[PoseUpdate]:
        prev = self.order[-1] if self.order else None
        path = turn = 0.0
        if prev is not None:
            ref_T = lambda k: refs[k] if k in refs else self._transform(k)  # noqa: E731
            Tp = ref_T(prev)
            step = float(np.linalg.norm(T[:3, 3] - Tp[:3, 3]))
            path = self.kfs[prev].path + step
            turn = self.kfs[prev].turn + self._turn_deg(sim3_inverse(Tp) @ T)
            new_segment = segment is not None and self.last_segment is not None and segment != self.last_segment
            if new_segment:
                self.weak_link = True
            src = self.link_to if self.link_to is not None and self.link_to in self.kfs else prev
            weak = self.weak_link and src == prev
            self.graph.add_edge(self._odometry_edge(src, index, ref_T(src), T, md or self.kfs[src].median_depth,
                                                    weak=weak))
            Ts = ref_T(src)
            self._link(src, index, float("inf") if weak else float(np.linalg.norm(T[:3, 3] - Ts[:3, 3])),
                       self._turn_deg(sim3_inverse(Ts) @ T))
            self.link_to = None
            self.weak_link = False
        else:
            self.anchor = index
        self.last_segment = segment
        kf = _KF(index, feats, feats.words, md, path, turn)
        if index in self.context.keyframes:
            self.context.keyframes.update_features(index, "orb", feats)
            kf.feats = None  # the store's copy, under its budget
        self.kfs[index] = kf
        candidates = self._candidates(kf, T) if md > 0 else []
        places = getattr(self.context, "places", None)
        if places is not None:  # the frontend's KV cache keeps (or brings back) this place's keyframes
            places.publish(index, [k for k, _, _ in candidates])
        self.order.append(index)
        self.db.add(index, feats.words)
        self.stats.keyframes += 1
        accepted = self._try_loops(kf, self._transform(index), candidates)
        update = None
        if accepted:
            self.dirty = True
            update = self.optimize(reason=f"loop {accepted[0]['candidate']} -> {index}")
        if self.opts.cull and md > 0:
            self._maybe_cull(kf)
        return update

    def _link(self, a: int, b: int, length: float, turn: float) -> None:
        """An undirected edge of the drift graph (odometry: the step's length and turn; loop: zero)."""
        self.adj.setdefault(a, []).append((b, length, turn))
        self.adj.setdefault(b, []).append((a, length, turn))

    def _drift_distance(self, a: int, b: int) -> tuple[float, float]:
        """``(path length, degrees turned)`` along the shortest route from ``a`` to ``b`` in the graph of
        odometry steps and accepted loops (a loop has length 0): how much unconstrained motion -- and so
        how much drift -- separates the two keyframes. Dijkstra on path length; inf when unconnected."""
        import heapq

        best = {a: 0.0}
        turn = {a: 0.0}
        heap = [(0.0, a)]
        while heap:
            d, u = heapq.heappop(heap)
            if u == b:
                return d, turn[u]
            if d > best.get(u, float("inf")):
                continue
            for v, length, tr in self.adj.get(u, ()):
                nd = d + length
                if nd < best.get(v, float("inf")):
                    best[v] = nd
                    turn[v] = turn[u] + tr
                    heapq.heappush(heap, (nd, v))
        return float("inf"), float("inf")

    def _transform(self, index: int) -> np.ndarray:
        return self.context.trajectory.transform(index)

    def _odometry_edge(self, i: int, j: int, Ti: np.ndarray, Tj: np.ndarray, md: float, weak: bool) -> Edge:
        o = self.opts
        Z = sim3_inverse(Ti) @ Tj
        step = float(np.linalg.norm(Z[:3, 3]))
        turn = float(np.arccos(np.clip((np.trace(Z[:3, :3] / sim3_scale(Z)) - 1) / 2, -1, 1)))
        st = o.odom_sigma_trans * md + o.odom_sigma_trans_rate * step
        sr = np.radians(o.odom_sigma_rot_deg) + 0.02 * turn
        ss = 0.005 + 0.02 * step / max(md, 1e-9)
        if weak:  # across a new segment: the relative pose is unknown
            st, sr, ss = 10.0 * max(md, 1.0), np.pi, 1.0
        return Edge(i, j, Z, np.array([sr] * 3 + [st] * 3 + [ss]), "odometry")

    def _drift_from(self, a: int) -> dict[int, float]:
        """Path length (map units) from keyframe ``a`` to every keyframe connected to it, along the
        shortest route through odometry steps and accepted loops (Dijkstra; see :meth:`_drift_distance`)."""
        import heapq

        best = {a: 0.0}
        heap = [(0.0, a)]
        while heap:
            d, u = heapq.heappop(heap)
            if d > best.get(u, float("inf")):
                continue
            for v, length, _ in self.adj.get(u, ()):
                nd = d + length
                if nd < best.get(v, float("inf")):
                    best[v] = nd
                    heapq.heappush(heap, (nd, v))
        return best

    def _candidates(self, kf: _KF, T_q: Optional[np.ndarray] = None) -> list[tuple[int, float, bool]]:
        """Loop candidates for a new keyframe, ``[(keyframe, score, by_pose)]``: by appearance (tf-idf, the
        score) and, for geometric verification, by the pose prior (the nearest older viewpoints far enough
        along the path; score = minus the view distance)."""
        o = self.opts
        recent = set(self.order[-(o.exclude_recent - 1):]) if o.exclude_recent > 1 else set()
        if len(self.order) < o.exclude_recent:
            return []
        culled = {k for k, v in self.kfs.items() if v.culled}
        found = self.db.query(kf.words, top_k=o.candidates, exclude=recent | culled, min_score=o.min_score)
        if o.min_score_ratio > 0 and self.order:
            ref = self.db.score_pair(kf.words, self.kfs[self.order[-1]].words)
            if ref > 0:
                found = [(k, s) for k, s in found if s >= o.min_score_ratio * ref]
        out = [(k, s, False) for k, s in found]
        if self.geometric and o.pose_candidates > 0 and T_q is not None and kf.median_depth > 0:
            path = self._drift_from(kf.index)
            md = kf.median_depth
            older = {k: self._transform(k) for k in self.order
                     if k not in recent and k not in culled and k != kf.index
                     and path.get(k, float("inf")) >= o.pose_min_path * md and k in self.context.trajectory}
            taken = {k for k, _, _ in out}
            near = nearest_views(T_q, older, md, k=o.pose_candidates + len(taken), max_distance=o.pose_max_view_distance)
            out += [(k, -d, True) for k, d in near if k not in taken][: o.pose_candidates]
        return out

    def _try_loops(self, kf: _KF, T_q: np.ndarray, candidates: list[tuple[int, float, bool]]) -> list[dict[str, Any]]:
        o = self.opts
        q_points = self._points(kf.index)
        feats_q = self._features(kf.index)
        rec = self.context.keyframes.get(kf.index) if self.context.keyframes is not None else None
        q_image = (rec.depth, rec.intrinsics) if rec is not None and rec.depth is not None else None
        accepted: list[dict[str, Any]] = []
        if feats_q is None and not self.geometric:
            return accepted
        for cand, score, by_pose in candidates:
            if by_pose and accepted:
                break  # appearance closed the loop: the pose prior adds nothing but time
            self.stats.candidates_tried += 1
            c = self.kfs[cand]
            T_c = self._transform(cand)
            record = {"query": kf.index, "candidate": cand, "candidate_from": "pose" if by_pose else "appearance",
                      "score": round(score, 4)}
            v, by = self._verify(cand, feats_q, q_points, sim3_inverse(T_c) @ T_q, False, by_pose, record, q_image,
                                 lambda: self._cloud(kf.index))
            if v is None:
                self.stats.rejected += 1
                continue
            implied = T_c @ v.transform  # where the loop puts the query keyframe
            correction = implied @ sim3_inverse(T_q)
            code, why = self._implausible(correction, T_q, c, kf)
            if why:
                self.stats.rejected += 1
                self.stats.rejected_implausible += 1
                self._reject(code, {**record, "verified_by": by, "why": why})
                if len(self.stats.implausible) < MAX_RECORDS:
                    self.stats.implausible.append({"candidate": cand, "query": kf.index, "verified_by": by, "why": why,
                                                   "transform": np.round(v.transform, 6).tolist()})
                log.info("loop %d -> %d verified (%s) but rejected: %s %s", cand, kf.index, by, why, v.stats)
                continue
            loop = {"candidate": cand, "query": kf.index, "verified_by": by,
                    "candidate_from": record["candidate_from"], "score": round(score, 4), **v.stats,
                    "correction_shift": round(float(np.linalg.norm((correction @ T_q)[:3, 3] - T_q[:3, 3])), 5),
                    "correction_turn_deg": round(self._turn_deg(correction), 3),
                    "transform": np.round(v.transform, 6).tolist()}  # T_cq: query camera -> candidate camera
            pend = _Pending(cand, kf.index, v.transform, correction, loop)
            if not self._consistent(pend):
                log.info("loop %d -> %d verified, waiting for %d consistent keyframes", cand, kf.index,
                         o.min_consistent)
                continue
            for p in self.pending:
                self._add_loop_edge(p)
            self.pending = []
            if by == "geometry":
                self.stats.geometric_loops += 1
            accepted.append(loop)  # go on: every verified candidate adds a constraint
        if not accepted and not candidates:
            self.pending = [p for p in self.pending if p.query in self.order[-o.min_consistent:]]
        return accepted

    def _consistent(self, pend: _Pending) -> bool:
        o = self.opts
        if o.min_consistent <= 1:
            self.pending = [pend]
            return True
        md = max(self.kfs[pend.cand].median_depth, 1e-9)
        keep = []
        for p in self.pending:
            D = pend.correction @ sim3_inverse(p.correction)
            if np.linalg.norm(D[:3, 3]) <= 0.05 * md and self._turn_deg(D) <= 2.0:
                keep.append(p)
        self.pending = keep + [pend]
        return len({p.query for p in self.pending}) >= o.min_consistent

    @staticmethod
    def _turn_deg(T: np.ndarray) -> float:
        R = T[:3, :3] / sim3_scale(T)
        return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))

    def _implausible(self, correction: np.ndarray, T_q: np.ndarray, c: _KF, q: _KF) -> tuple[str, str]:
        """``(rejection code, why)`` when the correction cannot be drift accumulated between ``c`` and ``q``
        (``("", "")`` if it can)."""
        o = self.opts
        md = max(c.median_depth, 1e-9)
        path, turned = self._drift_distance(c.index, q.index)
        if not np.isfinite(path):  # not connected (a new segment): no drift bound
            return "", ""
        path_md = path / md
        # the correction's effect at the query camera (rotation about the world origin is not drift)
        implied = correction @ T_q
        shift = float(np.linalg.norm(implied[:3, 3] - T_q[:3, 3])) / md
        turn = self._turn_deg(correction)
        allow_r = o.drift_base_deg + o.drift_rate_deg * path_md + o.drift_turn_rate * turned
        # a heading error that grew along the path displaces the end by up to about half the path times
        # the angle: the rotation this correction actually makes explains that much of its shift, no more
        allow_t = o.drift_base + o.drift_rate * path_md + 0.5 * path_md * np.radians(min(turn, 90.0))
        if self.kind == "sim3":  # likewise a scale drift grown along the path (monocular)
            allow_t += path_md * abs(float(np.log(sim3_scale(correction))))
        if shift > allow_t:
            return "drift_gate.shift", (f"implies a shift of {shift:.2f} median depths > {allow_t:.2f} allowed after "
                                        f"{path_md:.1f} of path")
        if turn > allow_r:
            return "drift_gate.turn", (f"implies a turn of {turn:.1f} deg > {allow_r:.1f} allowed after {path_md:.1f} "
                                       f"median depths of path")
        if self.kind == "sim3":
            ls = abs(np.log(sim3_scale(correction)))
            allow_s = o.drift_scale_base + o.drift_scale_rate * path_md
            if ls > allow_s:
                return "drift_gate.scale", f"implies a scale change of {np.exp(ls):.3f} > {np.exp(allow_s):.3f} allowed"
        return "", ""

    def _add_loop_edge(self, p: _Pending) -> None:
        o = self.opts
        md = self.kfs[p.cand].median_depth
        sig = np.array([np.radians(o.loop_sigma_rot_deg)] * 3 + [o.loop_sigma_trans * md] * 3 + [0.01])
        self.graph.add_edge(Edge(p.cand, p.query, p.T, sig, "loop", robust=True))
        self.unapplied_links.append((p.cand, p.query))  # shortens drift paths once an optimisation applied it
        self.stats.accepted += 1
        self.stats.loops.append(p.stats)
        log.info("loop closed: keyframe %d -> %d (%s inliers, overlap %s)", p.cand, p.query, p.stats.get("inliers"),
                 p.stats.get("icp_fitness"))

    # ------------------------------------------------------------------ optimisation
    def optimize(self, reason: str = "") -> Optional[PoseUpdate]:
        """Optimise the pose graph from the current keyframe transforms; a PoseUpdate or None."""
        with self.lock:
            snap = self.context.trajectory.snapshot()
            current = snap.keyframe_transforms()
            initial = {k: current[k] for k in self.order if k in current}
            if self.anchor not in initial or len(initial) < 2:
                return None
            try:
                new, info = self.graph.optimize(initial, anchor=self.anchor)
            except RuntimeError as e:
                self.stats.optimization_failures += 1
                log.warning("pose graph optimisation failed, loop kept for later: %s", e)
                return None
            self.stats.optimizations += 1
            self.dirty = False
            for a, b in self.unapplied_links:
                self._link(a, b, 0.0, 0.0)
            self.unapplied_links = []
            if self.kind == "se3":
                new = {k: strip_scale(T) for k, T in new.items()}
            log.info("pose graph (%s): %d keyframes, %d edges (%d loops), error %.4g -> %.4g in %d iterations",
                     self.kind, len(initial), int(info["edges"]), len(self.graph.loop_edges), info["error_before"],
                     info["error_after"], int(info["iterations"]))
            return PoseUpdate(keyframes=new, kind=self.kind, source=SECTION, reason=reason,  # type: ignore[arg-type]
                              based_on_revision=snap.revision, info={k: round(v, 6) for k, v in info.items()})

    # ------------------------------------------------------------------ relocalisation
    def relocalize(self, index: int, rgb: np.ndarray, depth: Optional[np.ndarray], K: np.ndarray,
                   prior: Optional[np.ndarray] = None) -> Optional[PoseUpdate]:
        """Place a lost frame on the map against the keyframes; a PoseUpdate for the frame or None.

        ORB first, against the best tf-idf candidates; when that fails and the run is metric, the
        frame's depth alone (FPFH + RANSAC + ICP) against the keyframes whose viewpoint is closest to
        ``prior`` (the frame's camera-to-world guess: the last good pose), further out with every frame
        lost in a row (``reloc_geometric_candidates`` per frame), and against the appearance candidates
        that ORB could not judge. A pose found by geometry must lie within ``reloc_max_view_distance``
        (+0.5 per lost frame) of the prior: geometry alone cannot tell identical places apart.
        """
        t0 = time.perf_counter()
        try:
            with self.lock:
                if not self.order or depth is None:
                    return None
                if float((depth > 0).mean()) < 0.05:
                    return None  # a blank or covered sensor: nothing to recognise
                self.lost_run += 1
                feats = extract(rgb, depth, K, n_features=self.opts.features)
                feats.words = self.vocabulary.quantize(feats.descriptors)
                live = [k for k in self.order if not self.kfs[k].culled]
                cands = self.db.query(feats.words, top_k=self.opts.reloc_candidates,
                                      exclude={k for k in self.order if self.kfs[k].culled})
                step = max(1, int(round(max(depth.shape) / 160)))
                d = depth[::step, ::step]
                Ks = K.copy()
                Ks[:2] /= step
                v_, u_ = np.nonzero(np.isfinite(d) & (d > 0))
                z = d[v_, u_].astype(np.float64)
                q_pts = np.stack([(u_ - Ks[0, 2]) * z / Ks[0, 0], (v_ - Ks[1, 2]) * z / Ks[1, 1], z], 1)
                enough_orb = int(feats.valid3d().sum()) >= self.opts.reloc_min_inliers
                tried: list[tuple[int, float, bool]] = [(c, s, False) for c, s in cands] if enough_orb else []
                if self.geometric and prior is not None and self.opts.reloc_geometric_candidates > 0:
                    md = float(np.median(z)) if len(z) else 1.0
                    n = self.opts.reloc_geometric_candidates
                    ring = nearest_views(prior, {k: self._transform(k) for k in live if k in self.context.trajectory},
                                         md, k=n * self.lost_run)
                    start = n * (self.lost_run - 1)
                    near = ring[start:] if start < len(ring) else ring[-n:]
                    tried += [(k, -dist, True) for k, dist in near[:n]]
                    if not enough_orb:  # ORB cannot judge anything: let geometry try the appearance candidates too
                        tried += [(c, s, True) for c, s in cands[:1]]
                memo: list[Any] = []

                def q_cloud():
                    if not memo:
                        memo.append(prepare(q_pts, self._geo_opts()))
                    return memo[0]

                best: Optional[tuple[float, int, float, dict[str, Any], Verification, np.ndarray]] = None
                for cand, score, by_pose in dict.fromkeys(tried):
                    record = {"query": index, "candidate": cand, "relocalisation": True,
                              "candidate_from": "pose" if by_pose else "appearance", "score": round(score, 4)}
                    T_prior = sim3_inverse(self._transform(cand)) @ prior if prior is not None else None
                    v, by = self._verify(cand, feats, q_pts, T_prior, True, by_pose, record, (d, Ks), q_cloud)
                    if v is None:
                        continue
                    X = strip_scale(self._transform(cand) @ v.transform)
                    if by == "orb":  # appearance and geometry agree: take it
                        return self._relocalised(index, cand, score, record, v, by, X)
                    md = self.kfs[cand].median_depth or 1.0
                    allow = self.opts.reloc_max_view_distance + 0.5 * (self.lost_run - 1)
                    dist = view_distance(prior, X, md) if prior is not None else 0.0
                    if dist > allow:
                        self._reject("reloc.too_far", {**record, "view_distance": round(dist, 3)})
                        continue
                    # geometry alone: try every candidate of this frame and keep the best evidence (in a room of
                    # planes a wall can fit the wrong wall; the true place overlaps more and violates less)
                    merit = float(v.stats.get("overlap", 0.0)) - 2.0 * float(v.stats.get("free_space_violation", 0.0))
                    if best is None or merit > best[0]:
                        best = (merit, cand, score, record, v, X)
                if best is not None:
                    _, cand, score, record, v, X = best
                    self.stats.geometric_relocalizations += 1
                    return self._relocalised(index, cand, score, record, v, "geometry", X)
                self.stats.reloc_failed += 1
                log.debug("relocalisation of frame %d failed (%d candidates)", index, len(tried))
                return None
        finally:
            self.stats.seconds += time.perf_counter() - t0

    def _relocalised(self, index: int, cand: int, score: float, record: dict[str, Any], v: Verification, by: str,
                     X: np.ndarray) -> PoseUpdate:
        self.stats.relocalizations += 1
        self.stats.relocs.append({"frame": index, "keyframe": cand, "verified_by": by,
                                  "candidate_from": record["candidate_from"], "score": round(score, 4),
                                  "lost_in_a_row": self.lost_run, **v.stats,
                                  "transform": np.round(v.transform, 6).tolist()})
        self.link_to = cand
        self.lost_run = 0
        log.info("frame %d relocalised against keyframe %d by %s (%s)", index, cand, by,
                 {k: v.stats.get(k) for k in ("inliers", "overlap", "icp_fitness") if k in v.stats})
        return PoseUpdate(frames={index: X}, kind="se3", source=SECTION,
                          based_on_revision=self.context.trajectory.revision,
                          reason=f"relocalised frame {index} against keyframe {cand} ({by})")

    # ------------------------------------------------------------------ culling
    def _maybe_cull(self, kf: _KF) -> None:
        """Cull the new keyframe when an older one already covers its place: a similar viewpoint
        (``cull_view_distance``), its depth landing on the older one's surface (``cull_overlap``), and
        little drift between the two (``cull_max_path`` along odometry and loops), so that the cover is
        real and not an artefact of drift. The older one stays (it holds the loops); the culled one keeps
        its node in the pose graph and its pose in the trajectory, loses its payload in the keyframe
        store, and is no longer a candidate for loops or relocalisation."""
        o = self.opts
        md = kf.median_depth
        T_q = self._transform(kf.index)
        path = self._drift_from(kf.index)
        near = {k: self._transform(k) for k, p in path.items()
                if k != kf.index and k in self.kfs and not self.kfs[k].culled and p <= o.cull_max_path * md}
        for cand, dist in nearest_views(T_q, near, md, k=3, max_distance=o.cull_view_distance):
            ov = self._covered(kf.index, cand, sim3_inverse(near[cand]) @ T_q)
            if ov is None or ov < o.cull_overlap:
                continue
            kf.culled = True
            kf.feats = None
            kf.words = np.zeros(0, np.int32)
            self.db.remove(kf.index)
            self.clouds.discard(kf.index)
            if self.context.keyframes is not None:
                self.context.keyframes.discard(kf.index)
            self.stats.culled += 1
            log.debug("keyframe %d culled: keyframe %d covers it (view distance %.2f, overlap %.2f)", kf.index, cand,
                      dist, ov)
            return

    def _covered(self, q: int, c: int, T_cq: np.ndarray) -> Optional[float]:
        """Fraction of keyframe ``q``'s depth points that land, through ``T_cq``, inside keyframe ``c``'s
        image on its surface (depth within 5 %); None without depth."""
        rec_q = self.context.keyframes.get(q) if self.context.keyframes is not None else None
        rec_c = self.context.keyframes.get(c) if self.context.keyframes is not None else None
        if rec_q is None or rec_c is None or rec_q.depth is None or rec_c.depth is None:
            return None
        pts = rec_q.camera_points(stride=2)[0].astype(np.float64)
        if len(pts) == 0:
            return None
        p = pts @ T_cq[:3, :3].T + T_cq[:3, 3]
        K = rec_c.intrinsics
        dc = rec_c.depth.astype(np.float32)
        h, w = dc.shape
        z = p[:, 2]
        ok = np.isfinite(p).all(axis=1) & (z > 1e-6)  # points behind the camera or not finite never hit
        zs = np.where(ok, z, 1.0)
        with np.errstate(invalid="ignore", over="ignore"):
            uf = np.round(K[0, 0] * np.where(ok, p[:, 0], 0.0) / zs + K[0, 2])
            vf = np.round(K[1, 1] * np.where(ok, p[:, 1], 0.0) / zs + K[1, 2])
        inside = ok & (uf >= 0) & (uf < w) & (vf >= 0) & (vf < h)  # tested in float: no overflow in the cast
        u = uf[inside].astype(np.int64)
        v = vf[inside].astype(np.int64)
        hit = np.zeros(len(p), bool)
        d = dc[v, u]
        hit[np.nonzero(inside)[0]] = (d > 0) & (np.abs(d - z[inside]) <= 0.05 * z[inside])
        return float(hit.mean())

    def summary(self) -> dict[str, Any]:
        """What ``loops.json`` holds: counts first, rejections by name with what each name means, then the
        accepted loops, the relocalisations and the rejected candidates (the first ``MAX_RECORDS``)."""
        s = self.stats
        rej = dict(sorted(s.reasons.items(), key=lambda kv: (-kv[1], kv[0])))
        return {"kind": self.kind, "keyframes": s.keyframes, "keyframes_culled": s.culled,
                "candidates_tried": s.candidates_tried, "loops_accepted": s.accepted,
                "loops_by_geometry": s.geometric_loops, "loop_candidates_rejected": s.rejected,
                "rejected_implausible": s.rejected_implausible, "relocalizations": s.relocalizations,
                "relocalizations_by_geometry": s.geometric_relocalizations,
                "relocalization_failures": s.reloc_failed, "pose_graph_optimizations": s.optimizations,
                "optimization_failures": s.optimization_failures, "seconds": round(s.seconds, 3),
                "rejections": rej, "rejection_meanings": {k: REJECTION_MEANINGS.get(k, "") for k in rej},
                "loops": s.loops, "relocs": s.relocs, "rejected_as_implausible": s.implausible,
                "rejected": s.rejected_candidates}


# ----------------------------------------------------------------------------- background worker
def _lower_thread_priority(niceness: int = 10) -> None:
    """Give the calling thread a lower CPU priority (Linux: per-thread nice), so that on a machine with
    few cores the frame loop keeps the CPU it needs; a no-op where the platform does not allow it."""
    import os

    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + niceness)
    except (AttributeError, OSError, PermissionError):  # pragma: no cover - other platforms
        pass

class _Worker:
    """Runs :meth:`LoopCloser.add_keyframe` off the frame loop; finished updates wait in ``outbox``."""

    def __init__(self, closer: LoopCloser, max_queue: int) -> None:
        self.closer = closer
        self.jobs: "queue.Queue[Optional[tuple]]" = queue.Queue()
        self.outbox: "queue.Queue[PoseUpdate]" = queue.Queue()
        self.max_queue = max_queue
        self.thread = threading.Thread(target=self._run, name="slam3r-loop-closure", daemon=True)
        self.thread.start()

    def submit(self, job: tuple) -> None:
        self.jobs.put(job)

    def _run(self) -> None:
        leave_signals_to_the_main_thread()
        _lower_thread_priority()
        while True:
            job = self.jobs.get()
            try:
                if job is None:
                    return
                up = self.closer.add_keyframe(*job)
                if up is not None:
                    self.outbox.put(up)
            except Exception as e:  # noqa: BLE001 - the worker thread must not die silently
                log.error("loop closure worker: %s: %s", type(e).__name__, e)
            finally:
                self.jobs.task_done()

    def drain(self) -> list[PoseUpdate]:
        out = []
        while True:
            try:
                out.append(self.outbox.get_nowait())
            except queue.Empty:
                return out

    def finish(self) -> None:
        self.jobs.put(None)
        self.thread.join()


@dataclass
class _State:
    closer: Optional[LoopCloser] = None
    worker: Optional[_Worker] = None
    outbox: list[PoseUpdate] = field(default_factory=list)
    background: bool = False
    kind: Optional[str] = None
    prev_keyframe: Optional[int] = None  # the last keyframe handed to the closer


def _state(context) -> _State:
    st = context.state.get(STATE_KEY)
    if st is None:
        st = context.state[STATE_KEY] = _State()
    return st


def _is_live(context) -> bool:
    info = getattr(context, "source_info", None) or {}
    return bool(info.get("live")) or str(getattr(context.config.run.source, "type", "")) == "camera"


def _gpu_frontend(context) -> bool:
    """The frontend computes on a GPU: the frame loop's thread should only feed the device (issue 23)."""
    return str(getattr(getattr(context, "frontend", None), "device", "cpu")).startswith("cuda")


# ----------------------------------------------------------------------------- hooks
@hookimpl
def slam3r_config_sections():
    return {SECTION: LoopClosureOptions}


@hookimpl
def slam3r_run_start(context):
    opts: LoopClosureOptions = context.options(SECTION)
    _shutdown(context)
    st = _state(context)
    st.background = opts.background == "on" or (opts.background == "auto"
                                                 and (_is_live(context) or _gpu_frontend(context)))
    if opts.enabled:
        Vocabulary.load(opts.vocabulary)  # a bad vocabulary path fails at the start, naming the file


def _closer(context, estimate) -> Optional[LoopCloser]:
    opts: LoopClosureOptions = context.options(SECTION)
    if not opts.enabled:
        return None
    st = _state(context)
    if st.closer is None:
        kind = opts.kind if opts.kind != "auto" else ("se3" if estimate.depth_is_metric else "sim3")
        st.closer = LoopCloser(opts, context, kind)
        st.kind = kind
        log.info("loop closure: %s pose graph, %s", kind, "background worker" if st.background else "inline")
        if st.background:
            st.worker = _Worker(st.closer, opts.max_queue)
    return st.closer


def _feature_depth(frame, estimate) -> Optional[np.ndarray]:
    """The depth features are lifted with: the sensor's for a metric frontend (all of its range,
    also beyond the tracker's ``depth_max``), else the estimate's where its confidence is above 0."""
    if estimate.depth_is_metric and frame.depth is not None and np.shape(frame.depth) == frame.rgb.shape[:2]:
        d = np.asarray(frame.depth, np.float32)
        return np.where(np.isfinite(d) & (d > 0), d, 0).astype(np.float32)
    if estimate.depth is None:
        return None
    d = np.asarray(estimate.depth, np.float32)
    if estimate.confidence is not None and np.shape(estimate.confidence) == d.shape:
        d = np.where(np.asarray(estimate.confidence) > 0, d, 0)
    return np.where(np.isfinite(d) & (d > 0), d, 0).astype(np.float32)


@hookimpl
def slam3r_process_frame(frame, estimate, context):
    closer = _closer(context, estimate)
    if closer is None:
        return
    st = _state(context)
    depth = _feature_depth(frame, estimate)
    K = np.asarray(estimate.intrinsics, np.float64)
    if estimate.status == TrackingStatus.LOST:
        if closer.opts.relocalize and depth is not None:
            prior = np.asarray(estimate.pose, np.float64) if estimate.pose is not None else None
            up = closer.relocalize(frame.index, frame.rgb, depth, K, prior=prior)
            if up is not None:
                st.outbox.append(up)
        return
    closer.lost_run = 0
    if not estimate.is_keyframe:
        return
    traj = context.trajectory
    T = traj.transform(frame.index)
    linked = [k for k in (st.prev_keyframe, closer.link_to) if k is not None and k in traj]
    refs = {k: traj.transform(k) for k in linked}
    st.prev_keyframe = frame.index
    segment = estimate.extras.get("segment")
    if st.worker is not None:
        st.worker.submit((frame.index, np.array(frame.rgb, copy=True), None if depth is None else depth.copy(), K, T,
                          segment, refs))
    else:
        up = closer.add_keyframe(frame.index, frame.rgb, depth, K, T, segment, refs)
        if up is not None:
            st.outbox.append(up)


@hookimpl
def slam3r_propose_corrections(context, final):
    st = context.state.get(STATE_KEY)
    if st is None or st.closer is None:
        return None
    if st.worker is not None:
        if final:
            st.worker.jobs.join()  # every keyframe handed over is searched and optimised
        st.outbox.extend(st.worker.drain())
    if final and st.closer.dirty:
        up = st.closer.optimize(reason="final optimisation")
        if up is not None:
            st.outbox.append(up)
    out, st.outbox = st.outbox, []
    return out or None


@hookimpl
def slam3r_reset(context):
    _shutdown(context)
    context.state.pop(STATE_KEY, None)


def _shutdown(context) -> None:
    st = context.state.get(STATE_KEY)
    if st is not None and st.worker is not None:
        st.worker.finish()
        st.worker = None


@hookimpl
def slam3r_run_end(result, context):
    st = context.state.get(STATE_KEY)
    if st is None or st.closer is None:
        return
    _shutdown(context)
    result.info["loop_closure"] = {k: v for k, v in st.closer.summary().items()
                                   if k not in ("loops", "relocs", "rejected_as_implausible", "rejected",
                                                "rejection_meanings")}


@hookimpl
def slam3r_export(result, context):
    st = context.state.get(STATE_KEY)
    if st is None or st.closer is None:
        return None
    return {"loops": str(context.out.write_json("loops.json", st.closer.summary()))}


@hookimpl
def slam3r_evaluate(result, context):
    st = context.state.get(STATE_KEY)
    if st is None or st.closer is None:
        return None
    s = st.closer.summary()
    return {"loops_accepted": s["loops_accepted"], "loop_candidates_rejected": s["loop_candidates_rejected"],
            "relocalizations": s["relocalizations"], "pose_graph_optimizations": s["pose_graph_optimizations"]}
