"""Lap-wise drift of a run on a synthetic lap sequence (``configs/synthetic_loop.yaml`` and friends).

    python run_slam.py --config synthetic_loop.yaml --output runs/loop
    python benchmarks/loop_drift.py runs/loop            # one JSON line

Reads the run's ``config.yaml`` (the ``source`` section rebuilds the exact ground truth),
``trajectory.txt``, ``metrics.json``, ``summary.json`` and ``mesh.ply``, and prints:

* ``ate_se3_lap1`` / ``ate_se3_all``: ATE (m) after a rigid (SE(3)) Umeyama alignment (evo's),
  over the first lap only and over the whole run; ``ate_sim3_all`` with scale;
* ``lapK_start_vs_lap1_start_m`` / ``_deg``: the estimated pose of the first frame of lap K
  relative to the estimated first frame of lap 1 -- the same place, so the ground truth is the
  identity: the drift a loop closure has to remove;
* ``mesh_mean_cm`` / ``mesh_median_cm``: distance of the fused mesh's vertices to the true
  surfaces (the estimate's world is frame 0's camera, mapped by frame 0's true pose; no alignment);
* ``lost`` frames (``tracking`` = lost in the frontend's stats) and the run's seconds.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml


def _ate(est: np.ndarray, gt: np.ndarray, scale: bool) -> float:
    from evo.core.geometry import umeyama_alignment

    R, t, s = umeyama_alignment(est.T, gt.T, with_scale=scale)
    aligned = s * est @ R.T + t
    return float(np.sqrt(((aligned - gt) ** 2).sum(axis=1).mean()))


def loop_drift(run: Path) -> dict:
    from slam3r_app.trajectory import read_tum, rotation_angle_deg
    from slam3r_datasets.synthetic import SyntheticSequence

    src = yaml.safe_load((run / "config.yaml").read_text())["source"]
    seq = SyntheticSequence(seed=src.get("seed", 0), laps=src.get("synthetic_laps"), frames=src.get("synthetic_frames"),
                            scene=src.get("synthetic_scene", "room"), speed=src.get("synthetic_speed"),
                            width=16, height=12)
    n = seq.frames_per_lap
    if n is None:
        raise SystemExit(f"{run}: not a lap sequence (source.synthetic_laps is not set)")
    first, stride = int(src.get("first", 0) or 0), int(src.get("stride", 1) or 1)
    if (first, stride) != (0, 1):
        raise SystemExit(f"{run}: needs every frame from the first (source.first 0, stride 1)")
    _, E = read_tum(run / "trajectory.txt")
    G = seq.poses()[: len(E)]
    E = np.linalg.inv(E[0]) @ E
    Gr = np.linalg.inv(G[0]) @ G
    pe, pg = E[:, :3, 3], Gr[:, :3, 3]
    out: dict = {"frames": len(E), "frames_per_lap": n, "ate_se3_lap1": _ate(pe[:n], pg[:n], False),
                 "ate_se3_all": _ate(pe, pg, False), "ate_sim3_all": _ate(pe, pg, True)}
    for k in range(1, (len(E) - 1) // n + 1):
        D = np.linalg.inv(E[0]) @ E[k * n]
        out[f"lap{k + 1}_start_vs_lap1_start_m"] = float(np.linalg.norm(D[:3, 3]))
        out[f"lap{k + 1}_start_vs_lap1_start_deg"] = float(rotation_angle_deg(D[None, :3, :3])[0])
    mesh = run / "mesh.ply"
    if mesh.is_file():
        import open3d as o3d

        v = np.asarray(o3d.io.read_triangle_mesh(str(mesh)).vertices)
        if len(v):
            d = seq.scene.distance_to_surface(v @ G[0][:3, :3].T + G[0][:3, 3])
            out["mesh_mean_cm"], out["mesh_median_cm"] = 100 * float(d.mean()), 100 * float(np.median(d))
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    out["lost"] = (summary.get("frontend_stats") or {}).get("lost")
    out["seconds"] = summary.get("seconds")
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    out.update({f"metrics_{k}": metrics[k] for k in ("ate", "ate_se3", "rpe_trans", "rpe_rot") if k in metrics})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="run folder of a synthetic lap sequence")
    args = p.parse_args(argv)
    out = loop_drift(args.run)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
