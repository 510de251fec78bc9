"""The real-data development suite (issue 19): slam3r's rgbd path against Open3D's dense SLAM.

    python benchmarks/realdata_bench.py                   # every sequence of realdata_suite.yaml found
    python benchmarks/realdata_bench.py --quick           # the sequences marked quick (about 10 min, 2 cores)
    python benchmarks/realdata_bench.py --seq fr3_nst_far --strides 10 --modes lc,o3d
    python benchmarks/realdata_bench.py --set rgbd.method=model --label model   # a variant of slam3r
    python benchmarks/realdata_bench.py --list            # the suite, and which sequences are found
    python benchmarks/realdata_bench.py --markdown benchmarks/results/realdata_<date>.json   # README table

For each sequence of ``benchmarks/realdata_suite.yaml`` (and each of its wide-baseline variants:
every k-th frame) it runs, each in a fresh process, on the same frames as the reader gives them
(the TUM / Bonn readers of slam3r_datasets, so calibration and undistortion are the same for all):

* ``lc``: ``run_slam.py`` with the sequence's dataset config (``tum.yaml`` / ``bonn.yaml``, as a user
  runs it: ``--config bonn.yaml --set frontend=rgbd``; ``bonn.yaml`` carries the rgbd settings for
  scenes with people walking, :data:`DATASET_CONFIG`), ``frontend: rgbd``, fusion and the other map
  backends off, loop closure on (the default);
* ``nolc``: the same with loop closure off (``disable=[loop_closure]``);
* ``o3d``: Open3D's own dense RGB-D SLAM (``open3d.t.pipelines.slam``: frame-to-model tracking
  against a TSDF ray cast, no loop closure) with the settings of Open3D's example
  ``examples/python/t_reconstruction_system/dense_slam.py`` / ``default_config.yml`` (voxel 5.8 mm,
  16^3 blocks, 40000 blocks, depth 0.1-3.0 m, odometry distance threshold 0.07 m, truncation 8
  voxels; ``--o3d-set KEY=VALUE`` changes one, e.g. ``depth_max=6``), given the source's intrinsics.
  Open3D raises on a singular system (its example then
  stops); here that frame keeps the last pose and counts as lost.

Printed per case: ATE SE(3) and Sim(3) (RMSE of camera positions after a rigid / similarity
Umeyama alignment, evo's), the Sim(3) scale, RPE translation / rotation between consecutive frames
(Sim(3)-aligned, as metrics.json; "RPE SE3": the translation without the scale, ``rpe_trans_se3``),
frames lost, relocalisations, loops accepted / rejected,
milliseconds per frame (the whole run, reading frames included, divided by the frames), frames still
lost at the end (neither tracked nor relocalised) and keyframes the keyframe store holds / keyframes
made (culling). All
trajectories are compared with the frames' own ground truth (the reader's TUM association, 0.02 s).

Raw results (one JSON document: machine, CPU, date, commit, load average before and after every
case, the full per-case numbers) go to ``benchmarks/results/realdata_<date>[_<label>].json`` (or
``--json``). The machine is shared: read the load averages beside the times.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from _provenance import cpu_model, git_commit  # benchmarks/_provenance.py (scripts run from this folder)

REPO = Path(__file__).resolve().parents[1]
SUITE = Path(__file__).resolve().parent / "realdata_suite.yaml"
MODES = ("lc", "nolc", "o3d")

#: Open3D's dense SLAM example settings (default_config.yml of t_reconstruction_system).
O3D_EXAMPLE = {"voxel_size": 0.0058, "block_resolution": 16, "block_count": 40000, "depth_min": 0.1,
               "depth_max": 3.0, "odometry_distance_thr": 0.07, "trunc_voxel_multiplier": 8.0}

#: the config a user runs for each type of sequence (``configs/``); its source keys are overridden below
DATASET_CONFIG = {"tum": "tum.yaml", "bonn": "bonn.yaml"}

#: slam3r settings of the suite: the rgbd frontend, only the tracker and loop closure.
SLAM3R_BASE = ["frontend=rgbd", "progress=false", "viewer.enabled=false", "evaluation.plot=false",
               "disable=[fusion,pointcloud,exports,rerun,viewer,controls,bench]"]


# ----------------------------------------------------------------------------- the suite
def load_suite(path: Path = SUITE) -> dict[str, Any]:
    import yaml

    with open(path, "r", encoding="utf-8") as f:
        suite = yaml.safe_load(f)
    if not isinstance(suite, dict) or not isinstance(suite.get("sequences"), list):
        raise SystemExit(f"{path}: expected a mapping with a 'sequences' list")
    return suite


def roots(suite: dict[str, Any], extra: list[str]) -> list[Path]:
    out = [Path(r) for r in extra]
    env = os.environ.get("SLAM3R_REALDATA")
    if env:
        out += [Path(p) for p in env.split(":") if p]
    for r in suite.get("roots", []):
        p = Path(r)
        out.append(p if p.is_absolute() else REPO / p)
    return out


def find_sequence(seq: dict[str, Any], search: list[Path]) -> Optional[str]:
    """The sequence's folder under the first root holding it (``sample:`` paths as they are), or None.

    A root whose copy is too short for ``first + max_frames`` is passed over for a longer one.
    """
    path = str(seq["path"])
    if path.startswith("sample:"):
        return path
    need = int(seq.get("first", 0)) + int(seq.get("max_frames") or 0)
    for root in search:
        p = root / path
        if (p / "rgb.txt").is_file():
            if need and _count_frames(p) < need:
                continue
            return str(p.resolve())
    return None


def _count_frames(p: Path) -> int:
    with open(p / "rgb.txt", "r", encoding="utf-8", errors="replace") as f:
        return sum(1 for line in f if line.strip() and not line.startswith("#"))


def cases(suite: dict[str, Any], search: list[Path], only: list[str], strides: Optional[list[int]],
          quick: bool) -> tuple[list[dict[str, Any]], list[str]]:
    out, missing = [], []
    for seq in suite["sequences"]:
        if only and seq["name"] not in only:
            continue
        if quick and not only and not seq.get("quick"):
            continue
        path = find_sequence(seq, search)
        if path is None:
            missing.append(seq["name"])
            continue
        for k in strides or seq.get("strides", [1]):
            out.append({"sequence": seq["name"], "type": seq.get("type", "tum"), "path": path,
                        "first": int(seq.get("first", 0)), "max_frames": seq.get("max_frames"),
                        "stride": int(k), "synthetic": bool(seq.get("synthetic", False)),
                        "note": seq.get("note", ""), "gap": seq.get("gap")})
    return out, missing


def materialise_gaps(todo: list[dict[str, Any]], tmp: Path) -> None:
    """Cases with a ``gap: [a, b]`` read a copy of their folder whose ``rgb.txt`` leaves out the colour
    frames ``a <= k < b`` (0-based data lines of the original ``rgb.txt``): the camera is carried away
    unseen and comes back -- a kidnap. The copy links the original files (no data is duplicated) and keeps
    the folder's name (the TUM reader picks the camera from it); everything else is the same for every
    mode, the Open3D runs included."""
    for c in todo:
        gap = c.get("gap")
        if not gap:
            continue
        a, b = int(gap[0]), int(gap[1])
        src = Path(c["path"])
        dst = tmp / f"{c['sequence']}_{a}_{b}" / src.name
        if not dst.exists():
            dst.mkdir(parents=True)
            for item in src.iterdir():
                if item.name != "rgb.txt":
                    (dst / item.name).symlink_to(item.resolve())
            lines, k = [], 0
            for line in (src / "rgb.txt").read_text(encoding="utf-8", errors="replace").splitlines(True):
                if line.strip() and not line.startswith("#"):
                    keep = not (a <= k < b)
                    k += 1
                    if not keep:
                        continue
                lines.append(line)
            (dst / "rgb.txt").write_text("".join(lines), encoding="utf-8")
        c["original_path"] = c["path"]
        c["path"] = str(dst)


def case_name(c: dict[str, Any]) -> str:
    return c["sequence"] + (f"/k{c['stride']}" if c["stride"] != 1 else "")



# ----------------------------------------------------------------------------- one case (child process)
#: ``--set source.KEY=VALUE`` overrides that also reach the reader of the Open3D runs (same frames)
_READER_KEYS = ("distortion", "intrinsics", "depth_scale", "max_time_diff")


def _source(c: dict[str, Any], overrides: list[str] = ()):
    import yaml

    from slam3r_datasets.tum import BonnSource, TumSource

    kw = {}
    for ov in overrides:
        key, _, value = ov.partition("=")
        if key.startswith("source.") and key[7:] in _READER_KEYS:
            kw[key[7:]] = yaml.safe_load(value)
    cls = BonnSource if c["type"] == "bonn" else TumSource
    return cls(c["path"], first=c["first"], stride=c["stride"], max_frames=_frames_before_stride(c), **kw)


def _frames_before_stride(c: dict[str, Any]) -> Optional[int]:
    """``max_frames`` counts the frames of the chunk before the stride: every k-th of the same chunk."""
    if c["max_frames"] is None:
        return None
    return max(1, -(-int(c["max_frames"]) // c["stride"]))


def evaluate(stamps: np.ndarray, poses: np.ndarray, gt: dict[int, np.ndarray], indices: list[int],
             save: str = "") -> dict[str, Any]:
    """ATE / RPE of the poses of the frames with ground truth (evo, the evaluation plugin's protocol).

    ``save``: a path prefix; ``<save>_est.txt`` / ``<save>_gt.txt`` get both trajectories (TUM format).
    """
    from slam3r_plugins.evaluation import evaluate_trajectories

    keep = [i for i, k in enumerate(indices) if k in gt]
    if len(keep) < 3:
        return {"error": f"only {len(keep)} frames have ground truth"}
    g = np.stack([gt[indices[i]] for i in keep])
    if save:
        from slam3r_app.trajectory import write_tum

        Path(save).parent.mkdir(parents=True, exist_ok=True)
        write_tum(save + "_est.txt", stamps[keep], poses[keep])
        write_tum(save + "_gt.txt", stamps[keep], g)
    ev = evaluate_trajectories(stamps[keep], g, stamps[keep], poses[keep], match="index")
    m = ev.metrics
    return {k: m[k] for k in ("ate_se3", "ate", "scale", "rpe_trans", "rpe_trans_se3", "rpe_rot", "num_poses")}


def run_slam3r(c: dict[str, Any], lc: bool, overrides: list[str], save: str = "") -> dict[str, Any]:
    from slam3r_app.config import load_config
    try:
        from slam3r_app.frame_loop import run
    except ImportError:  # a checkout from before the module's rename (the --before runs of this suite)
        from slam3r_app.loop import run
    from slam3r_app.pipeline import Pipeline

    ov = [f"source.type={c['type']}", f"source.path={c['path']}", f"source.first={c['first']}",
          f"source.stride={c['stride']}", *SLAM3R_BASE]
    mf = _frames_before_stride(c)
    ov.append(f"source.max_frames={'null' if mf is None else mf}")  # (not the dataset config's own)
    if not lc:
        ov = [o.replace("disable=[", "disable=[loop_closure,") if o.startswith("disable=[") else o for o in ov]
    ov += overrides
    cfg = load_config(DATASET_CONFIG.get(c["type"], "base.yaml"), overrides=ov)
    with tempfile.TemporaryDirectory(prefix="realdata_") as tmp:
        pipe = Pipeline(cfg, output=tmp)
        t0 = time.perf_counter()
        result = run(cfg, pipeline=pipe)
        wall = time.perf_counter() - t0
        rows = result.poses
        stamps = np.array([r.timestamp for r in rows])
        poses = np.stack([r.pose for r in rows])
        indices = [r.index for r in rows]
        fe = pipe.context.frontend.stats() if pipe.context.frontend else {}
        m = result.metrics
        lcs = result.info.get("loop_closure") or {}
        out = {"frames": len(rows), "wall_s": wall, "ms_per_frame": 1000 * wall / max(len(rows), 1),
               "frontend_ms_per_frame": fe.get("ms_per_frame"),
               "lost": sum(1 for r in rows if str(r.status) in ("lost", "TrackingStatus.LOST")) or fe.get("lost", 0),
               "lost_frontend": fe.get("lost"), "segments": fe.get("segments"),
               "feature_init_used": fe.get("feature_init_used"),
               "feature_checks": fe.get("feature_checks"), "feature_check_switched": fe.get("feature_check_switched"),
               "relocalizations": m.get("relocalizations"), "loops_accepted": m.get("loops_accepted"),
               "loops_rejected": m.get("loop_candidates_rejected"), "keyframes": result.num_keyframes,
               # recovery and culling (issue 19, points 3-5): frames whose final status is lost (neither
               # tracked nor relocalised), what the geometric path did, what the keyframe store holds
               "lost_at_end": sum(1 for r in rows if str(getattr(r.status, "value", r.status)) == "lost"),
               "geometric_init_used": fe.get("geometric_init_used"),
               "loops_by_geometry": lcs.get("loops_by_geometry"),
               "relocalizations_by_geometry": lcs.get("relocalizations_by_geometry"),
               "loop_rejections": lcs.get("rejections"), "keyframes_culled": lcs.get("keyframes_culled"),
               "keyframe_store": pipe.context.keyframes.stats() if pipe.context.keyframes is not None else None,
               "metrics_json": {k: m.get(k) for k in ("ate", "ate_se3", "scale", "rpe_trans", "rpe_trans_se3", "rpe_rot")}}
        out.update(evaluate(stamps, poses, result.gt_poses, indices, save))
    return out


def run_open3d(c: dict[str, Any], overrides: list[str] = (), save: str = "",
               settings: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """Open3D's dense SLAM example loop (frame-to-model), on the reader's frames.

    ``settings``: changes to :data:`O3D_EXAMPLE` (``--o3d-set``), e.g. ``{"depth_max": 6.0}``.
    """
    import open3d as o3d
    import open3d.core as o3c

    cfg = {**O3D_EXAMPLE, **(settings or {})}
    src = _source(c, overrides)
    scale = float(src.depth_scale)
    dev = o3c.Device("CPU:0")
    T = o3c.Tensor(np.identity(4))
    model = o3d.t.pipelines.slam.Model(cfg["voxel_size"], cfg["block_resolution"], cfg["block_count"], T, dev)
    inp = ray = None
    stamps, poses, indices, gt = [], [], [], {}
    lost = 0
    t0 = time.perf_counter()
    for i, f in enumerate(src.frames()):
        if inp is None:
            K = o3c.Tensor(np.asarray(f.intrinsics, dtype=np.float64))
            h, w = f.depth.shape[:2]
            inp = o3d.t.pipelines.slam.Frame(h, w, K, dev)
            ray = o3d.t.pipelines.slam.Frame(h, w, K, dev)
        # as the example reads it: 16-bit depth in sensor units (TUM / Bonn: 5000 a metre)
        d = np.nan_to_num(np.asarray(f.depth, dtype=np.float64))
        depth = np.ascontiguousarray(np.clip(np.round(d * scale), 0, 65535).astype(np.uint16))
        inp.set_data_from_image("depth", o3d.t.geometry.Image(o3c.Tensor(depth)))
        inp.set_data_from_image("color", o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(f.rgb[..., :3]))))
        ok = True
        if i > 0:
            try:
                res = model.track_frame_to_model(inp, ray, scale, cfg["depth_max"], cfg["odometry_distance_thr"])
                T = T @ res.transformation
            except RuntimeError:
                ok = False
                lost += 1
        stamps.append(f.timestamp)
        poses.append(T.cpu().numpy().astype(np.float64))
        indices.append(f.index)
        if f.gt_pose is not None:
            gt[f.index] = np.asarray(f.gt_pose, dtype=np.float64)
        if ok:
            model.update_frame_pose(i, T)
            model.integrate(inp, scale, cfg["depth_max"], cfg["trunc_voxel_multiplier"])
        model.synthesize_model_frame(ray, scale, cfg["depth_min"], cfg["depth_max"], cfg["trunc_voxel_multiplier"],
                                     False)
    wall = time.perf_counter() - t0
    # world = first camera, as slam3r's; the alignment makes this irrelevant to the metrics
    P = np.stack(poses)
    out = {"frames": len(P), "wall_s": wall, "ms_per_frame": 1000 * wall / max(len(P), 1), "lost": lost,
           "relocalizations": None, "loops_accepted": None, "loops_rejected": None, "settings": cfg}
    out.update(evaluate(np.array(stamps), P, gt, indices, save))
    return out


def reader_info(c: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """What the reader does with the sequence (intrinsics, distortion and where they came from)."""
    try:
        info = _source(c, overrides).info()
    except Exception as e:  # noqa: BLE001 - reported with the case
        return {"error": f"{type(e).__name__}: {e}"[:200]}
    return {k: info.get(k) for k in ("intrinsics", "intrinsics_from", "distortion", "distortion_from", "frames")}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    c, mode = spec["case"], spec["mode"]
    save = spec.get("save", "")
    if save:
        save = str(Path(save) / (case_name(c).replace("/", "_") + "_" + mode))
    load0 = os.getloadavg()
    try:
        if mode == "o3d":
            r = run_open3d(c, spec.get("overrides", []), save, spec.get("o3d_settings"))
        else:
            r = run_slam3r(c, lc=(mode == "lc"), overrides=spec.get("overrides", []), save=save)
    except Exception as e:  # noqa: BLE001 - a failed case is a result, not the end of the suite
        r = {"error": f"{type(e).__name__}: {e}"[:400]}
    r["load_before"] = load0
    r["load_after"] = os.getloadavg()
    return r


def run_case(c: dict[str, Any], mode: str, overrides: list[str], timeout: float, save: str = "",
             o3d_settings: Optional[dict[str, float]] = None) -> dict[str, Any]:
    spec = json.dumps({"case": c, "mode": mode, "overrides": overrides, "save": save, "o3d_settings": o3d_settings})
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore")
    try:
        p = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True,
                           timeout=timeout, cwd=str(Path(__file__).resolve().parent), env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": f"exit {p.returncode}: {(p.stderr or p.stdout).strip()[-400:]}"}


# ----------------------------------------------------------------------------- table
def _cm(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _int(v: Any) -> str:
    return "-" if v is None else str(int(v))


def row_text(name: str, mode: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{name:<24} {mode:<5} ERROR {r['error'][:110]}"
    lo = "-" if r.get("loops_accepted") is None else f"{r['loops_accepted']}/{r.get('loops_rejected') or 0}"
    return (f"{name:<24} {mode:<5} {r.get('frames', 0):>5} {_cm(r.get('ate_se3')):>8} {_cm(r.get('ate')):>8} "
            f"{r.get('scale', float('nan')):>6.3f} {_cm(r.get('rpe_trans')):>8} {_cm(r.get('rpe_trans_se3')):>8} "
            f"{r.get('rpe_rot', float('nan')):>7.3f} "
            f"{_int(r.get('lost')):>5} {_int(r.get('relocalizations')):>6} {lo:>7} {r.get('ms_per_frame', 0):>7.0f} "
            f"{_int(r.get('frontend_ms_per_frame')):>6} {r['load_before'][0]:>5.2f} {_int(r.get('lost_at_end')):>4} "
            f"{_held(r):>9}")


def _held(r: dict[str, Any]) -> str:
    """Keyframes the store holds at the end / keyframes made (culling), '-' without a store."""
    ks = r.get("keyframe_store") or {}
    return "-" if not ks or r.get("keyframes") is None else f"{ks.get('keyframes')}/{r['keyframes']}"


HEADER = (f"{'sequence':<24} {'mode':<5} {'frm':>5} {'ATE SE3':>8} {'ATE Sim3':>8} {'scale':>6} {'RPE t':>8} {'RPE SE3':>8} "
          f"{'RPE deg':>7} {'lost':>5} {'reloc':>6} {'loops':>7} {'ms/frm':>7} {'trk ms':>6} {'load':>5} {'end':>4} "
          f"{'kf held':>9}\n"
          f"{'':<24} {'':<5} {'':>5} {'cm':>8} {'cm':>8} {'':>6} {'cm':>8} {'cm':>8} {'':>7} {'':>5} {'':>6} {'acc/rej':>7} "
          f"{'':>7} {'':>6} {'':>5} {'lost':>4} {'/made':>9}")


def markdown_table(doc: dict[str, Any]) -> str:
    """One markdown row per case: slam3r with and without loop closure beside Open3D's dense SLAM.

    ATE SE(3) / Sim(3) in cm (with the Sim(3) scale), frames lost (slam3r: still lost at the end),
    relocalisations, loops accepted / rejected, milliseconds per frame (loaded machines: see the
    raw file's load averages).
    """
    by: dict[str, dict[str, dict[str, Any]]] = {}
    for r in doc["results"]:
        by.setdefault(r["case"], {})[r["mode"]] = r

    def ate(r: Optional[dict[str, Any]], scale: bool = True) -> str:
        if r is None:
            return "not run"
        if "error" in r:
            return "error"
        s = f"{_cm(r.get('ate_se3'))} / {_cm(r.get('ate'))}"
        return s + (f" ({r['scale']:.2f})" if scale and r.get("scale") is not None else "")

    lines = ["| sequence | frames | slam3r, loop closure: ATE SE(3) / Sim(3) cm (scale) | without loop closure: SE(3) | "
             "Open3D dense SLAM: SE(3) / Sim(3) cm (scale) | slam3r lost / relocalised / loops acc-rej | "
             "ms per frame: slam3r / Open3D |",
             "|---|---|---|---|---|---|---|"]
    for case, m in by.items():
        lc, nolc, o3d = m.get("lc"), m.get("nolc"), m.get("o3d")
        ref = lc or nolc or o3d or {}
        ok = lc is not None and "error" not in lc
        lost = (f"{_int(lc.get('lost'))} / {_int(lc.get('relocalizations'))} / "
                f"{_int(lc.get('loops_accepted'))}-{_int(lc.get('loops_rejected'))}") if ok else "-"
        o3d_ms = f"{o3d['ms_per_frame']:.0f}" if o3d is not None and "error" not in o3d else "-"
        lc_ms = f"{lc['ms_per_frame']:.0f}" if ok else "-"
        lines.append(f"| {case} | {ref.get('frames', '-')} | {ate(lc)} | "
                     f"{_cm(nolc.get('ate_se3')) if nolc and 'error' not in nolc else '-'} | {ate(o3d)} | {lost} | "
                     f"{lc_ms} / {o3d_ms} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default=str(SUITE), help="the suite file (YAML)")
    ap.add_argument("--root", action="append", default=[], help="a data root to search first (repeatable)")
    ap.add_argument("--seq", action="append", default=[], help="only this sequence (repeatable)")
    ap.add_argument("--strides", default="", help="comma-separated strides instead of each sequence's own")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--quick", action="store_true", help="only the sequences marked quick")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                    help="a config override for the slam3r runs (repeatable), e.g. rgbd.method=model")
    ap.add_argument("--o3d-set", action="append", default=[], dest="o3d_overrides", metavar="KEY=VALUE",
                    help=f"change one of Open3D's example settings for the o3d runs (repeatable; keys: "
                         f"{', '.join(O3D_EXAMPLE)}), e.g. depth_max=6")
    ap.add_argument("--label", default="", help="a name for this variant (in the results file name)")
    ap.add_argument("--json", default="", help="raw results file (default benchmarks/results/realdata_<date>...)")
    ap.add_argument("--trajectories", default="", help="a folder for every case's estimated and ground-truth "
                                                            "trajectories (TUM format)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    ap.add_argument("--list", action="store_true", help="list the suite and where each sequence was found")
    ap.add_argument("--markdown", default="", metavar="RESULTS_JSON",
                    help="print a raw results file as a markdown table (slam3r beside Open3D) and exit")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.markdown:
        try:
            doc = json.loads(Path(a.markdown).read_text(encoding="utf-8"))
            print(markdown_table(doc))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"--markdown {a.markdown}: not a results file of this benchmark ({type(e).__name__}: {e})",
                  file=sys.stderr)
            return 2
        return 0

    if a.child:  # (imports the installed slam3r; PYTHONPATH may point at another checkout's packages)
        print(json.dumps(child(json.loads(a.child)), default=float))
        return 0

    o3d_settings: dict[str, float] = {}
    for ov in a.o3d_overrides:
        key, eq, value = ov.partition("=")
        if key not in O3D_EXAMPLE or not eq:
            print(f"--o3d-set {ov}: expected KEY=VALUE with KEY one of {', '.join(O3D_EXAMPLE)}", file=sys.stderr)
            return 2
        try:
            o3d_settings[key] = type(O3D_EXAMPLE[key])(float(value))
        except ValueError:
            print(f"--o3d-set {ov}: {value!r} is not a number", file=sys.stderr)
            return 2
    suite = load_suite(Path(a.suite))
    search = roots(suite, a.root)
    strides = [int(s) for s in a.strides.split(",") if s.strip()] or None
    todo, missing = cases(suite, search, a.seq, strides, a.quick)
    gap_dir = tempfile.TemporaryDirectory(prefix="realdata_gaps_")
    materialise_gaps(todo, Path(gap_dir.name))
    if a.list:
        for seq in suite["sequences"]:
            print(f"{seq['name']:<24} {find_sequence(seq, search) or 'NOT FOUND'}   strides {seq.get('strides', [1])}")
        return 0
    unknown = [s for s in a.seq if s not in {q["name"] for q in suite["sequences"]}]
    if unknown:
        print(f"unknown sequence(s) {', '.join(unknown)}; --list shows the suite", file=sys.stderr)
        return 2
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        print(f"unknown mode(s) {', '.join(bad)} (choose from {', '.join(MODES)})", file=sys.stderr)
        return 2
    for name in missing:
        print(f"skipped {name}: not found under {', '.join(str(r) for r in search)}", file=sys.stderr)

    doc: dict[str, Any] = {
        "benchmark": "realdata_bench", "date": time.strftime("%Y-%m-%d %H:%M"), "commit": git_commit() or "",
        "machine": platform.machine(), "cpu": cpu_model(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "load_average_start": os.getloadavg(), "label": a.label,
        "dataset_configs": DATASET_CONFIG, "slam3r_overrides": SLAM3R_BASE + a.overrides,
        "open3d_settings": {**O3D_EXAMPLE, **o3d_settings}, "skipped": missing,
        "results": []}
    out = Path(a.json) if a.json else (REPO / "benchmarks" / "results" /
                                       f"realdata_{time.strftime('%Y%m%d')}{'_' + a.label if a.label else ''}.json")
    print(HEADER, flush=True)
    readers = {case_name(c): reader_info(c, a.overrides) for c in todo}
    for c in todo:
        for mode in modes:
            r = run_case(c, mode, a.overrides, a.timeout, a.trajectories and str(Path(a.trajectories).resolve()),
                         o3d_settings)
            r.setdefault("load_before", os.getloadavg())
            doc["results"].append({"case": case_name(c), "mode": mode, **c, "reader": readers[case_name(c)], **r})
            print(row_text(case_name(c), mode, r), flush=True)
            _write(out, doc)
    doc["load_average_end"] = os.getloadavg()
    _write(out, doc)
    print(f"raw results: {out}")
    return 0


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=float), encoding="utf-8")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
