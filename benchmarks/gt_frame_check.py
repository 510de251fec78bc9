"""Is a dataset's ground truth the camera's pose? A hand-eye check against a tracked trajectory.

    python benchmarks/gt_frame_check.py EST.txt GT.txt [--step 10] [--candidate NAME=FILE.npy ...]

``EST.txt`` is a trajectory of the camera (TUM format, camera-to-world; e.g. a run's
``trajectory.txt`` or ``realdata_bench.py --trajectories``' ``*_est.txt``), ``GT.txt`` the dataset's
ground truth as it is (TUM format). If ``GT`` is the pose of some body ``B`` rigidly attached to the
camera, the camera's pose is ``G @ X`` and the relative rotation over ``step`` frames is
``X^-1 (G_i^-1 G_j) X``. For each candidate ``X`` (the identity, each ``--candidate`` 4x4 matrix, and
the rotation fitted to the data by least squares) it prints the angle between that relative
rotation and the trajectory's own, median and 90th percentile over the trajectory: a tracker that
holds gives about 1 deg per 10 frames for the right ``X``, several degrees for a wrong one.
Rotations only: the translation between body and camera moves positions by its length at most.

Measured (2026-12-07, Bonn ``rgbd_bonn_crowd``, slam3r rgbd with ``bonn.yaml``, the raw
``groundtruth.txt``; ``--candidate`` the dataset page's ``T_ros @ T_m``): frames 131-530: the identity
3.63 deg median (p90 6.95), ``T_ros @ T_m`` 0.88 (2.37), fitted 0.85 (2.19) at 173.8 deg from the
identity; all 922 frames: 4.22 / 1.03 / 1.00 deg. ``groundtruth.txt`` is the marker's pose and
``T_ros @ T_m`` takes it to the camera's, which is what the Bonn reader applies
(``slam3r_datasets.calibration.BONN_MARKER_TO_CAMERA``). Feed this tool the file as the dataset
gives it, not a reader's ``gt_pose`` (that one has the transform applied already).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from slam3r_app.errors import SourceError
from slam3r_app.sim3 import strip_scale
from slam3r_app.trajectory import associate, read_tum


def relative_rotations(poses: np.ndarray, step: int) -> np.ndarray:
    """``[M, 3, 3]`` rotations ``R_i^T R_{i+step}`` of ``[N, 4, 4]`` poses, every ``step // 2`` frames."""
    idx = np.arange(0, len(poses) - step, max(1, step // 2))
    R = poses[:, :3, :3]
    return np.einsum("nji,njk->nik", R[idx], R[idx + step])


def mismatch_deg(gt_rel: np.ndarray, est_rel: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Angle (degrees) between ``X^T gt_rel X`` and ``est_rel``, one per pair; ``X`` ``[3, 3]``."""
    conj = np.einsum("ji,njk,kl->nil", X, gt_rel, X)
    diff = np.einsum("nji,njk->nik", conj, est_rel)
    return np.degrees(Rotation.from_matrix(diff).magnitude())


def fit_rotation(gt_rel: np.ndarray, est_rel: np.ndarray, starts: int = 12) -> np.ndarray:
    """The ``[3, 3]`` rotation ``X`` that best explains ``est_rel`` as ``X^T gt_rel X`` (least squares)."""
    def residual(v: np.ndarray) -> np.ndarray:
        X = Rotation.from_rotvec(v).as_matrix()
        conj = np.einsum("ji,njk,kl->nil", X, gt_rel, X)
        return Rotation.from_matrix(np.einsum("nji,njk->nik", conj, est_rel)).as_rotvec().ravel()

    best = None
    for s in range(starts):  # the cost has a local minimum per axis flip: several starts
        r = least_squares(residual, Rotation.random(random_state=s).as_rotvec())
        if best is None or r.cost < best.cost:
            best = r
    return Rotation.from_rotvec(best.x).as_matrix()


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("est", help="the tracked trajectory (TUM format)")
    ap.add_argument("gt", help="the ground truth as the dataset gives it (TUM format)")
    ap.add_argument("--step", type=int, default=10, help="frames between the poses compared (default 10)")
    ap.add_argument("--candidate", action="append", default=[], metavar="NAME=FILE.npy",
                    help="a body-to-camera 4x4 (or 3x3) matrix to test (repeatable)")
    a = ap.parse_args(argv)
    candidates = {"identity": np.eye(3)}
    for c in a.candidate:
        name, _, path = c.partition("=")
        try:
            M = np.asarray(np.load(Path(path)), dtype=np.float64)
        except (OSError, ValueError) as e:
            print(f"--candidate {c}: cannot read {path!r} as a .npy matrix ({e})", file=sys.stderr)
            return 2
        if M.shape not in ((3, 3), (4, 4)):
            print(f"--candidate {c}: {path} holds a {M.shape} array, not 3x3 or 4x4", file=sys.stderr)
            return 2
        T = np.eye(4)
        T[:M.shape[0], :M.shape[1]] = M
        candidates[name] = strip_scale(T)[:3, :3]  # its rotation (a printed matrix may be a little off SO(3))
    try:
        t_est, est = read_tum(a.est, "estimated trajectory")
        t_gt, gt = read_tum(a.gt, "ground truth")
    except SourceError as e:  # (names the file and the line)
        print(e, file=sys.stderr)
        return 2
    pairs = associate(t_est, t_gt)
    if len(pairs) <= a.step + 2:
        print(f"only {len(pairs)} poses of {a.est} have ground truth in {a.gt} within 0.02 s; need more than "
              f"--step {a.step} + 2", file=sys.stderr)
        return 2
    e = est[[i for i, _ in pairs]]
    g = gt[[j for _, j in pairs]]
    e_rel, g_rel = relative_rotations(e, a.step), relative_rotations(g, a.step)
    fitted = fit_rotation(g_rel, e_rel)
    candidates["fitted"] = fitted
    print(f"{len(pairs)} poses, {len(e_rel)} pairs {a.step} frames apart")
    print(f"{'body-to-camera rotation':<26}{'median deg':>11}{'p90 deg':>9}{'from identity deg':>19}")
    for name, X in candidates.items():
        m = mismatch_deg(g_rel, e_rel, X)
        away = float(np.degrees(Rotation.from_matrix(X).magnitude()))
        print(f"{name:<26}{np.median(m):>11.2f}{np.percentile(m, 90):>9.2f}{away:>19.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
