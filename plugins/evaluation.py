"""Trajectory evaluation with evo (plugin ``evaluation``; optional extra ``slam3r[eval]``).

The upstream STream3R protocol, computed by evo itself:

* ATE: ``main_ape.ape(ref, est, PoseRelation.translation_part, align=True,
  correct_scale=True)`` -> RMSE of the translation error after Sim(3) Umeyama
  alignment (scale corrected);
* RPE translation / rotation (degrees): ``main_rpe.rpe(ref, est,
  PoseRelation.translation_part / rotation_angle_deg, delta=1,
  delta_unit=Unit.frames, rel_delta_tol=0.01, all_pairs=True, align=True,
  correct_scale=True)`` -> RMSE over consecutive frames.

Also, for metric frontends (``rgbd``), whose scale is part of what is measured:

* ATE SE(3) (``ate_se3``): ``main_ape.ape(..., align=True, correct_scale=False)``
  -> RMSE of the translation error after a rigid alignment, no scale: a
  trajectory twice too large has ``ate`` 0 but not ``ate_se3``. It equals
  ``evo_ape tum GT EST -a``.
* RPE translation SE(3) (``rpe_trans_se3``): the same RPE with ``correct_scale=False``
  (a relative error needs no rigid alignment) -> the frame-to-frame error in metres as the
  sensor measured it; ``rpe_trans`` is scaled by the Sim(3) fit, so an estimate whose fitted
  scale is 0.7 shows 0.7 of its relative error there. It equals ``evo_rpe tum GT EST --delta 1
  --delta_unit f --all_pairs``.

Poses are paired by timestamp exactly as ``evo_ape tum`` / ``evo_rpe tum`` do
(nearest time, ``max_diff`` 0.01 s), or by index. The numbers equal
``evo_ape tum GT EST -as`` and ``evo_rpe tum GT EST -as --delta 1 --delta_unit f
--all_pairs`` (``-r angle_deg`` for rotation) on the same files.

evo is GPL-3.0 and optional: this is the only module of slam3r that imports it,
and only inside functions.

Run hook: with ground truth (the source's per-frame GT poses, or the file in
``evaluation.gt``) returns ``{"ate", "rpe_trans", "rpe_rot", "num_poses",
"alignment": "sim3", "scale", "ate_se3", "rpe_trans_se3", ...}`` for metrics.json and writes ``trajectory.png``.

Command: ``run_slam.py eval --gt GT --est EST [--json FILE] [--plot FILE]
[--max-diff 0.01] [--match auto|timestamp|index]``; GT may be a TUM file or a
Sintel ``camdata_left/<sequence>`` folder of ``.cam`` files.
"""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slam3r_app.errors import EvaluationError, SourceError
from slam3r_app.hookspecs import hookimpl
from slam3r_app.io import atomic_path, write_json
from slam3r_app.trajectory import check_poses, read_tum

log = logging.getLogger("slam3r.evaluation")

SECTION = "evaluation"
INSTALL_HINT = "pip install 'slam3r[eval]'"
MIN_POSES = 3


