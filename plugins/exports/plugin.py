"""The ``exports`` plugin: writes COLMAP / nerfstudio / GLB / depth at the end of a run, and the ``export`` command.

During the run (``exports.formats`` not empty) each exported frame's colour image
(``images/<timestamp>.png``; for colmap and nerfstudio) and depth (``depth/<timestamp>.png`` +
``.npz``; for depth) go to disk at once -- nothing per frame is kept in memory but its file name.
The depth of a frontend without metric depth is written in the world's metric scale known at that
time (``context.trajectory.world_scale``) and rewritten at the end if the final scale differs.

At the end of the run (and on "save now") the poses are read from the run's result --
``result.pose_array()``, ``result.timestamps()``, ``result.keyframe_indices``, the final, corrected
poses -- with the trajectory file's scale, the intrinsics from ``result.intrinsics``, the points
and mesh that the fusion and point-cloud exports just handed over in memory
(``context.services.exported``; no file of theirs is read back); then every format is written into
``<run>/<exports.folder>/`` and ``cameras.json`` into the run folder. This hook runs last
(``trylast``), after the trajectory, fusion and point-cloud exports.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from slam3r_app.hookspecs import hookimpl
from slam3r_app.services import ExportedMaps

from .cameras_file import CAMERAS_FILE, CameraRow, write_cameras
from .frame_files import read_depth, rescale_depth, write_color, write_depth
from .options import ExportOptions
from .points import DepthPoints, handed_points
from .scene import NEEDS_IMAGES, ExportError, ExportFrame, ExportScene, stamp_name, subsample_points
from .tracks import TrackBuilder
from .writers import write_formats

log = logging.getLogger("slam3r.exports")

SECTION = "exports"


@dataclass
class _Files:
    name: str
    image: Optional[str] = None
    depth_png: Optional[str] = None
    depth_npz: Optional[str] = None
    depth_scale: float = 1.0  # the scale the depth was written with


@dataclass
class _State:
    opts: ExportOptions
    root: Path
    size: Optional[tuple[int, int]] = None  # (width, height)
    files: dict[int, _Files] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    depth_is_metric: bool = False
    source: dict[str, Any] = field(default_factory=dict)


def _state(context) -> _State:
    st = context.state.get("_exports_state")
    if st is None:
        opts: ExportOptions = context.options(SECTION)
        st = context.state["_exports_state"] = _State(opts, Path(context.out.path) / opts.folder)
    return st


def current_scale(context, depth_is_metric: bool) -> tuple[float, bool]:
    """``(scale, metric)``: the factor from the frontend's units to the exports' units.

    1 for a metric frontend; otherwise the world's scale from the trajectory store
    (``context.trajectory.world_scale``, the one ``trajectory.txt`` is written in); 1 (not metric)
    when none is known.
    """
    if depth_is_metric:
        return 1.0, True
    scale = context.trajectory.world_scale
    return (float(scale.value), True) if scale.metric else (1.0, False)


def _source_description(context) -> dict[str, Any]:
    src = context.config.run.source
    d: dict[str, Any] = {"type": src.type}
    if src.path:
        p = Path(str(src.path)).expanduser()
        d["path"] = str(p.resolve()) if not str(src.path).startswith("sample:") and p.exists() else str(src.path)
    return d


# ----------------------------------------------------------------------------- hooks
@hookimpl
def slam3r_config_sections():
    return {SECTION: ExportOptions}


@hookimpl
def slam3r_run_start(context):
    context.state.pop("_exports_state", None)
    st = _state(context)
    st.source = _source_description(context)
    if st.opts.formats:
        log.info("exports: %s into %s (%s frames)", ", ".join(st.opts.formats), st.root, st.opts.frames)


@hookimpl
def slam3r_process_frame(frame, estimate, context):
    st = _state(context)
    st.size = st.size or (frame.width, frame.height)
    st.depth_is_metric = bool(estimate.depth_is_metric)
    opts = st.opts
    want_images = any(f in NEEDS_IMAGES for f in opts.formats)
    want_depth = "depth" in opts.formats and estimate.depth is not None
    if not (want_images or want_depth) or (opts.frames == "keyframes" and not estimate.is_keyframe):
        return
    name = stamp_name(frame.timestamp)
    if name in st.names:
        name = f"{name}_{frame.index}"
    st.names.add(name)
    files = _Files(name)
    if want_images:
        files.image = write_color(st.root, name, frame.rgb, opts.image_format)
    if want_depth:
        s, _ = current_scale(context, estimate.depth_is_metric)
        depth = np.asarray(estimate.depth, np.float32) * np.float32(s)
        files.depth_png, files.depth_npz = write_depth(st.root, name, depth, estimate.intrinsics, frame.timestamp,
                                                       estimate.confidence)
        files.depth_scale = s
    st.files[int(frame.index)] = files


@hookimpl
def slam3r_reset(context):
    st = _state(context)
    st.files.clear()
    st.names.clear()
    st.size = None


@hookimpl(trylast=True)
def slam3r_export(result, context):
    st = _state(context)
    opts = st.opts
    written: dict[str, str] = {}
    rows = result.poses  # one consistent snapshot of the final poses, in the world's metric scale where known
    if not rows:
        return written
    scale, metric = current_scale(context, st.depth_is_metric)
    indices = [int(p.index) for p in rows]
    stamps = np.array([p.timestamp for p in rows], np.float64)
    poses = np.stack([p.pose for p in rows]).astype(np.float64)
    keyframes = {int(p.index) for p in rows if p.is_keyframe}
    status = {int(p.index): str(getattr(p.status, "value", p.status)) for p in rows}
    intrinsics = result.intrinsics
    if opts.cameras_json:
        cams = [CameraRow(i, float(t), intrinsics[i], i in keyframes, status[i])
                for i, t in zip(indices, stamps) if i in intrinsics]
        w, h = st.size if st.size else (None, None)
        written["cameras"] = str(write_cameras(context.out.file(CAMERAS_FILE), cams, w, h,
                                               {**context.source_info, **st.source}))
    if not opts.formats:
        return written
    _rescale_depth_files(st, scale)
    note = "scale: metric" if metric else "scale: as predicted, arbitrary units (no metric scale known)"
    if metric and scale != 1.0:
        note += f", translations and depth multiplied by {scale:.6g}"
    frames = []
    w, h = st.size or (0, 0)
    lost = 0
    for i, t, pose in zip(indices, stamps, poses):
        if opts.frames == "keyframes" and i not in keyframes:
            continue
        if status[i] == "lost":
            lost += 1  # its pose is a placeholder
            continue
        f = st.files.get(i)
        if any(x in NEEDS_IMAGES for x in opts.formats) and (f is None or f.image is None):
            continue  # no image on disk for it (it was not a keyframe when it was tracked)
        frames.append(ExportFrame(index=i, timestamp=float(t), name=f.name if f else stamp_name(t), pose=pose,
                                  K=np.asarray(intrinsics[i], np.float64), width=w, height=h,
                                  keyframe=i in keyframes, image=f.image if f else None,
                                  depth_png=f.depth_png if f else None, depth_npz=f.depth_npz if f else None))
    if lost:
        log.info("exports: %d frame(s) left out: tracking lost", lost)
    scene = ExportScene(frames=frames, metric=metric, units_note=note,
                        info={"run_folder": str(context.out.path), "frontend": context.config.run.frontend})
    _attach_points(scene, st, context.services.exported, opts)
    tracks = _tracks(scene, st.root, opts, getattr(context, "keyframes", None)) if "colmap" in opts.formats else None
    written.update(write_formats(scene, st.root, opts.formats, opts, tracks))
    return written


def _rescale_depth_files(st: _State, scale: float) -> None:
    """Bring depth written with an earlier scale estimate to the final scale."""
    n = 0
    for f in st.files.values():
        if f.depth_npz and abs(f.depth_scale - scale) > 1e-9 * max(1.0, abs(scale)):
            rescale_depth(st.root, f.depth_png, f.depth_npz, scale / f.depth_scale if f.depth_scale else 1.0)
            f.depth_scale = scale
            n += 1
    if n:
        log.info("exports: %d depth frame(s) rewritten at the final scale %.6g", n, scale)


def _depth_frames(scene: ExportScene) -> list[ExportFrame]:
    """Frames with depth files whose depth is used for points and tracks: keyframes, else all."""
    with_depth = [f for f in scene.frames if f.depth_npz]
    kf = [f for f in with_depth if f.keyframe]
    return kf or with_depth


def _attach_points(scene: ExportScene, st: _State, maps: ExportedMaps, opts: ExportOptions) -> None:
    """The map's points and mesh, handed over in memory by the plugins that wrote them (``maps``)."""
    xyz, rgb, label = handed_points(maps, opts.points)
    if xyz is None and opts.points in ("auto", "depth"):
        acc = DepthPoints(max_points=opts.max_points)
        for f in _depth_frames(scene):
            arrays = read_depth(st.root, f.depth_npz)
            rgb_img = _read_image(st.root / f.image) if f.image else None
            acc.add(f.pose, arrays["K"], arrays["depth"], rgb_img)
        xyz, rgb = acc.points()
        label = f"depth of {acc.frames} frame(s)" if xyz is not None else ""
    if xyz is not None:
        scene.points, scene.colors = subsample_points(xyz, rgb, opts.max_points)
        scene.points_from = label
    scene.mesh = maps.mesh


