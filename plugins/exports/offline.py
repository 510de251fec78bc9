"""``run_slam.py export RUN_FOLDER``: the exports of a finished run, from its folder.

What it reads:

* ``trajectory.txt`` (TUM, camera-to-world, OpenCV axes): the final poses, and ``scale.json``: whether
  they are metric (``{"metric": true, "scale": ..., "provenance": ...}``; the header is for people only);
* ``cameras.json``: the intrinsics and image size the run used per frame, and the keyframes
  (without it -- a run with the ``exports`` plugin disabled -- the source's intrinsics, and the
  keyframes of ``trajectory_keyframes.txt``);
* ``summary.json``: whether the run finished writing its outputs (``"complete"``; an incomplete run
  is exported with a warning naming what is missing);
* ``config.yaml``: the resolved config; its ``source`` section builds the same frame source again
  (the same ``first``/``stride``/``max_frames``), whose frames are matched to the trajectory by
  timestamp (within 0.1 ms: the trajectory stores 6 decimals). ``--set source.path=...`` points it
  elsewhere when the data moved; a relative path that no longer resolves from here is looked up at
  the absolute path ``cameras.json`` recorded;
* ``points.ply`` / ``pointcloud.ply`` / ``mesh.ply``: the map (see :mod:`.points`).

A run folder is data: nothing in it is executed. The ``plugins:`` its config lists are named in a
warning, never imported; a source type that a plugin provides needs that plugin installed (entry
point) or named on the command line (``--plugin FILE_OR_MODULE``).

Colour images and the source's sensor depth (metric) are written while the source streams by, one
frame at a time; the depth of a monocular run was only known during the run (use
``exports.formats: [depth]`` in the run's config for it). A live camera cannot be re-read.
"""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np

from slam3r_app.errors import Slam3rError
from slam3r_app.trajectory import SCALE_FILE, read_scale_file, read_tum

from .cameras_file import CAMERAS_FILE, read_cameras
from .frame_files import write_color, write_depth
from .options import ExportOptions
from .points import DepthPoints, map_points
from .scene import NEEDS_IMAGES, ExportError, ExportFrame, ExportScene, subsample_points, unique_names
from .tracks import TrackBuilder
from .writers import write_formats

log = logging.getLogger("slam3r.exports")

#: Largest |trajectory timestamp - frame timestamp| for a match (the trajectory keeps 6 decimals).
MATCH_TOLERANCE = 1e-4


