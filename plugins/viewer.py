"""Live 3D view of the run in a browser (plugin ``viewer``), built on viser.

What it shows, while frames arrive:

* the map as a point cloud: each keyframe's confident points (its world points, or
  its depth unprojected at its pose), voxel-downsampled; only points that fall in
  voxels not yet shown are sent, as one new scene node per keyframe (incremental
  updates). The number of points shown is bounded by ``max_points``: when a new
  keyframe would exceed it, the voxel grows by half and the shown map is re-binned
  into one node;
* the TSDF mesh when the ``fusion`` plugin is on (``context.state["fusion_mesh"]``),
  refreshed every ``mesh_every`` keyframes;
* camera frustums of the keyframes, the current camera (with its image) and the
  trajectory of every frame;
* the current image with its depth and confidence (colour-mapped), frames,
  keyframes, frames per second (``context.state["fps"]``), dropped frames of a live
  source (``context.state["dropped"]``) and the number of points shown;
* controls: pause / resume, reset the map, save now, stop; they act on
  ``context.control`` and the frame loop honours them between frames (reset and
  save also at once while paused).

The server binds to ``127.0.0.1`` by default (``viewer.host``: ``0.0.0.0`` to let
other machines connect); ``viewer.port`` 0 takes any free port, and a busy port
the next free one. ``context.state["viewer_url"]`` holds the address.
Headless runs: ``viewer.enabled: false`` (or ``disable: [viewer]``).

The map is drawn in the frontend's units with the first camera at the origin,
OpenCV axes (y down), so the view's up direction is -y.
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from typing import Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slam3r_app.hookspecs import hookimpl

from ._common import voxel_keys

log = logging.getLogger("slam3r.viewer")

SECTION = "viewer"
STATE_KEY = "_viewer"


class ViewerOptions(BaseModel):
    """``viewer:`` live 3D view in the browser (viser)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="serve the live view (false: headless)")
    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 lets other machines connect")
    port: int = Field(8080, ge=0, le=65535, description="port (0: any free port; a busy one: the next free one)")
    frames: Literal["keyframes", "all"] = Field("keyframes", description="frames whose points are added to the map")
    max_points: int = Field(300_000, ge=1000, description="most points shown; the voxel grows to respect it")
    voxel_size: Optional[float] = Field(None, gt=0, description="voxel edge (frontend units); None: voxel_fraction")
    voxel_fraction: float = Field(0.01, gt=0, le=0.5, description="auto voxel as a fraction of the first median depth")
    # points .. pixel_stride: what pointcloud_map.frame_points reads (its PointSelection), viewer defaults
    points: Literal["auto", "world", "depth"] = Field(
        "auto", description="world: the frontend's world points; depth: unproject its depth; auto: world if given")
    conf_quantile: float = Field(0.3, ge=0, lt=1, description="drop pixels below this quantile of a frame's confidence")
    depth_max_factor: Optional[float] = Field(
        5.0, gt=1, description="drop pixels deeper than this multiple of the frame's median depth (None: keep)")
    pixel_stride: int = Field(4, ge=1, le=16, description="use every N-th pixel in both directions")
    point_size: Optional[float] = Field(None, gt=0, description="point size (frontend units); None: 1.5 voxels")
    mesh: bool = Field(True, description="show the TSDF mesh when the fusion plugin is on")
    mesh_every: int = Field(5, ge=1, description="refresh the mesh every N keyframes (one marching-cubes pass)")
    frustum_scale: Optional[float] = Field(None, gt=0, description="frustum size; None: 0.1 x the first median depth")
    max_frustums: int = Field(300, ge=1, description="keyframe frustums kept (the oldest go first)")
    image_max_size: int = Field(320, ge=32, le=4096, description="longest side of the images sent to the browser")
    update_interval: float = Field(0.2, ge=0, description="seconds between updates of images, trajectory and stats")
    keep_open: float = Field(
        0.0, description="after the outputs are written, keep serving this many seconds (-1: until Ctrl-C / Stop)")