def _tracks(scene: ExportScene, root: Path, opts: ExportOptions, keyframes=None) -> Optional[TrackBuilder]:
    """Observations from the exported depth files (keyframes), else -- metric runs -- from the depth
    thumbnails of the app's keyframe store (``context.keyframes``)."""
    if not opts.tracks or scene.points is None or scene.points_from.startswith("depth"):
        return None
    tb = TrackBuilder(scene.points)
    frames = _depth_frames(scene)
    for f in frames:
        tb.add(f.index, f.pose, f.K, read_depth(root, f.depth_npz)["depth"])
    if not frames and keyframes is not None and scene.metric:
        exported = {f.index: f for f in scene.frames if f.image}
        for rec in keyframes:
            f = exported.get(rec.index)
            if f is not None and rec.depth is not None and rec.depth_is_metric:
                tb.add(f.index, f.pose, rec.intrinsics, rec.depth.astype(np.float32), K_image=f.K)
    return tb


def _read_image(path: Path) -> Optional[np.ndarray]:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------- the command
@hookimpl
def slam3r_register_commands(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "export",
        help="export a run folder to COLMAP, nerfstudio, GLB or per-frame depth",
        description="Write a finished run in other tools' formats. Poses come from the run's trajectory.txt "
                    "(final, camera-to-world), intrinsics from its cameras.json; colour and sensor depth are "
                    "re-read from the source its config.yaml names, frames matched by timestamp. "
                    "See README, 'Exports'.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  run_slam.py export runs/demo --format colmap --out exports/demo_colmap\n"
               "  run_slam.py export runs/demo --format nerfstudio --format depth --out exports/demo_ns\n"
               "  run_slam.py export runs/demo --format glb --out exports/demo_glb\n",
    )
    p.add_argument("run", metavar="RUN_FOLDER", help="a run folder (holds trajectory.txt and config.yaml)")
    p.add_argument("--format", "-f", dest="formats", action="append", required=True, metavar="FORMAT",
                   help="colmap, nerfstudio, glb or depth (repeatable, or comma-separated)")
    p.add_argument("--out", "-o", default=None, help="export folder, new or empty unless --overwrite "
                   "(default: RUN_FOLDER/exports)")
    p.add_argument("--overwrite", action="store_true",
                   help="clear the --out folder first if it holds an earlier export's files")
    p.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="FILE_OR_MODULE",
                   help="load this plugin (a .py file or a module) for the source type; the run folder's own "
                        "plugins: are never loaded (a run folder is data)")
    p.add_argument("--frames", choices=("all", "keyframes"), default="all", help="which frames (default all)")
    p.add_argument("--image-format", choices=("png", "jpg"), default="png", help="colour images (default png)")
    p.add_argument("--points", choices=("auto", "fusion", "pointcloud", "depth", "none"), default="auto",
                   help="3D points: the run's points.ply / pointcloud.ply, unprojected depth, none (default auto)")
    p.add_argument("--max-points", type=int, default=200_000, help="at most this many points (default 200000)")
    p.add_argument("--no-tracks", action="store_true", help="COLMAP: no tracks (points without observations)")
    p.add_argument("--glb-geometry", choices=("points", "mesh", "both"), default="points",
                   help="GLB: points, the run's mesh.ply, or both (default points)")
    p.add_argument("--glb-max-cameras", type=int, default=200, help="GLB: at most this many frustums (default 200)")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the run's config, e.g. --set source.path=/data/tum/seq (the data moved)")
    p.set_defaults(handler=cmd_export)