def read_summary(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run's ``summary.json`` (None when missing or unreadable)."""
    import json

    path = run_dir / "summary.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def check_complete(run_dir: Path, summary: Optional[dict[str, Any]]) -> list[str]:
    """Warn when the run did not finish writing its outputs; returns what is missing (for tests)."""
    expected = ("cameras.json", "trajectory_keyframes.txt", "points.ply", "pointcloud.ply", "mesh.ply")
    if summary is not None and summary.get("complete", True) is not False:
        return []
    missing = [n for n in expected if not (run_dir / n).is_file()]
    if summary is None:
        why = "it has no summary.json (the run was killed before it wrote its outputs?)"
    else:
        ended = summary.get("stop_reason") or summary.get("ended_by") or ""
        why = ("summary.json says \"complete\": false (the run ended while its plugins were writing their "
               f"outputs{'; ' + str(ended) if ended else ''})")
    errors = (summary or {}).get("plugin_errors") or {}
    log.warning("%s is an incomplete run: %s; missing: %s%s. Exporting what is there.", run_dir, why,
                ", ".join(missing) or "nothing the export reads",
                f"; plugins that failed: {', '.join(sorted(errors))}" if errors else "")
    return missing or ["(nothing)"]


def read_scale(run_dir: Path) -> tuple[bool, str]:
    """``(metric, scale note)`` of a run folder's ``trajectory.txt``, from its ``scale.json`` (never the header)."""
    try:
        info = read_scale_file(run_dir)
    except Slam3rError as e:
        raise ExportError(str(e)) from None
    if info is None:
        return False, f"scale: unknown ({SCALE_FILE} not found: a run of an older slam3r; taken as arbitrary units)"
    if not info["metric"]:
        return False, "scale: as predicted, arbitrary units (no metric scale known)"
    return True, f"scale: metric ({info.get('provenance', '?')}, {float(info['scale']):.6g} m per unit)"


def _source_config(run_dir: Path, overrides: list[str], recorded: dict[str, Any]):
    from slam3r_app.config import SourceConfig, apply_override

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ExportError(f"{cfg_path}: not found (is {run_dir} a run folder?)")
    from slam3r_app.config import load_yaml, read_config_text
    from slam3r_app.errors import ConfigError

    try:
        raw = load_yaml(read_config_text(cfg_path), str(cfg_path)) or {}
    except ConfigError as e:
        raise ExportError(str(e)) from None
    if not isinstance(raw, dict):
        raise ExportError(f"{cfg_path}: a config must be a mapping of keys, got {type(raw).__name__}")
    for o in overrides:
        apply_override(raw, o, {})
    src = dict(raw.get("source") or {})
    path = src.get("path")
    if path and not str(path).startswith("sample:") and not Path(str(path)).expanduser().exists():
        rec = recorded.get("path")
        if rec and Path(rec).exists() and not any(o.startswith("source.path=") for o in overrides):
            log.info("source.path %s does not resolve from %s: using %s (recorded in %s)", path, Path.cwd(), rec,
                     CAMERAS_FILE)
            src["path"] = rec
    try:
        return SourceConfig.model_validate(src), raw
    except ValueError as e:  # pydantic's ValidationError, a validator's ValueError
        raise ExportError(f"{cfg_path}: source: {e}") from None


def open_source(run_dir: Path, overrides: list[str], recorded: dict[str, Any], plugins: tuple[str, ...] = ()):
    """The run's frame source, built again from its ``config.yaml``.

    Source types come from the installed plugins (entry points) and from ``plugins`` (the command
    line's ``--plugin``), never from the run folder: its config's ``plugins:`` are named, not imported.
    """
    src_cfg, raw = _source_config(run_dir, overrides, recorded)
    if src_cfg.type == "camera":
        raise ExportError(f"{run_dir}: the run read a live camera, which cannot be read again; write the exports "
                          f"during the run instead (exports.formats: [colmap, ...] in its config)")
    from slam3r_app.config import load_config
    from slam3r_app.plugin_host import PluginHost

    listed = [str(p) for p in (raw.get("plugins") or []) if isinstance(p, (str, Path))] \
        if isinstance(raw.get("plugins"), list) else []
    not_loaded = [p for p in listed if p not in plugins]
    if not_loaded:
        log.warning("%s lists plugins: %s; a run folder is data, its plugins are not loaded (name one you trust "
                    "with --plugin, or install it)", run_dir / "config.yaml", ", ".join(not_loaded))
    host = PluginHost(extra=list(plugins), config_file="--plugin")
    ctx = SimpleNamespace(config=load_config(data={"source": src_cfg.model_dump()}), state={})
    source = host.call_first_strict("slam3r_make_source", source=src_cfg, context=ctx)
    if source is None:
        hint = f" (the run used plugins {', '.join(not_loaded)}: --plugin FILE loads one)" if not_loaded else ""
        raise ExportError(f"{run_dir / 'config.yaml'}: no plugin provides source.type '{src_cfg.type}'{hint}")
    return source, src_cfg


def _trajectory_keyframes(run_dir: Path, stamps: np.ndarray) -> set[int]:
    path = run_dir / "trajectory_keyframes.txt"
    if not path.is_file():
        return set(range(len(stamps)))
    kf_t, _ = read_tum(path, what="keyframe trajectory")
    return {int(i) for i in np.flatnonzero(np.isin(np.round(stamps, 6), np.round(kf_t, 6)))}


def export_run(run_dir: Path, out: Path, opts: ExportOptions, overrides: Optional[list[str]] = None,
               plugins: tuple[str, ...] = ()) -> dict[str, str]:
    """Export the run in ``run_dir`` into ``out`` in ``opts.formats``; returns ``{label: path}``.

    ``plugins``: plugin files or modules to load for the source (``--plugin``); the run folder's own
    ``plugins:`` are never loaded.

    Raises:
        ExportError: a run file is missing or malformed, no frame matches, a library is missing.
    """
    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise ExportError(f"run folder not found: {run_dir}")
    traj = run_dir / "trajectory.txt"
    if not traj.is_file():
        raise ExportError(f"{traj}: not found (is {run_dir} a run folder? the trajectory plugin writes it)")
    try:
        stamps, poses = read_tum(traj)
    except Slam3rError as e:
        raise ExportError(str(e)) from None
    if not len(stamps):
        raise ExportError(f"{traj}: holds no poses")
    summary = read_summary(run_dir)
    check_complete(run_dir, summary)
    metric, note = read_scale(run_dir)

    cams = read_cameras(run_dir / CAMERAS_FILE) if (run_dir / CAMERAS_FILE).is_file() else None
    K_of: dict[int, np.ndarray] = {}
    lost: set[int] = set()
    if cams is not None:
        by_stamp = {round(r.timestamp, 6): r for r in cams["frames"]}
        kf = set()
        for i, t in enumerate(stamps):
            r = by_stamp.get(round(float(t), 6))
            if r is not None:
                K_of[i] = r.K
                if r.keyframe:
                    kf.add(i)
                if r.status == "lost":
                    lost.add(i)
        if lost:
            log.info("%d frame(s) left out: tracking lost (%s)", len(lost), CAMERAS_FILE)
    else:
        log.info("%s has no %s: intrinsics from the source", run_dir, CAMERAS_FILE)
        kf = _trajectory_keyframes(run_dir, stamps)
    selected = [i for i in range(len(stamps)) if (opts.frames == "all" or i in kf) and i not in lost]
    names = unique_names(stamps[selected], selected)
    frames = {i: ExportFrame(index=i, timestamp=float(stamps[i]), name=n, pose=poses[i], K=K_of.get(i, np.eye(3)),
                             width=int((cams or {}).get("width") or 0), height=int((cams or {}).get("height") or 0),
                             keyframe=i in kf) for i, n in zip(selected, names)}

    scene = ExportScene(frames=[], metric=metric, units_note=note,
                        info={"run_folder": str(run_dir.resolve()), "trajectory": str(traj.resolve())})
    xyz, rgb, label = map_points(run_dir, opts.points)
    if xyz is not None:
        scene.points, scene.colors = subsample_points(xyz, rgb, opts.max_points)
        scene.points_from = label
    scene.mesh_path = run_dir / "mesh.ply" if (run_dir / "mesh.ply").is_file() else None

    need_stream = (any(f in NEEDS_IMAGES for f in opts.formats) or "depth" in opts.formats
                   or any(i not in K_of for i in frames)
                   or (scene.points is None and opts.points in ("auto", "depth"))
                   or ("colmap" in opts.formats and opts.tracks and scene.points is not None))
    tracks = TrackBuilder(scene.points) if ("colmap" in opts.formats and opts.tracks and scene.points is not None
                                             and metric) else None
    depth_points = DepthPoints(max_points=opts.max_points) if scene.points is None and opts.points in ("auto", "depth") else None
    if need_stream:
        matched = _stream(run_dir, out, opts, overrides or [], cams, stamps, frames, set(K_of), kf, tracks,
                          depth_points, metric, plugins)
        frames = {i: f for i, f in frames.items() if i in matched}
    scene.frames = [frames[i] for i in sorted(frames)]
    if depth_points is not None:
        xyz, rgb = depth_points.points()
        if xyz is not None:
            scene.points, scene.colors = subsample_points(xyz, rgb, opts.max_points)
            scene.points_from = f"depth of {depth_points.frames} frame(s)"
    if scene.frames and any(f.depth_npz for f in scene.frames) and not metric:
        scene.depth_metric = True  # the source's sensor depth, in metres
        log.warning("%s: the trajectory is not metric (%s) but the source's depth is in metres", traj, note)
    if not scene.frames:
        raise ExportError(f"no frame of the source matches a pose of {traj} (timestamps within {MATCH_TOLERANCE} s)")
    return write_formats(scene, out, opts.formats, opts, tracks)


def _stream(run_dir: Path, out: Path, opts: ExportOptions, overrides: list[str], cams, stamps: np.ndarray,
            frames: dict[int, ExportFrame], known_K: set[int], kf: set[int], tracks: Optional[TrackBuilder],
            depth_points: Optional[DepthPoints], metric: bool, plugins: tuple[str, ...] = ()) -> set[int]:
    """Read the source once; write the matched frames' files and feed tracks / depth points. Returns matched indices."""
    source, src_cfg = open_source(run_dir, overrides, (cams or {}).get("source") or {}, plugins)
    order = np.argsort(stamps)
    sorted_t = stamps[order]
    want_images = any(f in NEEDS_IMAGES for f in opts.formats)
    matched: set[int] = set()
    n_seen = 0
    try:
        for frame in source.frames(on_bad_frame=src_cfg.on_bad_frame):
            n_seen += 1
            k = int(np.searchsorted(sorted_t, frame.timestamp))
            cands = [order[j] for j in (k - 1, k) if 0 <= j < len(order)]
            best = min(cands, key=lambda i: abs(stamps[i] - frame.timestamp)) if cands else None
            if best is None or abs(stamps[best] - frame.timestamp) > MATCH_TOLERANCE or best not in frames:
                continue
            f = frames[best]
            f.width, f.height = frame.width, frame.height
            if best not in known_K:
                if frame.intrinsics is None:
                    raise ExportError(f"frame {frame.name or frame.index}: no intrinsics (the run folder has no "
                                      f"{CAMERAS_FILE} and the source gives none: --set source.intrinsics=[fx,fy,cx,cy])")
                f.K = np.asarray(frame.intrinsics, np.float64)
            if want_images:
                f.image = write_color(out, f.name, frame.rgb, opts.image_format)
            if frame.depth is not None:
                if "depth" in opts.formats:
                    f.depth_png, f.depth_npz = write_depth(out, f.name, frame.depth, f.K, f.timestamp)
                use = f.keyframe or not kf
                if tracks is not None and use:
                    tracks.add(f.index, f.pose, f.K, frame.depth)
                if depth_points is not None and use and metric:
                    depth_points.add(f.pose, f.K, frame.depth, frame.rgb)
            matched.add(best)
    finally:
        source.close()
    missing = len(frames) - len(matched)
    if missing:
        log.warning("%d of %d trajectory pose(s) matched no frame of the source (%d frames read)", missing,
                    len(frames), n_seen)
    return matched