# ----------------------------------------------------------------------------- pure helpers
def colorize(values: Optional[np.ndarray], colormap: str = "turbo", lo_q: float = 2.0, hi_q: float = 98.0,
             valid: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """A float map -> ``[H, W, 3]`` uint8 RGB with an OpenCV colour map (invalid pixels black)."""
    if values is None:
        return None
    import cv2

    v = np.asarray(values, dtype=np.float32)
    ok = np.isfinite(v) if valid is None else (np.asarray(valid) & np.isfinite(v))
    out = np.zeros(v.shape + (3,), np.uint8)
    if not ok.any():
        return out
    lo, hi = np.percentile(v[ok], [lo_q, hi_q])
    scaled = np.clip((v - lo) / max(float(hi - lo), 1e-12), 0, 1)
    scaled = np.where(ok, scaled, 0)
    cmap = {"turbo": cv2.COLORMAP_TURBO, "viridis": cv2.COLORMAP_VIRIDIS}.get(colormap, cv2.COLORMAP_TURBO)
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cmap)
    out = bgr[..., ::-1].copy()
    out[~ok] = 0
    return out


def thumbnail(img: Optional[np.ndarray], max_size: int, nearest: bool = False) -> Optional[np.ndarray]:
    """Shrink ``img`` so that its longest side is at most ``max_size`` pixels (``nearest``: never mix values)."""
    if img is None:
        return None
    import cv2

    h, w = img.shape[:2]
    s = max(h, w)
    if s <= max_size:
        return np.ascontiguousarray(img)
    f = max_size / s
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=interp)