#: names an export writes into its folder: a folder holding one of them may be cleared by --overwrite
EXPORT_MARKERS = ("images", "depth", "sparse", "transforms.json", "sparse_pc.ply", "scene.glb")


def prepare_out(out: Path, run: Path, overwrite: bool = False) -> None:
    """The ``--out`` rules (README, "Exports"), as a run folder's: new or empty, or cleared by
    ``--overwrite`` when it holds an earlier export; never a file, nor the run folder itself.

    Raises:
        ExportError: one line naming the folder.
    """
    import shutil

    from slam3r_app.io import describe_os_error

    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder; choose another --out")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ExportError(f"--out {out}: {parent} is a file, not a folder")
    if out.is_dir() and out.resolve() == run.resolve():
        raise ExportError(f"--out {out} is the run folder itself; choose a folder of its own "
                          f"(default: {run / 'exports'})")
    try:
        entries = sorted(out.iterdir()) if out.is_dir() else []
        if entries and not overwrite:
            names = [e.name + ("/" if e.is_dir() else "") for e in entries]
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            raise ExportError(f"--out {out} already holds {len(names)} file{'s' if len(names) != 1 else ''} ({shown}); "
                              f"choose a new --out, or add --overwrite to clear it first")
        if entries:
            if not {e.name for e in entries} & set(EXPORT_MARKERS):
                raise ExportError(f"--overwrite: {out} does not look like an export folder (none of "
                                  f"{', '.join(EXPORT_MARKERS)} in it); not clearing it")
            for e in entries:
                if e.is_dir() and not e.is_symlink():
                    shutil.rmtree(e)
                else:
                    e.unlink()
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot use --out {out}: {describe_os_error(e)}") from None


