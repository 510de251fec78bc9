"""Replayable recordings of a run with rerun (plugin ``rerun``; optional, off by default).

Logs the streams the live viewer shows, on a ``frame`` timeline (and the frames'
own ``time``): the camera pose and pinhole, its image, depth and confidence, each
keyframe's confident points, the trajectory, the TSDF mesh when fusion is on (every
``mesh_every`` keyframes, and after fusion rebuilt its map), frames per second and
dropped frames.

Following pose corrections. Each keyframe is an entity ``world/map/kf_NNNNNN`` with its
own ``Transform3D`` (the keyframe's current world transform from the trajectory store,
a Sim(3) after monocular corrections: ``mat3x3 = s R``); its points are logged once, in
the keyframe's camera frame, at ``world/map/kf_NNNNNN/points``. With ``frames: all`` a
non-keyframe's points hang under its reference keyframe
(``world/map/kf_NNNNNN/frame_MMMMMM``, with its transform relative to that keyframe).
After a correction (hook ``slam3r_poses_updated``) the transforms that changed are
logged again at the current frame, and the trajectory is re-logged from the store: a
replay shows the map snap into place at the correction, and no point is logged twice.

Modes (``rerun.mode``):

* ``save`` (default): write ``rerun.path`` (``recording.rrd`` in the run folder);
  replay it with ``rerun recording.rrd``;
* ``spawn``: start a rerun viewer on this machine and stream to it;
* ``connect``: stream to a running viewer at ``rerun.url``
  (e.g. ``rerun+http://127.0.0.1:9876/proxy``).

rerun-sdk is optional (``pip install 'slam3r[rerun]'``) and imported only when the
plugin is enabled; a missing rerun-sdk is reported then, by name, and the run goes on.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slam3r_app.hookspecs import hookimpl

log = logging.getLogger("slam3r.rerun")

SECTION = "rerun"
STATE_KEY = "_rerun"

MISSING = ("rerun.enabled is true but rerun-sdk is not installed: pip install 'slam3r[rerun]' (or pip install "
           "'rerun-sdk>=0.16'), or set rerun.enabled: false")


class RerunOptions(BaseModel):
    """``rerun:`` record the run for replay with rerun (needs rerun-sdk)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="record the run with rerun (needs rerun-sdk)")
    mode: Literal["save", "spawn", "connect"] = Field("save", description="save a .rrd file, spawn a viewer, or connect")
    path: str = Field("recording.rrd", description="save mode: file, relative to the run folder")
    url: Optional[str] = Field(None, description="connect mode: viewer address (None: rerun's default)")
    application_id: str = Field("slam3r", description="rerun application id")
    images: bool = Field(True, description="log the image, depth and confidence of every frame")
    image_max_size: int = Field(320, ge=32, le=4096, description="longest side of the logged images")
    points: bool = Field(True, description="log each keyframe's confident points")
    frames: Literal["keyframes", "all"] = Field("keyframes", description="frames whose points are logged")
    pixel_stride: int = Field(4, ge=1, le=16, description="use every N-th pixel for the points")
    conf_quantile: float = Field(0.3, ge=0, lt=1, description="drop pixels below this quantile of the confidence")
    depth_max_factor: Optional[float] = Field(5.0, gt=1, description="drop pixels deeper than this x median depth")
    mesh: bool = Field(True, description="log the TSDF mesh when fusion is on")
    mesh_every: int = Field(10, ge=1, description="log the mesh every N keyframes (and at the end)")


class _PointOpts:
    """The attributes :func:`slam3r_plugins.maps.points.frame_points` reads."""

    def __init__(self, o: RerunOptions) -> None:
        self.points = "auto"
        self.conf_quantile = o.conf_quantile
        self.depth_max_factor = o.depth_max_factor
        self.pixel_stride = o.pixel_stride


