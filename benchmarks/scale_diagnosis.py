"""Why does a Sim(3) fit shrink a metric trajectory? Translation that follows the rotation.

    python benchmarks/scale_diagnosis.py EST.txt GT.txt

``EST.txt`` is a tracked camera trajectory, ``GT.txt`` the ground truth (both TUM format,
camera-to-world, metres; the ground truth as the camera's pose, e.g. TUM's ``groundtruth.txt``).
Poses are matched by timestamp (TUM's ``associate``, 0.02 s). It prints:

* the ATE after an SE(3) and a Sim(3) fit (Umeyama) and the fitted scale;
* how far each trajectory spreads (rms distance of the camera centres from their mean) and, after
  the SE(3) fit, the least-squares slope of the estimate on the truth along each world axis: a
  slope above 1 is an estimate that moves the camera further than it went, which a Sim(3) fit
  answers with a scale below 1;
* the lever arm: the constant offset ``d`` (camera frame) of the estimated camera centre from the
  true one, ``c_est = c_true + R d``, that explains most of the error (alternating an SE(3) fit and
  linear least squares for ``d``), and the ATE and Sim(3) scale once it is removed. A tracker
  whose rotation is off by a fraction ``e`` of the angle turned, over a scene ``Z`` metres away,
  moves its centre by about ``Z e`` per radian to keep the depth aligned: this shows as a lever arm
  along the optical axis. A wrong ground-truth hand-eye offset shows the same way;
* the rotation turned from the first pose, estimate against truth (least-squares slope of the
  angles): below 1, the estimate under-rotates;
* the ATE with the estimate's clock shifted by -50..50 ms (a clock offset would show as a clear
  minimum away from 0).

Measured on the shipped demo (2026-12-07, ``run_slam.py --config demo.yaml`` at commit 9ed8abe;
``benchmarks/NOTES.md`` "Why the demo's Sim(3) scale is 0.71"): the estimate spreads 5.60 cm against
the truth's 4.15 (slope 1.35 along the main axis of motion); an offset of +5.0 +- 0.6 cm along the
optical axis (x -2.8 +- 0.4 cm; y, along the yaw axis, barely observed: +- 3.5 cm) takes the SE(3)
ATE from 1.94 to 1.24 cm and the Sim(3) scale from 0.71 to 0.91; the estimate turns 0.998 of the
angle, and no clock shift helps.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from slam3r_app.errors import SourceError
from slam3r_app.sim3 import sim3_scale, transform_points
from slam3r_app.trajectory import associate, read_tum
from slam3r_plugins.features import umeyama


def _rms(d: np.ndarray) -> float:
    return float(np.sqrt((d ** 2).sum(1).mean()))


def spread(p: np.ndarray) -> float:
    """RMS distance of ``[N, 3]`` points from their mean (metres)."""
    return _rms(p - p.mean(0))


def fit_lever_arm(est: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The camera-frame offset ``d`` with ``c_est = c_true + R_est d`` that best explains the error.

    Least squares over ``d`` and a rigid alignment together (``g_i ~ A (c_i - R_i d) + t``), started
    from ``d = 0`` and the Umeyama alignment.

    Args:
        est, gt: ``[N, 4, 4]`` camera-to-world poses (estimate, truth), N >= 3, matched.
    Returns:
        ``d`` ``[3]`` (metres, the estimate's camera frame), its standard errors ``[3]`` (from the
        residual and the Jacobian: a component along an axis the camera hardly turns about is
        weakly observed and has a large one) and the ``[4, 4]`` rigid transform taking the
        corrected estimated centres ``c_est - R_est d`` onto the true ones.
    """
    c, R, g = est[:, :3, 3], est[:, :3, :3], gt[:, :3, 3]
    T0 = umeyama(c, g)

    def residual(x: np.ndarray) -> np.ndarray:
        A = Rotation.from_rotvec(x[:3]).as_matrix() @ T0[:3, :3]
        return ((c - R @ x[6:]) @ A.T + x[3:6] - g).ravel()

    x0 = np.concatenate([np.zeros(3), T0[:3, 3], np.zeros(3)])
    sol = least_squares(residual, x0, method="lm", xtol=1e-12, ftol=1e-12)
    d = sol.x[6:]
    dof = max(1, sol.fun.size - sol.x.size)
    cov = np.linalg.pinv(sol.jac.T @ sol.jac) * float(sol.fun @ sol.fun) / dof
    return d, np.sqrt(np.clip(np.diag(cov)[6:], 0, None)), umeyama(c - R @ d, g)


def rotation_slope(est: np.ndarray, gt: np.ndarray) -> float:
    """Least-squares slope of the angle turned since the first pose, estimate on truth."""
    def angles(P: np.ndarray) -> np.ndarray:
        rel = np.einsum("ji,njk->nik", P[0, :3, :3], P[:, :3, :3])
        return Rotation.from_matrix(rel).magnitude()

    a_e, a_g = angles(est), angles(gt)
    den = float(a_g @ a_g)
    return float(a_e @ a_g / den) if den > 0 else float("nan")