class EvaluationOptions(BaseModel):
    """``evaluation:`` trajectory metrics against ground truth (needs evo: pip install 'slam3r[eval]')."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="compute ATE / RPE when ground truth is available")
    gt: Optional[str] = Field(
        None, description="ground-truth file (TUM) or Sintel camdata_left folder; default: the source's GT poses")
    match: Literal["auto", "timestamp", "index"] = Field(
        "auto", description="pair poses by timestamp (evo's nearest-time sync) or by index; auto: by frame index "
                            "for the source's GT and Sintel folders, by timestamp for TUM files (by index when no "
                            "timestamps pair and the lengths are equal)")
    max_diff: float = Field(0.01, gt=0, description="max timestamp difference when pairing by timestamp, seconds")
    poses: Literal["all", "keyframes"] = Field("all", description="evaluate every frame or keyframes only")
    plot: bool = Field(True, description="write trajectory.png (aligned trajectories, error over time)")


# ----------------------------------------------------------------------------- evo access
def _evo():
    """Import the parts of evo used here, or fail with the install hint."""
    try:
        import evo
        import evo.main_ape as main_ape
        import evo.main_rpe as main_rpe
        from evo.core import metrics, sync
        from evo.core.trajectory import PoseTrajectory3D
    except ImportError as e:
        import importlib.util

        try:
            present = importlib.util.find_spec("evo") is not None
        except (ImportError, ValueError):
            present = False
        if present:  # installed, but it (or one of its dependencies) fails to import
            raise EvaluationError(
                f"trajectory evaluation needs evo, which is installed but cannot be imported ({type(e).__name__}: "
                f"{e}); a dependency of evo at a version it does not support? reinstall with: {INSTALL_HINT}"
            ) from None
        raise EvaluationError(
            f"trajectory evaluation needs evo, which is not installed ({e}); install it with: {INSTALL_HINT}"
        ) from None
    return evo, main_ape, main_rpe, metrics, sync, PoseTrajectory3D


# ----------------------------------------------------------------------------- reading
def load_trajectory(path: str | os.PathLike, what: str) -> tuple[np.ndarray, np.ndarray, str]:
    """A TUM file or a Sintel .cam folder -> ``(timestamps, c2w poses, kind)``; kind is ``tum`` or ``sintel``."""
    p = Path(path)
    if p.is_dir():  # a Sintel camdata folder: read by the dataset package (its one .cam reader)
        from slam3r_datasets import read_cam_trajectory

        stamps, poses = read_cam_trajectory(p)
        return stamps, poses, "sintel"
    if not p.exists():
        raise SourceError(f"{what} not found: {p}")
    stamps, poses = read_tum(p, what=what)
    return stamps, poses, "tum"


# ----------------------------------------------------------------------------- evaluation
@dataclass
class Evaluation:
    """Metrics and the paired, aligned trajectories (for plots)."""

    metrics: dict[str, Any]
    timestamps: np.ndarray
    gt_xyz: np.ndarray
    est_xyz_aligned: np.ndarray
    errors: np.ndarray  # per-pose translation error after alignment
    info: dict[str, Any] = field(default_factory=dict)


_PAIRING_TAG = "timestamp pairing"


def _pairing_failed(e: EvaluationError) -> bool:
    return _PAIRING_TAG in str(e)


def _span(stamps: np.ndarray) -> str:
    return f"{len(stamps)} poses, t = {stamps.min():.3f} .. {stamps.max():.3f}" if len(stamps) else "no poses"


def evaluate_trajectories(
    gt_stamps: np.ndarray,
    gt_poses: np.ndarray,
    est_stamps: np.ndarray,
    est_poses: np.ndarray,
    match: Literal["timestamp", "index", "auto"] = "timestamp",
    max_diff: float = 0.01,
    gt_name: str = "ground truth",
    est_name: str = "estimate",
) -> Evaluation:
    """ATE / RPE of ``est`` against ``gt`` with the upstream protocol (see the module doc).

    ``match="auto"`` pairs by timestamp (as evo's command line does) and, when that
    pairs fewer than 3 poses but both trajectories have the same length, by index
    (as the upstream evaluation does for equal lengths); ``info["note"]`` says so.

    Raises:
        EvaluationError: no common timestamps, fewer than 3 pairs, NaN or
            non-orthonormal poses, different lengths when matching by index, a
            trajectory that does not move (alignment undefined), or evo missing.
    """
    if match == "auto":
        try:
            return evaluate_trajectories(gt_stamps, gt_poses, est_stamps, est_poses, "timestamp", max_diff,
                                         gt_name, est_name)
        except EvaluationError as e:
            if not _pairing_failed(e) or len(gt_poses) != len(est_poses):
                raise
            ev = evaluate_trajectories(gt_stamps, gt_poses, est_stamps, est_poses, "index", max_diff,
                                       gt_name, est_name)
            ev.info["note"] = (f"timestamps did not pair ({e}); both have {len(gt_poses)} poses, so they were "
                               f"paired by index, as the upstream evaluation does")
            return ev
    _, main_ape, main_rpe, metrics, sync, PoseTrajectory3D = _evo()
    gt_stamps = np.asarray(gt_stamps, dtype=np.float64).reshape(-1)
    est_stamps = np.asarray(est_stamps, dtype=np.float64).reshape(-1)
    gt_poses = check_poses(np.asarray(gt_poses, dtype=np.float64), gt_name)
    est_poses = check_poses(np.asarray(est_poses, dtype=np.float64), est_name)
    for stamps, poses, name in ((gt_stamps, gt_poses, gt_name), (est_stamps, est_poses, est_name)):
        if len(stamps) != len(poses):
            raise EvaluationError(f"{name}: {len(stamps)} timestamps but {len(poses)} poses")
        if not np.isfinite(stamps).all():
            raise EvaluationError(f"{name}: NaN or inf timestamp")
        if len(poses) < MIN_POSES:
            raise EvaluationError(f"{name} has {len(poses)} poses; evaluation needs at least {MIN_POSES}")
    if match == "index":
        if len(gt_poses) != len(est_poses):
            raise EvaluationError(
                f"{gt_name} has {len(gt_poses)} poses but {est_name} has {len(est_poses)}: matching by index "
                f"needs the same number of poses (or match by timestamp)")
        ref = PoseTrajectory3D(poses_se3=list(gt_poses), timestamps=gt_stamps.copy())
        est = PoseTrajectory3D(poses_se3=list(est_poses), timestamps=gt_stamps.copy())
    elif match == "timestamp":
        ref_full = PoseTrajectory3D(poses_se3=list(gt_poses), timestamps=gt_stamps)
        est_full = PoseTrajectory3D(poses_se3=list(est_poses), timestamps=est_stamps)
        try:
            ref, est = sync.associate_trajectories(ref_full, est_full, max_diff=max_diff)
        except sync.SyncException:
            raise EvaluationError(
                f"no common timestamps between {gt_name} ({_span(gt_stamps)}) and {est_name} "
                f"({_span(est_stamps)}) within {max_diff} s; are both in the same clock (or match by index)? "
                f"({_PAIRING_TAG})"
            ) from None
    else:
        raise EvaluationError(f"unknown match mode {match!r} (timestamp or index)")
    n = ref.num_poses
    if n < MIN_POSES:
        raise EvaluationError(
            f"only {n} poses of {est_name} have a {gt_name} pose within {max_diff} s; evaluation needs at least "
            f"{MIN_POSES} ({_PAIRING_TAG})")
    if np.ptp(est.positions_xyz, axis=0).max() <= 1e-12 or np.ptp(ref.positions_xyz, axis=0).max() <= 1e-12:
        who = est_name if np.ptp(est.positions_xyz, axis=0).max() <= 1e-12 else gt_name
        raise EvaluationError(f"{who}: all {n} positions are the same; a Sim(3) alignment is undefined")

    from evo import EvoException

    try:
        aligned = copy.deepcopy(est)
        _, _, scale = aligned.align(ref, correct_scale=True)
        ate = main_ape.ape(copy.deepcopy(ref), copy.deepcopy(est), pose_relation=metrics.PoseRelation.translation_part,
                           align=True, correct_scale=True)
        ate_se3 = main_ape.ape(copy.deepcopy(ref), copy.deepcopy(est),
                               pose_relation=metrics.PoseRelation.translation_part, align=True, correct_scale=False)
        rpe_kw = dict(delta=1, delta_unit=metrics.Unit.frames, rel_delta_tol=0.01, all_pairs=True, align=True,
                      correct_scale=True)
        rpe_t = main_rpe.rpe(copy.deepcopy(ref), copy.deepcopy(est),
                             pose_relation=metrics.PoseRelation.translation_part, **rpe_kw)
        rpe_r = main_rpe.rpe(copy.deepcopy(ref), copy.deepcopy(est),
                             pose_relation=metrics.PoseRelation.rotation_angle_deg, **rpe_kw)
        rpe_t_se3 = main_rpe.rpe(copy.deepcopy(ref), copy.deepcopy(est),
                                 pose_relation=metrics.PoseRelation.translation_part,
                                 **{**rpe_kw, "align": False, "correct_scale": False})
    except (EvoException, np.linalg.LinAlgError) as e:
        if "degenerate" in str(e).lower():
            raise EvaluationError(
                f"cannot align {est_name} to {gt_name}: the {n} paired positions are (nearly) collinear, so a "
                f"Sim(3) Umeyama alignment is undefined (evo: {e})") from None
        raise EvaluationError(f"evo could not evaluate {est_name} against {gt_name}: {type(e).__name__}: {e}") from None
    m = {
        "ate": float(ate.stats["rmse"]),
        "rpe_trans": float(rpe_t.stats["rmse"]),
        "rpe_rot": float(rpe_r.stats["rmse"]),
        "num_poses": int(n),
        "alignment": "sim3",
        "scale": float(scale),
        "ate_mean": float(ate.stats["mean"]),
        "ate_median": float(ate.stats["median"]),
        "ate_max": float(ate.stats["max"]),
        "ate_se3": float(ate_se3.stats["rmse"]),  # rigid alignment, no scale (metric frontends)
        "rpe_trans_se3": float(rpe_t_se3.stats["rmse"]),  # no scale (metric frontends)
    }
    err = np.linalg.norm(aligned.positions_xyz - ref.positions_xyz, axis=1)
    return Evaluation(metrics=m, timestamps=np.asarray(ref.timestamps), gt_xyz=ref.positions_xyz.copy(),
                      est_xyz_aligned=aligned.positions_xyz.copy(), errors=err,
                      info={"match": match, "max_diff": max_diff})


# ----------------------------------------------------------------------------- plot
def plot_evaluation(ev: Evaluation, path: str | os.PathLike, title: str = "") -> Path:
    """PNG: ground truth vs Sim(3)-aligned estimate (two projections) and the error per pose. Atomic."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    gt, est = ev.gt_xyz, ev.est_xyz_aligned
    # Project onto the ground truth's principal axes: the plane of largest motion first.
    centre = gt.mean(axis=0)
    _, _, vt = np.linalg.svd(gt - centre, full_matrices=False)
    g2 = (gt - centre) @ vt.T
    e2 = (est - centre) @ vt.T
    fig = Figure(figsize=(13, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, (a, b) in zip(axes[:2], ((0, 1), (0, 2))):
        ax.plot(g2[:, a], g2[:, b], "k--", lw=1.2, label="ground truth")
        ax.plot(e2[:, a], e2[:, b], "-", color="tab:blue", lw=1.2, label="estimate (Sim(3) aligned)")
        ax.plot(g2[0, a], g2[0, b], "ko", ms=4)
        ax.set_xlabel(f"principal axis {a + 1} (m)")
        ax.set_ylabel(f"principal axis {b + 1} (m)")
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    axes[2].plot(np.arange(len(ev.errors)), ev.errors, color="tab:red", lw=1)
    axes[2].set_xlabel("pose (paired, in time order)")
    axes[2].set_ylabel("translation error (m)")
    axes[2].grid(alpha=0.3)
    m = ev.metrics
    fig.suptitle(f"{title + ': ' if title else ''}ATE {m['ate']:.4f}  RPE trans {m['rpe_trans']:.4f}  "
                 f"RPE rot {m['rpe_rot']:.3f} deg  ({m['num_poses']} poses, scale {m['scale']:.4g})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


# ----------------------------------------------------------------------------- run hooks
@hookimpl
def slam3r_config_sections():
    return {SECTION: EvaluationOptions}


def _run_pairs(result, context, opts: EvaluationOptions):
    rows = [p for p in result.poses if opts.poses == "all" or p.is_keyframe]
    if not rows:
        return None
    est_idx = np.array([p.index for p in rows])
    est_t = np.array([p.timestamp for p in rows], dtype=np.float64)
    est_P = np.stack([p.pose for p in rows])
    if opts.gt:
        gt_t, gt_P, kind = load_trajectory(opts.gt, "ground truth (evaluation.gt)")
        match = opts.match if opts.match != "auto" else ("index" if kind == "sintel" else "auto")
        if match == "index":
            # frame k of the stream is row first + k * stride of the full sequence
            src = context.config.run.source
            rows_in_gt = src.first + est_idx * src.stride
            if rows_in_gt.max() >= len(gt_P):
                raise EvaluationError(
                    f"evaluation.gt has {len(gt_P)} poses but the run used frame {int(rows_in_gt.max())} of the "
                    f"sequence (source.first={src.first}, stride={src.stride}); is it the GT of this sequence?")
            return gt_t[rows_in_gt], gt_P[rows_in_gt], est_t, est_P, "index"
        return gt_t, gt_P, est_t, est_P, match
    gt_poses = result.gt_poses  # a fresh dict from the trajectory store: read it once
    if not gt_poses:
        return None
    have = np.array([int(i) in gt_poses for i in est_idx])
    if not have.any():
        return None
    if not have.all():
        log.info("evaluation: %d of %d frames have no ground-truth pose and are left out", int((~have).sum()), len(have))
    gt_P = np.stack([gt_poses[int(i)] for i in est_idx[have]])
    return est_t[have], gt_P, est_t[have], est_P[have], "index"


@hookimpl
def slam3r_evaluate(result, context):
    opts: EvaluationOptions = context.options(SECTION)
    if not opts.enabled:
        return None
    try:
        pairs = _run_pairs(result, context, opts)
        if pairs is None:
            log.info("evaluation: no ground truth for this run; ATE/RPE not computed")
            return None
        gt_t, gt_P, est_t, est_P, match = pairs
        ev = evaluate_trajectories(gt_t, gt_P, est_t, est_P, match=match, max_diff=opts.max_diff,
                                   gt_name="ground truth", est_name="estimated trajectory")
    except (EvaluationError, SourceError) as e:
        # a failed evaluation (evo missing, no common timestamps, every frame lost ...) is a failed
        # plugin: exit 3 (README, "Exit codes"); the reason also stays in metrics.json
        host = getattr(context, "host", None)
        if host is not None and hasattr(host, "report_failure"):
            host.report_failure(f"evaluation failed: {e}", name=SECTION, hook_name="slam3r_evaluate")
        else:
            log.error("evaluation failed: %s", e)
        return {"evaluation_error": str(e)}
    m = dict(ev.metrics)
    log.info("ATE %.4f  RPE trans %.4f  RPE rot %.3f deg  (%d poses, Sim(3) scale %.4g)  ATE SE(3) %.4f  "
             "RPE trans SE(3) %.4f", m["ate"], m["rpe_trans"], m["rpe_rot"], m["num_poses"], m["scale"], m["ate_se3"],
             m["rpe_trans_se3"])
    if opts.plot:
        try:
            path = plot_evaluation(ev, context.out.file("trajectory.png"), title=context.config.run.name)
            result.outputs["trajectory_plot"] = str(path)
        except Exception as e:  # noqa: BLE001 - a plot (matplotlib) must not lose the numbers
            log.warning("trajectory plot failed: %s: %s", type(e).__name__, e)
    return m


# ----------------------------------------------------------------------------- command
def evaluate_files(gt: str, est: str, match: str = "auto", max_diff: float = 0.01) -> Evaluation:
    """Evaluate two trajectory files (the ``eval`` command)."""
    gt_t, gt_P, kind = load_trajectory(gt, "ground truth")
    est_t, est_P, _ = load_trajectory(est, "estimate")
    if match == "auto" and kind == "sintel":
        match = "index"
    return evaluate_trajectories(gt_t, gt_P, est_t, est_P, match=match, max_diff=max_diff,
                                 gt_name=f"ground truth {gt}", est_name=f"estimate {est}")


def cmd_eval(args) -> int:
    ev = evaluate_files(args.gt, args.est, match=args.match, max_diff=args.max_diff)
    m = ev.metrics
    if ev.info.get("note"):
        print(f"note: {ev.info['note']}")
    print(f"poses:     {m['num_poses']} (paired by {ev.info['match']}, Sim(3) alignment, scale {m['scale']:.6g})")
    print(f"ATE:       {m['ate']:.6f} m")
    print(f"RPE trans: {m['rpe_trans']:.6f} m")
    print(f"RPE rot:   {m['rpe_rot']:.6f} deg")
    print(f"ATE SE(3): {m['ate_se3']:.6f} m (rigid alignment, no scale)")
    print(f"RPE trans SE(3): {m['rpe_trans_se3']:.6f} m (no scale)")
    if args.json:
        write_json(args.json, {**m, "gt": str(args.gt), "est": str(args.est), "match": ev.info["match"]})
        print(f"metrics written to {args.json}")
    if args.plot:
        plot_evaluation(ev, args.plot, title=Path(args.est).name)
        print(f"plot written to {args.plot}")
    return 0


@hookimpl
def slam3r_register_commands(subparsers):
    p = subparsers.add_parser(
        "eval", help="ATE / RPE of a trajectory against ground truth (evo, Sim(3) aligned)",
        description="Evaluate an estimated trajectory against ground truth with the STream3R protocol: ATE "
                    "(translation RMSE after Sim(3) Umeyama alignment) and RPE translation / rotation between "
                    "consecutive frames. The numbers equal `evo_ape tum GT EST -as` and `evo_rpe tum GT EST -as "
                    "--delta 1 --delta_unit f --all_pairs`; ATE SE(3) (rigid alignment, no scale, for metric "
                    "frontends) equals `evo_ape tum GT EST -a`. Needs evo: " + INSTALL_HINT)
    p.add_argument("--gt", required=True, help="ground truth: TUM file, or a Sintel camdata_left/<sequence> folder")
    p.add_argument("--est", required=True, help="estimated trajectory, TUM format (e.g. runs/x/trajectory.txt)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the metrics as JSON")
    p.add_argument("--plot", default=None, metavar="FILE", help="also write a PNG of the aligned trajectories")
    p.add_argument("--max-diff", dest="max_diff", type=float, default=0.01,
                   help="max timestamp difference when pairing poses, seconds (default 0.01, as evo)")
    p.add_argument("--match", choices=["auto", "timestamp", "index"], default="auto",
                   help="pair poses by timestamp or by index (auto: index for a Sintel folder; else by timestamp, "
                        "or by index when no timestamps pair and both have the same length, as upstream)")
    p.set_defaults(handler=cmd_eval)