class Recorder:
    """One rerun recording stream for one run."""

    def __init__(self, opts: RerunOptions, context: Any) -> None:
        try:
            import rerun as rr
        except ImportError as e:
            raise RuntimeError(MISSING) from e
        self.rr = rr
        self.opts = opts
        self.context = context
        self.rec = rr.RecordingStream(opts.application_id)
        self.path: Optional[Path] = None
        if opts.mode == "save":
            p = Path(opts.path)
            self.path = p if p.is_absolute() else Path(context.out.file(opts.path))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.rec.save(str(self.path))
        elif opts.mode == "spawn":
            self.rec.spawn()
        else:
            if hasattr(self.rec, "connect_grpc"):
                self.rec.connect_grpc(opts.url) if opts.url else self.rec.connect_grpc()
            else:  # pragma: no cover - rerun < 0.23
                self.rec.connect(opts.url) if opts.url else self.rec.connect()
        self.keyframes = 0
        self.entities: dict[int, tuple[str, np.ndarray]] = {}  # frame -> (entity path, transform logged)
        self.anchor: dict[int, int] = {}  # frame -> the keyframe entity it hangs under (itself for a keyframe)
        self.frame_index = 0
        self.frame_time = 0.0
        self.transforms_logged = 0
        self.mesh_version = 0  # fusion's map version logged
        self.log("world", rr.ViewCoordinates.RDF, static=True)  # OpenCV axes: x right, y down, z forward
        log.info("rerun: recording (%s)%s", opts.mode, f" to {self.path}" if self.path else "")

    # ------------------------------------------------------------------ rerun API across versions
    def log(self, path: str, *items: Any, static: bool = False) -> None:
        self.rr.log(path, *items, static=static, recording=self.rec)

    def set_time(self, frame_index: int, timestamp: float) -> None:
        rr = self.rr
        if hasattr(rr, "set_time"):
            rr.set_time("frame", sequence=int(frame_index), recording=self.rec)
            rr.set_time("time", duration=float(timestamp), recording=self.rec)
        else:  # pragma: no cover - rerun < 0.23
            rr.set_time_sequence("frame", int(frame_index), recording=self.rec)
            rr.set_time_seconds("time", float(timestamp), recording=self.rec)

    def scalar(self, path: str, value: float) -> None:
        rr = self.rr
        item = rr.Scalars(float(value)) if hasattr(rr, "Scalars") else rr.Scalar(float(value))
        self.log(path, item)

    # ------------------------------------------------------------------ poses from the trajectory store
    def _transform(self, index: int, fallback: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
        traj = self.context.trajectory
        return traj.transform(index) if index in traj else fallback

    def _local(self, f: int, k: int) -> Optional[np.ndarray]:
        """Frame ``f``'s entity transform now: its world transform (``k == f``), else relative to keyframe ``k``."""
        from slam3r_app.sim3 import sim3_inverse

        T = self._transform(f)
        if T is None or k == f:
            return T
        Tk = self._transform(k)
        return None if Tk is None else sim3_inverse(Tk) @ T

    def _log_transform(self, path: str, T: np.ndarray) -> None:
        T = np.asarray(T, dtype=np.float64)
        self.log(path, self.rr.Transform3D(translation=T[:3, 3], mat3x3=T[:3, :3]))
        self.transforms_logged += 1

    def _entity(self, f: int, T_f: np.ndarray) -> str:
        """The entity of frame ``f``'s points, created (with its transform) on first use.

        A keyframe's entity is ``world/map/kf_<f>`` with its world transform; another frame's hangs under its
        reference keyframe's entity, with its transform relative to that keyframe.
        """
        if f in self.entities:
            return self.entities[f][0]
        traj = self.context.trajectory
        k = traj.reference_keyframe(f) if f in traj else None
        k = f if k is None else int(k)
        if k != f and k not in self.entities:
            Tk = self._transform(k)
            if Tk is None:
                k = f
            else:
                self._entity(k, Tk)
        path = f"world/map/kf_{f:06d}" if k == f else f"{self.entities[k][0]}/frame_{f:06d}"
        local = self._local(f, k)
        if local is None:
            local = np.asarray(T_f, dtype=np.float64)
        self.anchor[f] = k
        self.entities[f] = (path, local.copy())
        self._log_transform(path, local)
        return path

    def log_trajectory(self) -> None:
        traj = self.context.trajectory
        if len(traj) < 2:
            return
        self.log("world/trajectory", self.rr.LineStrips3D([traj.poses()[:, :3, 3].astype(np.float32)]))

    # ------------------------------------------------------------------ per frame
    def on_frame(self, frame: Any, est: Any) -> None:
        from .maps.images import colorize, thumbnail

        rr, o = self.rr, self.opts
        self.frame_index, self.frame_time = int(frame.index), float(frame.timestamp)
        self.set_time(frame.index, frame.timestamp)
        pose = np.asarray(est.pose, dtype=np.float64)
        self.log("world/camera", rr.Transform3D(translation=pose[:3, 3], mat3x3=pose[:3, :3]))
        if o.images:
            rgb = thumbnail(np.asarray(frame.rgb), o.image_max_size)
            f = rgb.shape[1] / frame.width
            K = np.asarray(est.intrinsics, dtype=np.float64).copy()
            K[:2] *= f
            self.log("world/camera/image", rr.Pinhole(image_from_camera=K, resolution=[rgb.shape[1], rgb.shape[0]]))
            self.log("world/camera/image", rr.Image(rgb))
            if est.depth is not None:
                d = thumbnail(np.asarray(est.depth, dtype=np.float32), o.image_max_size, nearest=True)
                self.log("world/camera/image/depth", rr.DepthImage(d))
            if est.confidence is not None:
                c = thumbnail(np.asarray(est.confidence, dtype=np.float32), o.image_max_size, nearest=True)
                self.log("frame/confidence", rr.Image(colorize(c, "viridis")))
        services = self.context.services
        self.scalar("stats/fps", float(services.fps))
        self.scalar("stats/dropped", float(services.dropped))
        if o.points and (est.is_keyframe or o.frames == "all"):
            from .maps.points import camera_points

            pts, cols, _ = camera_points(frame, est, _PointOpts(o))
            if len(pts):
                path = self._entity(int(frame.index), self._transform(int(frame.index), pose))
                self.log(f"{path}/points",
                         rr.Points3D(pts.astype(np.float32), colors=np.clip(cols, 0, 255).astype(np.uint8)))
        if est.is_keyframe:
            self.keyframes += 1
            self.log_trajectory()
            if o.mesh and self.keyframes % o.mesh_every == 0:
                self.log_mesh()
        if o.mesh and int(services.map_version) != self.mesh_version:  # fusion rebuilt its map
            self.log_mesh()

    def on_poses_updated(self, update: Any) -> int:
        """Log again the entity transforms a correction changed (at the current frame); returns how many."""
        self.set_time(self.frame_index, self.frame_time)
        n = 0
        for f, (path, sent) in list(self.entities.items()):
            T = self._local(f, self.anchor[f])
            if T is not None and np.abs(T - sent).max() > 1e-9:
                self._log_transform(path, T)
                self.entities[f] = (path, T)
                n += 1
        self.log_trajectory()
        log.debug("rerun: pose correction (revision %d): %d map transforms logged again", update.revision, n)
        return n

    def log_mesh(self) -> None:
        fn = self.context.services.mesh
        if not callable(fn):
            return
        self.mesh_version = int(self.context.services.map_version)
        res = fn()
        if res is None:
            return
        verts, faces, cols = res
        kw = {"vertex_colors": cols} if cols is not None else {}
        self.log("world/mesh", self.rr.Mesh3D(vertex_positions=verts, triangle_indices=faces, **kw))

    def reset(self) -> None:
        self.log("world/map", self.rr.Clear(recursive=True))
        self.log("world/mesh", self.rr.Clear(recursive=True))
        self.entities.clear()
        self.anchor.clear()
        self.keyframes = 0

    def finish(self) -> None:
        if self.opts.mesh:
            try:
                self.log_mesh()
            except Exception as e:  # noqa: BLE001 - the mesh is a plugin's product: the trajectory is still logged
                log.warning("rerun: could not log the final mesh: %s", e)
        self.log_trajectory()
        self.flush()

    def flush(self) -> None:
        try:
            self.rec.flush(timeout_sec=30.0)
        except TypeError:  # pragma: no cover - older signatures
            self.rec.flush()

    def close(self) -> None:
        self.flush()
        try:
            self.rr.disconnect(recording=self.rec)
        except Exception as e:  # noqa: BLE001 - rerun-sdk's errors vary by version; closing must go on
            log.debug("rerun: disconnect: %s", e)


# ----------------------------------------------------------------------------- hooks
@hookimpl
def slam3r_config_sections():
    return {SECTION: RerunOptions}


@hookimpl
def slam3r_run_start(context):
    opts: RerunOptions = context.options(SECTION)
    context.state.pop(STATE_KEY, None)
    if opts.enabled:
        context.state[STATE_KEY] = Recorder(opts, context)


@hookimpl(trylast=True)
def slam3r_process_frame(frame, estimate, context):
    r = context.state.get(STATE_KEY)
    if r is not None:
        r.on_frame(frame, estimate)


@hookimpl
def slam3r_poses_updated(update, context):
    r = context.state.get(STATE_KEY)
    if r is not None:
        r.on_poses_updated(update)


@hookimpl
def slam3r_reset(context):
    r = context.state.get(STATE_KEY)
    if r is not None:
        r.reset()


@hookimpl
def slam3r_run_end(result, context):
    r = context.state.get(STATE_KEY)
    if r is not None:
        r.finish()


@hookimpl
def slam3r_export(result, context):
    r = context.state.get(STATE_KEY)
    if r is None:
        return None
    r.flush()
    if not context.saving_now:
        r.close()
    return {"rerun": str(r.path)} if r.path is not None else None