class PointMap:
    """The points shown: voxel-deduplicated chunks under a hard budget (no viser here; tested alone).

    :meth:`add` returns the points to send for a new keyframe (only voxels not shown
    yet), or, when the budget would be exceeded, ``rebuilt=True`` with the whole
    re-binned map (the caller replaces every chunk by that one).
    """

    def __init__(self, voxel: float, max_points: int, growth: float = 1.5) -> None:
        if not voxel > 0:
            raise ValueError(f"voxel must be > 0, got {voxel}")
        self.voxel = float(voxel)
        self.max_points = int(max_points)
        self.growth = float(growth)
        self.keys = np.zeros(0, np.int64)  # sorted keys of the voxels shown
        self.chunks: list[tuple[np.ndarray, np.ndarray]] = []  # (xyz float32, rgb uint8) as sent

    def __len__(self) -> int:
        return int(sum(len(c[0]) for c in self.chunks))

    @staticmethod
    def _first_per_voxel(xyz: np.ndarray, rgb: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keys = voxel_keys(xyz, voxel)
        ukeys, first = np.unique(keys, return_index=True)
        return xyz[first], rgb[first], ukeys

    def add(self, xyz: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """Add one frame's points; returns ``(xyz, rgb, rebuilt)`` to send."""
        xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
        rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
        if len(xyz) == 0:
            return xyz, rgb, False
        pts, cols, keys = self._first_per_voxel(xyz, rgb, self.voxel)  # keys sorted, unique
        pos = np.searchsorted(self.keys, keys)
        seen = np.zeros(len(keys), bool)
        inside = pos < len(self.keys)
        seen[inside] = self.keys[pos[inside]] == keys[inside]
        new = ~seen
        pts, cols, keys, pos = pts[new], cols[new], keys[new], pos[new]
        if len(self) + len(pts) <= self.max_points:
            self.keys = np.insert(self.keys, pos, keys)  # stays sorted
            self.chunks.append((pts, cols))
            return pts, cols, False
        # Over budget: grow the voxel until everything fits, then one chunk.
        allx = np.concatenate([c[0] for c in self.chunks] + [pts])
        allc = np.concatenate([c[1] for c in self.chunks] + [cols])
        while True:
            self.voxel *= self.growth
            px, pc, pk = self._first_per_voxel(allx, allc, self.voxel)
            if len(px) <= self.max_points:
                break
        self.keys = pk
        self.chunks = [(px, pc)]
        return px, pc, True

    def clear(self) -> None:
        self.keys = np.zeros(0, np.int64)
        self.chunks = []


def _rot_to_wxyz(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_quat()
    return np.array([w, x, y, z])


def _fov_aspect(K: np.ndarray, width: int, height: int) -> tuple[float, float]:
    fy = float(K[1, 1]) if K is not None and K[1, 1] > 0 else float(max(width, height))
    return float(2.0 * np.arctan2(height / 2.0, fy)), float(width) / float(max(height, 1))


# ----------------------------------------------------------------------------- the live viewer
class LiveViewer:
    """The viser server, its scene and GUI for one run."""

    def __init__(self, opts: ViewerOptions, context: Any) -> None:
        try:
            import viser
        except ImportError as e:
            raise RuntimeError(
                "viewer.enabled is true but viser is not installed: pip install 'slam3r[viewer]' (or pip install "
                "viser), or run headless with --set viewer.enabled=false") from e
        self.opts = opts
        self.context = context
        self.server = viser.ViserServer(host=opts.host, port=opts.port, verbose=False)
        shown = "127.0.0.1" if opts.host in ("0.0.0.0", "::", "") else opts.host  # what a browser here opens
        self.url = f"http://{shown}:{self.server.get_port()}"
        self.lock = threading.RLock()
        self.server.scene.set_up_direction("-y")
        self.server.initial_camera.up = (0.0, -1.0, 0.0)
        self.server.initial_camera.position = (0.0, -1.0, -3.0)
        self.server.initial_camera.look_at = (0.0, 0.0, 1.0)
        self.map: Optional[PointMap] = None
        self.chunk_nodes: list[Any] = []
        self.mesh_node = None
        self.kf_frustums: list[Any] = []
        self.traj_node = None
        self.current_node = None
        self.positions: list[np.ndarray] = []
        self.frames = 0
        self.keyframes = 0
        self.generation = 0
        self.scene_scale: Optional[float] = None  # median depth of the first frame shown
        self.camera_placed = False
        self.last_update = 0.0
        self.message = ""
        self.ended = False
        self.closed = False
        self.stats: dict[str, Any] = {"points_sent": [], "rebuilds": 0, "mesh_updates": 0}
        self._pending: Optional[tuple[Any, Any, np.ndarray]] = None
        self._status_text = ""
        try:
            self._build_gui()
        except BaseException:
            self.server.stop()
            raise
        self._stop_refresh = threading.Event()
        self._refresher = threading.Thread(target=self._refresh_loop, name="slam3r-viewer-refresh", daemon=True)
        self._refresher.start()
        self.context.state["viewer_url"] = self.url
        log.info("viewer: open %s in a browser", self.url)

    # ------------------------------------------------------------------ GUI
    def _build_gui(self) -> None:
        gui = self.server.gui
        gui.configure_theme(control_width="medium", show_share_button=False)
        with gui.add_folder("Run"):
            self.status_md = gui.add_markdown("waiting for the first frame")
            self.btn_pause = gui.add_button("Pause")
            self.btn_reset = gui.add_button("Reset map")
            self.btn_save = gui.add_button("Save now")
            self.btn_stop = gui.add_button("Stop", color="red")
        with gui.add_folder("Show"):
            self.cb_points = gui.add_checkbox("Points", True)
            self.cb_mesh = gui.add_checkbox("Mesh", True)
            self.cb_frustums = gui.add_checkbox("Cameras", True)
        with gui.add_folder("Current frame"):
            blank = np.zeros((24, 32, 3), np.uint8)
            self.img_rgb = gui.add_image(blank, label="image")
            self.img_depth = gui.add_image(blank, label="depth")
            self.img_conf = gui.add_image(blank, label="confidence")
        self.btn_pause.on_click(lambda _: self.toggle_pause())
        self.btn_reset.on_click(lambda _: self.request_reset())
        self.btn_save.on_click(lambda _: self.request_save())
        self.btn_stop.on_click(lambda _: self.request_stop())
        self.cb_points.on_update(lambda _: self._set_visible())
        self.cb_mesh.on_update(lambda _: self._set_visible())
        self.cb_frustums.on_update(lambda _: self._set_visible())

    # Control actions (also called by tests); thread-safe through RunControl.
    def toggle_pause(self) -> None:
        ctl = self.context.control
        if ctl.paused:
            ctl.resume()
            self.btn_pause.label = "Pause"
            self.message = "resumed"
        else:
            ctl.pause()
            self.btn_pause.label = "Resume"
            self.message = "paused"
        log.info("viewer: %s", self.message)
        with self.lock:
            self._update_status()

    def request_reset(self) -> None:
        self.context.control.request_reset()
        self.message = "map reset requested" + (" (applied while paused)" if self.context.control.paused else "")
        log.info("viewer: map reset requested")
        with self.lock:
            self._update_status()

    def request_save(self) -> None:
        self.context.control.request_save()
        self.message = "saving now (paused)" if self.context.control.paused else "saving at the next frame"
        log.info("viewer: save requested")
        with self.lock:
            self._update_status()

    def request_stop(self) -> None:
        self.context.control.request_stop("stop button in the viewer")
        self.message = "stopping: writing outputs"
        log.info("viewer: stop requested")
        with self.lock:
            self._update_status()

    def _set_visible(self) -> None:
        with self.lock:
            for n in self.chunk_nodes:
                n.visible = bool(self.cb_points.value)
            if self.mesh_node is not None:
                self.mesh_node.visible = bool(self.cb_mesh.value)
            for n in self.kf_frustums:
                n.visible = bool(self.cb_frustums.value)

    def _update_status(self) -> None:
        st = self.context.state
        ctl = self.context.control
        label = "Resume" if ctl.paused else "Pause"  # also when paused from the terminal (p)
        if self.btn_pause.label != label:
            self.btn_pause.label = label
        state = ("ended" if self.ended else "stopping" if ctl.stop_requested else "paused" if ctl.paused
                 else "running")
        n_pts = len(self.map) if self.map is not None else 0
        lines = [
            f"**{state}** · frame {self.frames} · {self.keyframes} keyframes",
            f"{st.get('fps', 0.0):.1f} frames/s · dropped {int(st.get('dropped', 0) or 0)}",
            f"{n_pts:,} points" + (f" (voxel {self.map.voxel:.3g})" if self.map is not None else ""),
        ]
        if self.message:
            lines.append(f"_{self.message}_")
        text = "  \n".join(lines)
        if text != self._status_text:  # no message when nothing changed (an idle page stays idle)
            self._status_text = text
            self.status_md.content = text

    # ------------------------------------------------------------------ per frame
    def on_frame(self, frame: Any, est: Any) -> None:
        with self.lock:
            self.frames += 1
            pose = np.asarray(est.pose, dtype=np.float64)
            self.positions.append(pose[:3, 3].copy())
            is_kf = bool(est.is_keyframe)
            if is_kf or self.opts.frames == "all":
                self._add_points(frame, est)
            if is_kf:
                self.keyframes += 1
                self._add_keyframe_frustum(frame, est, pose)
                if self.opts.mesh and self.keyframes % self.opts.mesh_every == 0:
                    self._update_mesh()
            now = time.monotonic()
            if is_kf or now - self.last_update >= self.opts.update_interval:
                self.last_update = now
                self._pending = None
                self._update_current(frame, est, pose)
                self._update_trajectory()
                self._update_status()
            else:  # shown by the refresher if no other frame comes in time
                self._pending = (frame, est, pose)

    def _refresh_loop(self) -> None:
        """Show the newest frame and the status when frames stop coming (paused, stalled camera, end)."""
        period = max(self.opts.update_interval, 0.1)
        while not self._stop_refresh.wait(period):
            with self.lock:
                if self.closed:
                    return
                pending, self._pending = self._pending, None
                try:
                    if pending is not None and time.monotonic() - self.last_update >= period:
                        self.last_update = time.monotonic()
                        self._update_current(*pending)
                        self._update_trajectory()
                    elif pending is not None:
                        self._pending = pending
                    self._update_status()
                except Exception as e:  # noqa: BLE001 - a refresh must never take the run down
                    log.debug("viewer: refresh failed: %s", e)

    def _frame_points(self, frame: Any, est: Any) -> tuple[np.ndarray, np.ndarray, Optional[float]]:
        from .pointcloud_map import frame_points

        return frame_points(frame, est, self.opts)

    def _add_points(self, frame: Any, est: Any) -> None:
        pts, cols, med = self._frame_points(frame, est)
        if self.scene_scale is None and med:
            self.scene_scale = float(med)
            self._place_camera(est, float(med))
        if len(pts) == 0:
            self.stats["points_sent"].append(0)
            return
        if self.map is None:
            voxel = self.opts.voxel_size or (self.opts.voxel_fraction * (self.scene_scale or med or 1.0))
            self.map = PointMap(voxel, self.opts.max_points)
        xyz, rgb, rebuilt = self.map.add(pts, np.clip(cols, 0, 255).astype(np.uint8))
        self.stats["points_sent"].append(int(len(xyz)))
        if len(xyz) == 0:
            return
        size = self.opts.point_size or 1.5 * self.map.voxel
        visible = bool(self.cb_points.value)
        if rebuilt:
            for n in self.chunk_nodes:
                n.remove()
            self.chunk_nodes = []
            self.generation += 1
            self.stats["rebuilds"] += 1
            name = f"/map/points/g{self.generation}_all"
        else:
            name = f"/map/points/g{self.generation}_kf{frame.index:06d}"
        self.chunk_nodes.append(self.server.scene.add_point_cloud(
            name, xyz, rgb, point_size=float(size), point_shape="rounded", precision="float32", visible=visible))

    def _place_camera(self, est: Any, depth: float) -> None:
        """Look at the first frame's scene from behind and above its camera."""
        if self.camera_placed:
            return
        self.camera_placed = True
        pose = np.asarray(est.pose, dtype=np.float64)
        c, R = pose[:3, 3], pose[:3, :3]
        fwd, down = R[:, 2], R[:, 1]
        position = c - 0.45 * depth * fwd - 0.3 * depth * down
        look_at = c + 0.8 * depth * fwd
        up = -down
        ic = self.server.initial_camera
        ic.position, ic.look_at, ic.up = tuple(position), tuple(look_at), tuple(up)
        for client in self.server.get_clients().values():
            try:
                with client.atomic():
                    client.camera.up_direction = tuple(up)
                    client.camera.position = tuple(position)
                    client.camera.look_at = tuple(look_at)
            except Exception as e:  # noqa: BLE001 - a client that just left
                log.debug("viewer: could not move a client's camera: %s", e)

    def _frustum_scale(self) -> float:
        return self.opts.frustum_scale or 0.1 * (self.scene_scale or 1.0)

    def _add_keyframe_frustum(self, frame: Any, est: Any, pose: np.ndarray) -> None:
        fov, aspect = _fov_aspect(np.asarray(est.intrinsics), frame.width, frame.height)
        node = self.server.scene.add_camera_frustum(
            f"/map/keyframes/kf{frame.index:06d}", fov=fov, aspect=aspect, scale=self._frustum_scale(),
            thickness=0.01 * self._frustum_scale(), color=(40, 110, 230), wxyz=_rot_to_wxyz(pose[:3, :3]),
            position=pose[:3, 3], visible=bool(self.cb_frustums.value))
        self.kf_frustums.append(node)
        while len(self.kf_frustums) > self.opts.max_frustums:
            self.kf_frustums.pop(0).remove()

    def _update_current(self, frame: Any, est: Any, pose: np.ndarray) -> None:
        m = self.opts.image_max_size
        rgb = thumbnail(np.asarray(frame.rgb), m)
        self.img_rgb.image = rgb
        depth = est.depth
        if depth is not None:
            d = thumbnail(np.asarray(depth, dtype=np.float32), m, nearest=True)
            self.img_depth.image = colorize(d, "turbo", valid=np.isfinite(d) & (d > 0))
        if est.confidence is not None:
            c = thumbnail(np.asarray(est.confidence, dtype=np.float32), m, nearest=True)
            self.img_conf.image = colorize(c, "viridis")
        fov, aspect = _fov_aspect(np.asarray(est.intrinsics), frame.width, frame.height)
        s = 1.5 * self._frustum_scale()
        small = thumbnail(np.asarray(frame.rgb), 160)
        if self.current_node is None:
            self.current_node = self.server.scene.add_camera_frustum(
                "/current", fov=fov, aspect=aspect, scale=s, thickness=0.02 * s, color=(240, 60, 40), image=small,
                format="jpeg", wxyz=_rot_to_wxyz(pose[:3, :3]), position=pose[:3, 3])
        else:
            self.current_node.wxyz = _rot_to_wxyz(pose[:3, :3])
            self.current_node.position = pose[:3, 3]
            self.current_node.image = small

    def _update_trajectory(self) -> None:
        if len(self.positions) < 2:
            return
        p = np.asarray(self.positions, dtype=np.float32)
        segs = np.stack([p[:-1], p[1:]], axis=1)
        s = self._frustum_scale()
        if self.traj_node is not None:
            self.traj_node.remove()
        self.traj_node = self.server.scene.add_line_segments(
            "/map/trajectory", segs, (240, 60, 40), thickness=0.1 * s)

    def _update_mesh(self) -> None:
        fn = self.context.state.get("fusion_mesh")
        if not callable(fn):
            return
        try:
            res = fn()
        except Exception as e:  # noqa: BLE001 - the mesh is a nicety; the points still show
            log.warning("viewer: could not get the fusion mesh: %s", e)
            return
        if res is None:
            return
        verts, faces, cols = res
        if self.mesh_node is not None:
            self.mesh_node.remove()
        visible = bool(self.cb_mesh.value)
        try:  # vertex colours travel as a GLB (trimesh comes with viser)
            import trimesh

            mesh = trimesh.Trimesh(vertices=verts, faces=faces, vertex_colors=cols, process=False)
            self.mesh_node = self.server.scene.add_mesh_trimesh("/map/mesh", mesh, visible=visible,
                                                                cast_shadow=False, receive_shadow=False)
        except ImportError:
            color = tuple(int(c) for c in np.median(cols, axis=0)) if cols is not None and len(cols) else (180,) * 3
            self.mesh_node = self.server.scene.add_mesh_simple("/map/mesh", verts, faces, color=color, side="double",
                                                               visible=visible, cast_shadow=False,
                                                               receive_shadow=False)
        self.stats["mesh_updates"] += 1

    # ------------------------------------------------------------------ lifecycle
    def reset(self) -> None:
        with self.lock:
            for n in self.chunk_nodes + self.kf_frustums:
                n.remove()
            for n in (self.mesh_node, self.traj_node):
                if n is not None:
                    n.remove()
            self.chunk_nodes, self.kf_frustums = [], []
            self.mesh_node = self.traj_node = None
            self.positions.clear()
            if self.map is not None:
                self.map.clear()
            self.keyframes = 0
            self.message = "map reset"
            self._update_status()

    def on_end(self, result: Any) -> None:
        with self.lock:
            self.ended = True
            pending, self._pending = self._pending, None
            if pending is not None:
                self._update_current(*pending)
            if self.opts.mesh:
                self._update_mesh()
            self._update_trajectory()
            why = result.stop_reason or ("end of the stream" if not result.stopped_early else "stopped")
            self.message = f"run ended: {why}"
            for b in (self.btn_pause, self.btn_reset, self.btn_save, self.btn_stop):
                b.disabled = True
            self._update_status()

    def hold(self, seconds: float) -> None:
        """Keep serving after the run (``keep_open``); Ctrl-C or SIGTERM ends the wait."""
        if seconds == 0:
            return
        self.btn_stop.disabled = False
        done = threading.Event()
        self.btn_stop.on_click(lambda _: done.set())
        ctl = self.context.control
        was_stopped = ctl.stop_requested
        msg = "until Ctrl-C or Stop" if seconds < 0 else f"for {seconds:g} s (Ctrl-C or Stop ends it)"
        log.warning("viewer: outputs written; still serving %s %s", self.url, msg)
        self.message += f" · outputs written; serving {msg}"
        self._update_status()
        deadline = None if seconds < 0 else time.monotonic() + seconds
        try:
            while not done.is_set() and (deadline is None or time.monotonic() < deadline):
                if ctl.stop_requested and not was_stopped:
                    break
                done.wait(0.2)
        except KeyboardInterrupt:
            pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop_refresh.set()
        try:
            self.server.stop()
        except Exception as e:  # noqa: BLE001
            log.debug("viewer: stopping the server: %s", e)


# ----------------------------------------------------------------------------- hooks
def _viewer(context: Any) -> Optional[LiveViewer]:
    return context.state.get(STATE_KEY)


@hookimpl
def slam3r_config_sections():
    return {SECTION: ViewerOptions}


@hookimpl
def slam3r_run_start(context):
    opts: ViewerOptions = context.options(SECTION)
    old = context.state.pop(STATE_KEY, None)
    if old is not None:
        old.close()
    if not opts.enabled:
        return
    v = context.state[STATE_KEY] = LiveViewer(opts, context)
    ref = weakref.ref(v)
    atexit.register(lambda: ref() is not None and ref().close())  # also when switched off after an error


@hookimpl(trylast=True)
def slam3r_process_frame(frame, estimate, context):
    v = _viewer(context)
    if v is not None:
        v.on_frame(frame, estimate)


@hookimpl
def slam3r_reset(context):
    v = _viewer(context)
    if v is not None:
        v.reset()


@hookimpl(trylast=True)
def slam3r_run_end(result, context):
    v = _viewer(context)
    if v is not None:
        v.on_end(result)


@hookimpl
def slam3r_export(result, context):
    v = _viewer(context)
    if v is not None and context.saving_now:
        with v.lock:
            v.message = f"saved at frame {result.frames_seen}"
            v._update_status()
    return None


@hookimpl(trylast=True)
def slam3r_evaluate(result, context):
    """Last hook of a run: stop the server, or with ``keep_open`` leave it serving and hand the wait to
    the frame loop, which runs it after every output is written (outside the plugin time limits)."""
    v = context.state.pop(STATE_KEY, None)
    if v is None:
        return None
    if v.opts.keep_open == 0:
        v.close()
        return None

    def hold_then_close() -> None:
        try:
            v.hold(v.opts.keep_open)
        finally:
            v.close()

    context.state.setdefault("_after_outputs", []).append(hold_then_close)
    return None