@dataclass
class ScaleDiagnosis:
    """Figures of one estimate against its truth (metres unless said)."""

    poses: int
    ate_se3: float
    ate_sim3: float
    sim3_scale: float
    spread_gt: float
    spread_est: float
    axis_slopes: list[float]
    lever_arm: list[float]
    lever_arm_std: list[float]
    ate_se3_without_lever_arm: float
    sim3_scale_without_lever_arm: float
    rotation_slope: float
    clock_shifts_s: list[float]
    ate_se3_by_shift: list[float]


def diagnose(t_est: np.ndarray, est: np.ndarray, t_gt: np.ndarray, gt: np.ndarray,
             shifts: Optional[np.ndarray] = None) -> ScaleDiagnosis:
    """All figures; ``est`` / ``gt`` ``[N, 4, 4]`` / ``[M, 4, 4]`` with timestamps ``t_est`` / ``t_gt``.

    Raises:
        ValueError: fewer than 3 poses of the estimate have ground truth within 0.02 s.
    """
    pairs = associate(t_est, t_gt)
    if len(pairs) < 3:
        raise ValueError(f"only {len(pairs)} poses of the estimate have ground truth within 0.02 s (need 3)")
    e, g = est[[i for i, _ in pairs]], gt[[j for _, j in pairs]]
    ce, cg = e[:, :3, 3], g[:, :3, 3]
    T = umeyama(ce, cg)
    S = umeyama(ce, cg, with_scale=True)
    aligned = transform_points(T, ce)
    slopes = []
    for k in range(3):
        x, y = cg[:, k] - cg[:, k].mean(), aligned[:, k] - aligned[:, k].mean()
        slopes.append(float(x @ y / (x @ x)) if x @ x > 0 else float("nan"))
    d, d_std, Td = fit_lever_arm(e, g)
    corrected = ce - e[:, :3, :3] @ d
    Sd = umeyama(corrected, cg, with_scale=True)
    shifts = np.round(np.arange(-0.05, 0.0501, 0.01), 3) if shifts is None else np.asarray(shifts)
    stamps = np.asarray(t_est, np.float64)[[i for i, _ in pairs]]
    by_shift = []
    for dt in shifts:  # ground truth interpolated at the shifted clock
        t = stamps + dt
        gi = np.stack([np.interp(t, t_gt, gt[:, k, 3]) for k in range(3)], 1)
        by_shift.append(_rms(transform_points(umeyama(ce, gi), ce) - gi))
    return ScaleDiagnosis(
        poses=len(pairs), ate_se3=_rms(aligned - cg), ate_sim3=_rms(transform_points(S, ce) - cg),
        sim3_scale=sim3_scale(S), spread_gt=spread(cg), spread_est=spread(ce),
        axis_slopes=slopes, lever_arm=[float(v) for v in d],
        lever_arm_std=[float(v) for v in d_std], ate_se3_without_lever_arm=_rms(transform_points(Td, corrected) - cg),
        sim3_scale_without_lever_arm=sim3_scale(Sd),
        rotation_slope=rotation_slope(e, g), clock_shifts_s=[float(s) for s in shifts],
        ate_se3_by_shift=by_shift)


def report(r: ScaleDiagnosis) -> str:
    """The printed table (centimetres)."""
    cm = 100.0
    lines = [
        f"{r.poses} poses with ground truth",
        f"ATE SE(3) {r.ate_se3 * cm:.2f} cm   Sim(3) {r.ate_sim3 * cm:.2f} cm   scale {r.sim3_scale:.3f}",
        f"spread: truth {r.spread_gt * cm:.2f} cm, estimate {r.spread_est * cm:.2f} cm; slope on the truth per "
        f"world axis (after SE(3)): " + " ".join(f"{s:.3f}" for s in r.axis_slopes),
        "lever arm (camera frame x y z, cm, +- one standard error): "
        + ", ".join(f"{v * cm:+.2f} +- {e * cm:.2f}" for v, e in zip(r.lever_arm, r.lever_arm_std))
        + f";  without it: ATE SE(3) "
        f"{r.ate_se3_without_lever_arm * cm:.2f} cm, Sim(3) scale {r.sim3_scale_without_lever_arm:.3f}",
        f"rotation turned since the first pose, estimate / truth: {r.rotation_slope:.4f}",
        "ATE SE(3) by clock shift: " + ", ".join(
            f"{s * 1000:+.0f} ms {a * cm:.2f}" for s, a in zip(r.clock_shifts_s, r.ate_se3_by_shift)),
    ]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("est", help="the tracked trajectory (TUM format)")
    ap.add_argument("gt", help="the ground truth, the camera's pose (TUM format)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON (metres) instead")
    a = ap.parse_args(argv)
    try:
        t_est, est = read_tum(a.est, "estimated trajectory")
        t_gt, gt = read_tum(a.gt, "ground truth")
        r = diagnose(t_est, est, t_gt, gt)
    except SourceError as e:  # names the file and the line
        print(e, file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"{a.est} against {a.gt}: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(asdict(r), indent=1))
    else:
        print(report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
