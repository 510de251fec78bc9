"""TSDF building blocks for the ``fusion`` plugin (a library: no hooks here).

* :func:`o3d_device`, :func:`make_grid`, :func:`integrate`: Open3D tensor ``VoxelBlockGrid``
  helpers (CPU or CUDA).
* the fused frames are kept in a :class:`slam3r_plugins.maps.frame_buffer.FrameBuffer` (public: a
  third-party map may keep one too), so that the grid can be rebuilt -- at a final metric scale, or
  at corrected poses (Open3D cannot de-integrate a frame).
* :func:`placement`: where a buffered frame goes in the map, from its current (Sim(3))
  transform and the map's metric scale.
* :class:`GridBuild`: integrates a list of buffered frames into a new grid, at once or in a
  background thread (the frame loop keeps integrating into the old grid meanwhile; the
  caller swaps the new grid in under its lock).

Units. The trajectory store's transforms are in the frontend's units ("store units"). The
map is in "map units": store units times the metric scale ``s_m`` (1 for a metric frontend
or without a scale). Sensor depth is in metres and is never rescaled; predicted depth is
in the store units of the world it was predicted in, so a Sim(3) correction of scale
``s_c`` scales it by ``s_c`` (and by ``s_m`` into map units).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional, Sequence

import numpy as np

from slam3r_app.errors import ConfigError
from slam3r_app.signals import leave_signals_to_the_main_thread
from slam3r_app.sim3 import sim3_scale, strip_scale
from slam3r_app.trajectory import invert_pose

from ..maps.common import scale_pose
from ..maps.frame_buffer import BufferedFrame

log = logging.getLogger("slam3r.fusion")


# ----------------------------------------------------------------------------- Open3D
def o3d_device(name: str):
    """Open3D device for ``fusion.device`` (``auto``: CUDA when this Open3D build has it)."""
    import open3d.core as o3c

    cuda_ok = False
    try:
        cuda_ok = bool(o3c.cuda.is_available())
    except AttributeError:  # pragma: no cover - builds without CUDA module
        cuda_ok = False
    if name == "cuda" and not cuda_ok:
        raise ConfigError("fusion.device: cuda was requested but this Open3D build has no CUDA device "
                          "(use device: auto or cpu)")
    if name == "cuda" or (name == "auto" and cuda_ok):
        return o3c.Device("CUDA:0")
    return o3c.Device("CPU:0")


def make_grid(voxel_size: float, block_resolution: int, block_count: int, device):
    """An empty TSDF grid (attributes tsdf, weight, colour) with voxels of ``voxel_size`` map units."""
    import open3d as o3d
    import open3d.core as o3c

    return o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"),
        attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
        attr_channels=((1), (1), (3)),
        voxel_size=float(voxel_size),
        block_resolution=int(block_resolution),
        block_count=int(block_count),
        device=device,
    )


def integrate(grid, depth_m: np.ndarray, rgb: np.ndarray, K: np.ndarray, c2w: np.ndarray, depth_max: float,
              trunc_voxels: float, device) -> None:
    """Integrate one depth map (map units, ``[H, W]``) with its colour at the rigid camera-to-world ``c2w``."""
    import open3d as o3d
    import open3d.core as o3c

    d = np.ascontiguousarray(np.where(np.isfinite(depth_m), depth_m, 0), dtype=np.float32)
    c = np.ascontiguousarray(rgb, dtype=np.float32) / 255.0
    dimg = o3d.t.geometry.Image(o3c.Tensor(d)).to(device)
    cimg = o3d.t.geometry.Image(o3c.Tensor(c)).to(device)
    intr = o3c.Tensor(np.asarray(K, dtype=np.float64))
    extr = o3c.Tensor(invert_pose(np.asarray(c2w, dtype=np.float64)))
    coords = grid.compute_unique_block_coordinates(dimg, intr, extr, 1.0, float(depth_max), float(trunc_voxels))
    grid.integrate(coords, dimg, cimg, intr, intr, extr, 1.0, float(depth_max), float(trunc_voxels))


def placement(T: np.ndarray, map_scale: float, sensor: bool) -> tuple[float, np.ndarray]:
    """``(depth factor, rigid c2w in map units)`` of a buffered frame whose current transform is ``T``.

    Args:
        T: ``[4, 4]`` current world transform from the trajectory store (store units; Sim(3)).
        map_scale: metric scale ``s_m`` (map units per store unit).
        sensor: the buffered depth is sensor depth (metres: never rescaled) rather than predicted.
    """
    T = np.asarray(T, dtype=np.float64)
    factor = 1.0 if sensor else float(map_scale) * sim3_scale(T)
    return factor, scale_pose(strip_scale(T), map_scale)


def displacement(T_old: np.ndarray, T_new: np.ndarray, reach: float) -> np.ndarray:
    """Upper bound of how far points up to ``reach`` from the camera move between two transforms.

    ``|t_new - t_old| + ||A_new - A_old||_F * reach`` for ``[..., 4, 4]`` stacks (``A`` the 3x3
    block, so rotation and scale changes count); same units as the translations (and ``reach``).
    """
    d = np.asarray(T_new, dtype=np.float64) - np.asarray(T_old, dtype=np.float64)
    return np.linalg.norm(d[..., :3, 3], axis=-1) + np.linalg.norm(d[..., :3, :3], axis=(-2, -1)) * reach


# ----------------------------------------------------------------------------- rebuilding
class GridBuild:
    """Integrate buffered frames into a new grid at given placements, now or in a background thread.

    Args:
        frames: the buffered frames (oldest first).
        transforms: ``[len(frames), 4, 4]`` their world transforms (store units) to build at.
        map_scale: metric scale of the map (map units per store unit).
        new_grid: makes the empty grid.
        depth_max, trunc_voxels, device: as for :func:`integrate` (map units).
        background: run in a daemon thread (else in the constructor).
        revision: the trajectory revision the transforms were read at.
    """

    def __init__(self, frames: Sequence[BufferedFrame], transforms: np.ndarray, map_scale: float,
                 new_grid: Callable[[], object], depth_max: float, trunc_voxels: float, device,
                 background: bool = False, revision: int = -1) -> None:
        self.frames = list(frames)
        self.transforms = np.asarray(transforms, dtype=np.float64).reshape(-1, 4, 4)
        self.map_scale = float(map_scale)
        self.revision = revision
        self.upto = self.frames[-1].index if self.frames else -1
        self.grid = None
        self.error: Optional[BaseException] = None
        self.seconds = 0.0
        self.background = background
        self._args = (new_grid, depth_max, trunc_voxels, device)
        self._cancel = threading.Event()
        self._done = threading.Event()
        if background:
            self._thread = threading.Thread(target=self._run, name="slam3r-fusion-rebuild", daemon=True)
            self._thread.start()
        else:
            self._run()

    def _run(self) -> None:
        leave_signals_to_the_main_thread()
        new_grid, depth_max, trunc, device = self._args
        t0 = time.perf_counter()
        try:
            grid = new_grid()
            for e, T in zip(self.frames, self.transforms):
                if self._cancel.is_set():
                    return
                f, c2w = placement(T, self.map_scale, e.sensor)
                integrate(grid, e.depth.astype(np.float32) * np.float32(f), e.rgb, e.K, c2w, depth_max, trunc, device)
            self.grid = grid
        except BaseException as ex:  # noqa: BLE001 - handed over whole, re-raised on the frame loop's thread
            self.error = ex
        finally:
            self.seconds = time.perf_counter() - t0
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the build is over (True) or ``timeout`` s passed (False)."""
        return self._done.wait(timeout)

    def cancel(self) -> None:
        """Stop after the frame being integrated (the result is dropped); waits for the thread."""
        self._cancel.set()
        self._done.wait()
        self.grid = None