def cmd_export(args: argparse.Namespace) -> int:
    """Handler of ``run_slam.py export``; returns the exit code."""
    from pydantic import ValidationError

    from slam3r_app.config import pydantic_message

    from .offline import export_run

    formats = [f.strip() for item in args.formats for f in item.split(",") if f.strip()]
    if not formats:
        print(f"error: --format {' '.join(args.formats)!r}: no format named (formats: colmap, nerfstudio, glb, depth)",
              file=sys.stderr)
        return 2
    try:
        opts = ExportOptions(formats=formats, frames=args.frames, image_format=args.image_format, points=args.points,
                             max_points=max(1, args.max_points), tracks=not args.no_tracks,
                             glb_geometry=args.glb_geometry, glb_max_cameras=max(0, args.glb_max_cameras))
    except ValidationError as e:
        msgs = "; ".join(pydantic_message(err) for err in e.errors())
        print(f"error: --format: {msgs} (formats: colmap, nerfstudio, glb, depth)", file=sys.stderr)
        return 2
    run = Path(args.run)
    if not run.is_dir():
        raise ExportError(f"run folder not found: {run}")
    out = Path(args.out) if args.out else run / opts.folder
    prepare_out(out, run, overwrite=args.overwrite)
    written = export_run(run, out, opts, overrides=args.overrides, plugins=tuple(args.plugins))
    for label, path in written.items():
        print(f"  {label}: {path}")
    print(f"exported {args.run} ({', '.join(opts.formats)}) to {out}")
    return 0
