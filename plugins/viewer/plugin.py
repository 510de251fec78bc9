"""Live 3D view of the run in a browser (plugin ``viewer``), built on viser.

What it shows, while frames arrive:

* the map as a point cloud: each keyframe's confident points (its world points, or
  its depth unprojected at its pose), voxel-downsampled, **in the keyframe's camera
  frame** under a scene node ``/map/kf_<index>`` posed with the keyframe's current pose
  from the trajectory store (its frustum hangs under the same node). Only the new
  keyframe's points are sent (incremental updates), minus the voxels the last
  ``dedup_window`` frames already show. The number of points shown is bounded by
  ``max_points``: when a new keyframe would exceed it, the voxel grows by half and every
  keyframe's points are re-binned and re-sent;
* pose corrections (loop closure, relocalisation; hook ``slam3r_poses_updated``) move the
  keyframe nodes in place -- a few bytes per keyframe, no point is re-sent; a Sim(3)
  correction sets the points' node scale. The trajectory line is redrawn from the store;
* the TSDF mesh when the ``fusion`` plugin is on (``context.services.mesh``),
  refreshed every ``mesh_every`` keyframes;
* camera frustums of the keyframes, the current camera (with its image) and the
  trajectory of every frame;
* the current image with its depth and confidence (colour-mapped), frames,
  keyframes, frames per second (``context.services.fps``), dropped frames of a live
  source (``context.services.dropped``) and the number of points shown;
* controls: pause / resume, reset the map, save now, stop; they act on
  ``context.control`` and the frame loop honours them between frames (reset and
  save also at once while paused).

Remote access: bound to an address other machines can reach (``viewer.host: 0.0.0.0`` or a
network address), the viewer warns in the log and its controls (pause, reset, save, stop) are
off: anyone who can reach the port would otherwise control the run, and viser has no login.
``viewer.allow_remote_control: true`` turns them on anyway (a trusted network, or a tunnel).
The terminal keys (plugin ``controls``) work in any case.

The server binds to ``127.0.0.1`` by default (``viewer.host``: ``0.0.0.0`` to let
other machines connect); ``viewer.port`` 0 takes any free port, and a busy port
the next free one. ``context.services.viewer_url`` holds the address.
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
from slam3r_app.signals import leave_signals_to_the_main_thread

from ..maps.images import colorize, thumbnail
from .point_map import PointMap, node_transform

__all__ = ["PointMap", "LiveViewer", "ViewerOptions"]

log = logging.getLogger("slam3r.viewer")

SECTION = "viewer"
STATE_KEY = "_viewer"


class ViewerOptions(BaseModel):
    """``viewer:`` live 3D view in the browser (viser)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="serve the live view (false: headless)")
    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 lets other machines connect "
                      "(view only, unless allow_remote_control)")
    allow_remote_control: bool = Field(
        False, description="keep the Pause / Reset / Save / Stop buttons on when the viewer is bound to an address "
                           "other machines can reach (no login: anyone reaching the port controls the run)")
    port: int = Field(8080, ge=0, le=65535, description="port (0: any free port; a busy one: the next free one)")
    frames: Literal["keyframes", "all"] = Field("keyframes", description="frames whose points are added to the map")
    max_points: int = Field(300_000, ge=1000, description="most points shown; the voxel grows to respect it")
    dedup_window: int = Field(
        8, ge=0, le=1000, description="leave out points that the last N frames shown already cover (0: keep all)")
    voxel_size: Optional[float] = Field(None, gt=0, description="voxel edge (frontend units); None: voxel_fraction")
    voxel_fraction: float = Field(0.01, gt=0, le=0.5, description="auto voxel as a fraction of the first median depth")
    # points .. pixel_stride: what maps.points.frame_points reads (its PointSelection), viewer defaults
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
def _rot_to_wxyz(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_quat()
    return np.array([w, x, y, z])


def _fov_aspect(K: np.ndarray, width: int, height: int) -> tuple[float, float]:
    fy = float(K[1, 1]) if K is not None and K[1, 1] > 0 else float(max(width, height))
    return float(2.0 * np.arctan2(height / 2.0, fy)), float(width) / float(max(height, 1))


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine (``127.0.0.1``, ``::1``,
    ``localhost``); ``0.0.0.0``, ``::`` and network addresses are reachable from others."""
    import ipaddress
    import socket

    h = (host or "").strip().strip("[]")
    if h in ("", "0.0.0.0", "::"):
        return False
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        pass
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(h, None)}
    except OSError:
        return False
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


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
        self.remote = not is_loopback(opts.host)
        self.controls_enabled = not self.remote or opts.allow_remote_control
        if self.remote and not self.controls_enabled:
            log.warning("viewer: bound to %s:%d, which other machines can reach: they see the map, but the controls "
                        "(pause, reset, save, stop) are off; set viewer.allow_remote_control: true to allow them "
                        "(there is no login), or bind 127.0.0.1 and use an SSH tunnel", opts.host, self.server.get_port())
        elif self.remote:
            log.warning("viewer: bound to %s:%d with viewer.allow_remote_control: anyone who can reach this port can "
                        "pause, reset, save and stop the run (there is no login)", opts.host, self.server.get_port())
        self.lock = threading.RLock()
        self.server.scene.set_up_direction("-y")
        self.server.initial_camera.up = (0.0, -1.0, 0.0)
        self.server.initial_camera.position = (0.0, -1.0, -3.0)
        self.server.initial_camera.look_at = (0.0, 0.0, 1.0)
        self.map: Optional[PointMap] = None
        self.kf_nodes: dict[int, Any] = {}  # keyframe -> frame node /map/kf_<k>, posed from the trajectory
        self.kf_poses: dict[int, np.ndarray] = {}  # keyframe -> the rigid pose its node shows
        self.chunk_nodes: dict[int, Any] = {}  # frame -> its points, a child of its anchor keyframe's node
        self.chunk_anchor: dict[int, int] = {}  # frame -> anchor keyframe
        self.chunk_local: dict[int, np.ndarray] = {}  # frame -> Sim(3) of its points in the anchor's node
        self.mesh_node = None
        self.mesh_version = 0  # fusion's map version shown
        self.kf_frustums: dict[int, Any] = {}  # keyframe -> frustum (child of its node), oldest first
        self.traj_node = None
        self.current_node = None
        self.frames = 0
        self.keyframes = 0
        self.generation = 0
        self.scene_scale: Optional[float] = None  # median depth of the first frame shown
        self.camera_placed = False
        self.last_update = 0.0
        self.message = ""
        self.ended = False
        self.closed = False
        self.stats: dict[str, Any] = {"points_sent": [], "rebuilds": 0, "mesh_updates": 0, "pose_updates": 0,
                                      "nodes_moved": 0, "chunks_reposed": 0}
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
        self.context.services.viewer_url = self.url
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
        if self.controls_enabled:
            self.btn_pause.on_click(lambda _: self.toggle_pause())
            self.btn_reset.on_click(lambda _: self.request_reset())
            self.btn_save.on_click(lambda _: self.request_save())
            self.btn_stop.on_click(lambda _: self.request_stop())
        else:  # view only: no callback is registered, so no client can act on the run
            for b in (self.btn_pause, self.btn_reset, self.btn_save, self.btn_stop):
                b.disabled = True
            self.message = "controls off (remote viewer; viewer.allow_remote_control)"
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
            for n in self.chunk_nodes.values():
                n.visible = bool(self.cb_points.value)
            if self.mesh_node is not None:
                self.mesh_node.visible = bool(self.cb_mesh.value)
            for n in self.kf_frustums.values():
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
            is_kf = bool(est.is_keyframe)
            if is_kf or self.opts.frames == "all":
                self._add_points(frame, est)
            if is_kf:
                self.keyframes += 1
                self._add_keyframe_frustum(frame, est)
                if self.opts.mesh and self.keyframes % self.opts.mesh_every == 0:
                    self._update_mesh()
            version = int(self.context.services.map_version)
            if self.opts.mesh and version != self.mesh_version:  # fusion rebuilt its map (corrected poses)
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
        leave_signals_to_the_main_thread()
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

    # ------------------------------------------------------------------ poses from the trajectory store
    def _transform(self, index: int, fallback: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
        """Frame ``index``'s current world transform (Sim(3)) from ``context.trajectory``."""
        traj = self.context.trajectory
        return traj.transform(index) if index in traj else fallback

    def _anchor(self, index: int) -> int:
        """The keyframe whose node carries frame ``index``'s points (itself for a keyframe)."""
        traj = self.context.trajectory
        if index in traj:
            k = traj.reference_keyframe(index)
            if k is not None:
                return int(k)
        return int(index)

    def _kf_node(self, k: int, fallback: Optional[np.ndarray] = None) -> Any:
        """The frame node ``/map/kf_<k>`` (created on first use), posed at ``k``'s current rigid pose."""
        node = self.kf_nodes.get(k)
        if node is not None:
            return node
        from slam3r_app.sim3 import strip_scale

        T = self._transform(k, fallback)
        P = strip_scale(T if T is not None else np.eye(4))
        node = self.server.scene.add_frame(f"/map/kf_{k:06d}", show_axes=False, wxyz=_rot_to_wxyz(P[:3, :3]),
                                           position=P[:3, 3])
        self.kf_nodes[k], self.kf_poses[k] = node, P
        return node

    def _chunk_local(self, f: int, k: int) -> np.ndarray:
        """Sim(3) of frame ``f``'s camera frame inside keyframe ``k``'s node: ``inv(pose(k)) @ transform(f)``."""
        from slam3r_app.sim3 import sim3_inverse

        Tf = self._transform(f)
        if Tf is None or k not in self.kf_poses:
            return self.chunk_local.get(f, np.eye(4))
        return sim3_inverse(self.kf_poses[k]) @ Tf

    def _send_chunk(self, f: int) -> None:
        """(Re-)send frame ``f``'s points under its anchor's node."""
        old = self.chunk_nodes.pop(f, None)
        if old is not None:
            old.remove()
        got = self.map.chunk(f) if self.map is not None else None
        if got is None or not len(got[0]):
            return
        k = self.chunk_anchor[f]
        self._kf_node(k)
        A = self._chunk_local(f, k)
        wxyz, pos, scale = node_transform(A)
        size = self.opts.point_size or 1.5 * self.map.voxel
        self.chunk_nodes[f] = self.server.scene.add_point_cloud(
            f"/map/kf_{k:06d}/points_{f:06d}", got[0], got[1], point_size=float(size), point_shape="rounded",
            precision="float32", wxyz=wxyz, position=pos, scale=scale, visible=bool(self.cb_points.value))
        self.chunk_local[f] = A

    def _add_points(self, frame: Any, est: Any) -> None:
        from ..maps.points import camera_points

        pts, cols, med = camera_points(frame, est, self.opts)
        if self.scene_scale is None and med:
            self.scene_scale = float(med)
            self._place_camera(est, float(med))
        if len(pts) == 0:
            self.stats["points_sent"].append(0)
            return
        if self.map is None:
            voxel = self.opts.voxel_size or (self.opts.voxel_fraction * (self.scene_scale or med or 1.0))
            self.map = PointMap(voxel, self.opts.max_points, window=self.opts.dedup_window)
        f = int(frame.index)
        T = self._transform(f, np.asarray(est.pose, dtype=np.float64))
        xyz, rgb, rebuilt = self.map.add(f, pts, np.clip(cols, 0, 255).astype(np.uint8), T, self._transform)
        self.stats["points_sent"].append(int(len(xyz)))
        if len(xyz) == 0:
            return
        self.chunk_anchor[f] = self._anchor(f)
        if rebuilt:  # every chunk re-binned at a larger voxel: send them all again
            self.generation += 1
            self.stats["rebuilds"] += 1
            for j in list(self.chunk_nodes):
                if j not in self.map.points:
                    self.chunk_nodes.pop(j).remove()
            for j in self.map.indices():
                self._send_chunk(j)
        else:
            self._send_chunk(f)

    def on_poses_updated(self, update: Any) -> None:
        """Move the keyframe nodes to their corrected poses (points are not re-sent)."""
        from slam3r_app.sim3 import strip_scale

        with self.lock:
            moved = 0
            for k, node in self.kf_nodes.items():
                T = self._transform(k)
                if T is None:
                    continue
                P = strip_scale(T)
                if np.abs(P - self.kf_poses[k]).max() > 1e-9:
                    node.wxyz, node.position = _rot_to_wxyz(P[:3, :3]), P[:3, 3]
                    self.kf_poses[k] = P
                    moved += 1
            reposed = 0
            for f, node in self.chunk_nodes.items():  # Sim(3) scale, relocalised frames: their place in the node
                A = self._chunk_local(f, self.chunk_anchor[f])
                if np.abs(A - self.chunk_local[f]).max() > 1e-9:
                    wxyz, pos, scale = node_transform(A)
                    node.wxyz, node.position, node.scale = wxyz, pos, scale
                    self.chunk_local[f] = A
                    reposed += 1
            self.stats["pose_updates"] += 1
            self.stats["nodes_moved"] += moved
            self.stats["chunks_reposed"] += reposed
            self._update_trajectory()
            self.message = f"pose correction: {moved} keyframes moved (revision {update.revision})"
            self._update_status()

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

    def _add_keyframe_frustum(self, frame: Any, est: Any) -> None:
        k = int(frame.index)
        self._kf_node(k, np.asarray(est.pose, dtype=np.float64))
        fov, aspect = _fov_aspect(np.asarray(est.intrinsics), frame.width, frame.height)
        node = self.server.scene.add_camera_frustum(
            f"/map/kf_{k:06d}/frustum", fov=fov, aspect=aspect, scale=self._frustum_scale(),
            thickness=0.01 * self._frustum_scale(), color=(40, 110, 230), visible=bool(self.cb_frustums.value))
        self.kf_frustums[k] = node
        while len(self.kf_frustums) > self.opts.max_frustums:
            self.kf_frustums.pop(next(iter(self.kf_frustums))).remove()

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

    @property
    def positions(self) -> np.ndarray:
        """``[N, 3]`` camera positions of every frame so far, at their current (corrected) poses."""
        return self.context.trajectory.poses()[:, :3, 3]

    def _update_trajectory(self) -> None:
        p = np.asarray(self.positions, dtype=np.float32)
        if len(p) < 2:
            return
        segs = np.stack([p[:-1], p[1:]], axis=1)
        s = self._frustum_scale()
        if self.traj_node is not None:
            self.traj_node.remove()
        self.traj_node = self.server.scene.add_line_segments(
            "/map/trajectory", segs, (240, 60, 40), thickness=0.1 * s)

    def _update_mesh(self) -> None:
        fn = self.context.services.mesh
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
        self.mesh_version = int(self.context.services.map_version)
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
            for n in list(self.chunk_nodes.values()) + list(self.kf_frustums.values()) + list(self.kf_nodes.values()):
                n.remove()
            for n in (self.mesh_node, self.traj_node):
                if n is not None:
                    n.remove()
            self.chunk_nodes, self.kf_frustums, self.kf_nodes = {}, {}, {}
            self.kf_poses, self.chunk_anchor, self.chunk_local = {}, {}, {}
            self.mesh_node = self.traj_node = None
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
        done = threading.Event()
        if self.controls_enabled:
            self.btn_stop.disabled = False
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
        except Exception as e:  # noqa: BLE001 - viser's shutdown errors vary; stopping must go on
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
def slam3r_poses_updated(update, context):
    v = _viewer(context)
    if v is not None:
        v.on_poses_updated(update)


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

    context.services.after_outputs.append(hold_then_close)
    return None
