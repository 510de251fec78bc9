"""Loop verification on real recordings (issue 19): which gate values separate true loops from false ones.

    python benchmarks/loop_calibration.py                       # the sequences below that are found
    python benchmarks/loop_calibration.py --seq fr1_rpy_full --json /tmp/cal.json

For each sequence (found like ``realdata_bench.py`` finds it: ``realdata_suite.yaml``'s roots):

1. slam3r's rgbd frontend runs with its default keyframe policy and loop closure off: the keyframes
   and their drifted poses, as the loop closer sees them when they arrive;
2. every keyframe ``q`` is paired with the candidates the loop closer would try -- the best tf-idf
   scores of the earlier keyframes (appearance) and the earlier keyframes whose estimated viewpoint is
   closest (the pose prior), the newest ``exclude_recent`` left out -- and each pair is verified twice
   with every gate open, so that every statistic is measured: by ORB (matches, RANSAC inliers and
   ratio, ICP overlap / RMSE / agreement) and by depth geometry (FPFH + RANSAC + ICP: overlap, RMSE,
   constraint);
3. each verified transform is compared with the motion-capture relative pose (TUM: the ground truth
   as given; Bonn: the camera frame from its published marker transforms, ``T_ros @ T_m``): *true*
   when it moves the query's points by at most 3 % of the median depth (rms) from where the ground
   truth puts them, *false* above 10 %;
4. the drift the loop implies (its correction of the query keyframe against the path travelled
   between the two keyframes) is recorded for the drift gate.

Prints, per verification path and statistic, its distribution over true and false loops, and how many
of each the current default gates accept; writes every pair's numbers to the JSON file
(``benchmarks/results/loop_calibration_<date>.json`` by default) with machine, commit and load.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np

from _provenance import cpu_model, git_commit  # benchmarks/_provenance.py (scripts run from this folder)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: the sequences of realdata_suite.yaml used, with the stride of each (revisits are what matters)
DEFAULT = {"fr1_rpy_full": 2, "bonn_crowd_full": 2, "fr3_nst_far": 1}
TRUE_AT, FALSE_AT = 0.03, 0.10  # rms displacement of the query's points, x median depth


def displacement(T: Optional[np.ndarray], T_true: np.ndarray, pts: np.ndarray) -> float:
    """rms distance between ``pts`` moved by ``T`` and by ``T_true`` (inf without ``T``)."""
    if T is None or not np.all(np.isfinite(T)):
        return float("inf")
    d = pts @ T[:3, :3].T + T[:3, 3] - (pts @ T_true[:3, :3].T + T_true[:3, 3])
    return float(np.sqrt(np.mean(np.sum(d * d, axis=1))))


def run_keyframes(c: dict[str, Any]) -> tuple[list[int], dict[int, np.ndarray]]:
    """slam3r rgbd, loop closure off: the keyframe indices and their estimated poses."""
    from realdata_bench import SLAM3R_BASE, _frames_before_stride
    from slam3r_app.config import load_config
    from slam3r_app.frame_loop import run
    from slam3r_app.pipeline import Pipeline

    ov = [f"source.type={c['type']}", f"source.path={c['path']}", f"source.first={c['first']}",
          f"source.stride={c['stride']}", *SLAM3R_BASE]
    ov[-1] = ov[-1].replace("disable=[", "disable=[loop_closure,")
    mf = _frames_before_stride(c)
    if mf is not None:
        ov.append(f"source.max_frames={mf}")
    cfg = load_config("base.yaml", overrides=ov)
    with tempfile.TemporaryDirectory(prefix="loopcal_") as tmp:
        result = run(cfg, pipeline=Pipeline(cfg, output=tmp))
    kfs = [r.index for r in result.poses if r.is_keyframe and str(r.status) not in ("lost", "TrackingStatus.LOST")]
    return kfs, {r.index: np.asarray(r.pose, dtype=np.float64) for r in result.poses}


#: lens distortion (k1 k2 p1 p2 k3) of the cameras, from the datasets' calibration pages (SOURCE.md)
DISTORTION = {"freiburg1": [0.2624, -0.9531, -0.0054, 0.0026, 1.1633],
              "bonn": [0.039903, -0.099343, -0.000730, -0.000144, 0.0]}


def calibrate(c: dict[str, Any], exclude_recent: int = 15, per_source: int = 3,
              undistort: Optional[list[float]] = None) -> list[dict[str, Any]]:
    from realdata_bench import _source
    from slam3r_app.keyframe_store import KeyframeStore
    from slam3r_plugins.features import extract
    from slam3r_plugins.global_registration import GlobalRegistrationOptions, depth_agreement, nearest_views, prepare, register
    from slam3r_plugins.loop_closure.retrieval import BowDatabase, Vocabulary
    from slam3r_plugins.loop_closure.verification import VerifyOptions, verify

    kfs, poses = run_keyframes(c)
    want = set(kfs)
    store = KeyframeStore(max_side=160, max_memory_mb=4096)
    vocab = Vocabulary.load()
    db = BowDatabase(len(vocab))
    data: dict[int, dict[str, Any]] = {}
    for f in _source(c).frames():
        if f.index not in want:
            continue
        if undistort is not None:  # until the readers undistort (issue 19, point 1): colour bilinear, depth nearest
            import cv2

            K0 = np.asarray(f.intrinsics, dtype=np.float64)
            h, w = f.depth.shape
            m1, m2 = cv2.initUndistortRectifyMap(K0, np.asarray(undistort), None, K0, (w, h), cv2.CV_32FC1)
            f.rgb = cv2.remap(f.rgb, m1, m2, cv2.INTER_LINEAR)
            f.depth = cv2.remap(np.asarray(f.depth, np.float32), m1, m2, cv2.INTER_NEAREST)
        depth = np.where(np.isfinite(f.depth) & (f.depth > 0), f.depth, 0).astype(np.float32)
        est = SimpleNamespace(depth_is_metric=True, depth=None, confidence=None, intrinsics=f.intrinsics)
        rec = store.add(f, est)
        feats = extract(f.rgb, depth, np.asarray(f.intrinsics), n_features=1000)
        feats.words = vocab.quantize(feats.descriptors)
        pts = rec.camera_points()[0].astype(np.float64)
        md = float(np.median(depth[depth > 0])) if (depth > 0).any() else 0.0
        data[f.index] = {"feats": feats, "points": pts, "md": md, "cloud": prepare(pts),
                         "depth": rec.depth.astype(np.float32), "K": rec.intrinsics,
                         "gt": f.gt_pose}  # the reader gives the camera's pose (Bonn: marker -> camera applied)
    order = [k for k in kfs if k in data]
    open_orb = VerifyOptions(min_matches=0, min_inliers=3, min_inlier_ratio=0.0, min_overlap=0.0, max_rmse=1e9,
                             max_icp_shift=1e9, max_icp_turn_deg=1e9)
    open_geo = GlobalRegistrationOptions(min_overlap=0.0, max_rmse=1e9, min_constraint=0.0)
    rows: list[dict[str, Any]] = []
    path = {order[0]: 0.0} if order else {}
    for a, b in zip(order, order[1:]):
        path[b] = path[a] + float(np.linalg.norm(poses[b][:3, 3] - poses[a][:3, 3]))
    for n, q in enumerate(order):
        dq = data[q]
        if n >= exclude_recent:
            older = order[: n - exclude_recent + 1]
            by_app = [k for k, _ in db.query(dq["feats"].words, top_k=per_source + exclude_recent)
                      if k in older][:per_source]
            by_pose = [k for k, _ in nearest_views(poses[q], {k: poses[k] for k in older}, dq["md"] or 1.0,
                                                   k=per_source)]
            for cand in dict.fromkeys(by_app + by_pose):
                dc = data[cand]
                if dq["gt"] is None or dc["gt"] is None or not dc["md"] > 0:
                    continue
                T_true = np.linalg.inv(dc["gt"]) @ dq["gt"]
                sample = dq["points"][:: max(1, len(dq["points"]) // 2000)]
                md = dc["md"]
                row: dict[str, Any] = {"query": q, "candidate": cand, "md": round(md, 4),
                                       "by_appearance": cand in by_app, "by_pose": cand in by_pose,
                                       "path_md": round((path[q] - path[cand]) / md, 3),
                                       "gt_shift_md": round(float(np.linalg.norm(T_true[:3, 3])) / md, 4)}
                t0 = time.perf_counter()
                v = verify(dq["feats"], dc["feats"], dq["points"], dc["points"], md, open_orb)
                row["orb"] = {**v.stats, "ok": v.accepted, "reason": v.reason,
                              "seconds": round(time.perf_counter() - t0, 4)}
                g = register(prepare(dq["points"], unit=dc["cloud"].median_depth), dc["cloud"], open_geo,
                             prior=np.linalg.inv(poses[cand]) @ poses[q])
                row["geometry"] = {**g.stats, "ok": g.accepted, "reason": g.reason}
                for name, T in (("orb", v.transform), ("geometry", g.transform)):
                    err = displacement(T, T_true, sample) / md
                    row[name]["error_md"] = round(err, 5) if np.isfinite(err) else None
                    row[name]["label"] = "true" if err <= TRUE_AT else ("false" if err > FALSE_AT else "unsure")
                    if T is not None:  # both views' depth against the other's image (the free-space check)
                        _, v1, _ = depth_agreement(dq["points"], T, dc["depth"], dc["K"])
                        _, v2, _ = depth_agreement(dc["points"], np.linalg.inv(T), dq["depth"], dq["K"])
                        row[name]["free_space_violation"] = round(min(v1, v2), 4)  # as the loop closer's gate
                        row[name]["free_space_worst"] = round(max(v1, v2), 4)
                    if T is not None:  # the correction this loop implies for the query keyframe (drift gate)
                        corr = poses[cand] @ T @ np.linalg.inv(poses[q])
                        implied = corr @ poses[q]
                        row[name]["shift_md"] = round(float(np.linalg.norm(implied[:3, 3] - poses[q][:3, 3])) / md, 4)
                        row[name]["turn_deg"] = round(float(np.degrees(np.arccos(np.clip(
                            (np.trace(corr[:3, :3]) - 1) / 2, -1, 1)))), 3)
                rows.append(row)
        db.add(q, dq["feats"].words)
    return rows


def _q(values: list[float]) -> str:
    if not values:
        return "-"
    v = np.asarray(values, dtype=np.float64)
    return " ".join(f"{x:.3g}" for x in np.percentile(v, [0, 10, 50, 90, 100]))


def summarise(rows: list[dict[str, Any]]) -> str:
    out = []
    for path, keys in (("orb", ("matches", "inliers", "inlier_ratio", "icp_fitness", "icp_rmse", "icp_shift",
                                "icp_turn_deg", "free_space_violation", "shift_md", "turn_deg")),
                       ("geometry", ("overlap", "rmse", "constraint", "ransac_fitness", "free_space_violation",
                                     "shift_md", "turn_deg"))):
        out.append(f"-- {path}: statistic: min p10 median p90 max, over true | false loops")
        tr = [r[path] for r in rows if r[path]["label"] == "true"]
        fa = [r[path] for r in rows if r[path]["label"] == "false"]
        out.append(f"   pairs {len(rows)}: true {len(tr)}, false {len(fa)}, unsure {len(rows) - len(tr) - len(fa)}")
        for k in keys:
            out.append(f"   {k:<14} {_q([x[k] for x in tr if x.get(k) is not None]):<40} | "
                       f"{_q([x[k] for x in fa if x.get(k) is not None])}")
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    from realdata_bench import cases, load_suite, roots

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq", action="append", default=[], help="a realdata_suite.yaml sequence (repeatable)")
    ap.add_argument("--stride", type=int, default=0, help="stride for every sequence (default: DEFAULT's)")
    ap.add_argument("--root", action="append", default=[], help="a data root to search first")
    ap.add_argument("--undistort", action="store_true", help="undistort colour and depth first (fr1, Bonn)")
    ap.add_argument("--json", default="", help="raw results (default benchmarks/results/loop_calibration_<date>.json)")
    a = ap.parse_args(argv)
    suite = load_suite()
    names = a.seq or list(DEFAULT)
    doc: dict[str, Any] = {"benchmark": "loop_calibration", "date": time.strftime("%Y-%m-%d %H:%M"),
                           "commit": git_commit() or "", "machine": platform.machine(), "cpu": cpu_model(),
                           "cpus": os.cpu_count(), "load_average_start": os.getloadavg(),
                           "true_at_md": TRUE_AT, "false_at_md": FALSE_AT, "sequences": {}}
    out = Path(a.json) if a.json else REPO / "benchmarks" / "results" / f"loop_calibration_{time.strftime('%Y%m%d')}.json"
    for name in names:
        todo, missing = cases(suite, roots(suite, a.root), [name], [a.stride or DEFAULT.get(name, 1)], False)
        if missing or not todo:
            print(f"skipped {name}: not found", file=sys.stderr)
            continue
        c = todo[0]
        t0 = time.perf_counter()
        dist = None
        if a.undistort:
            dist = DISTORTION["bonn"] if c["type"] == "bonn" else next(
                (v for k, v in DISTORTION.items() if k in c["path"]), None)
        rows = calibrate(c, undistort=dist)
        doc["sequences"][name] = {"case": c, "undistorted": dist, "pairs": rows, "seconds": round(time.perf_counter() - t0, 1),
                                  "load_average": os.getloadavg()}
        print(f"== {name} (stride {c['stride']}): {len(rows)} candidate pairs")
        print(summarise(rows), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1, default=float), encoding="utf-8")
    allrows = [r for s in doc["sequences"].values() for r in s["pairs"]]
    print("== all sequences")
    print(summarise(allrows))
    doc["load_average_end"] = os.getloadavg()
    out.write_text(json.dumps(doc, indent=1, default=float), encoding="utf-8")
    print(f"raw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
