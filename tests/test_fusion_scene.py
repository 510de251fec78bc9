"""A scene with exact ground truth for the backend tests, plus tests of the scene itself.

The scene is ``slam3r_datasets.synthetic`` (procedural textured room, exact depth by
ray casting) when that package is importable, else a small analytic room (a box
with a cube inside) rendered with Open3D's RaycastingScene. Either way a test
gets: exact camera-to-world poses, intrinsics, z-depth in metres, colours, and
the distance of any 3D point to the true surfaces.

``ScenePlugin`` registers the source type ``scene`` and the frontend ``scene``:
the frontend returns the true pose and depth, optionally divided by a scale (an
up-to-scale "learned" frontend), with noise and outliers, and counts
``forget_last`` calls.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import pytest

from slam3r_app.config import load_config
from slam3r_app.frontend import Frontend
from slam3r_app.hookspecs import hookimpl
from slam3r_app.pipeline import Pipeline
from slam3r_app.plugin_host import PluginHost
from slam3r_app.sources import FrameSource, select_indices
from slam3r_app.types import Estimate, Frame


# ----------------------------------------------------------------------------- the scene
class _AnalyticRoom:
    """A 4 x 3 x 4 m room with a 0.6 m cube in it; the camera circles and looks around."""

    def __init__(self, frames: int, width: int, height: int, speed: float) -> None:
        import open3d as o3d

        self.width, self.height, self.frames, self.speed = width, height, frames, speed
        f = 0.8 * width
        self.K = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])
        room = o3d.geometry.TriangleMesh.create_box(4.0, 3.0, 4.0).translate((-2.013, -1.507, -1.011))
        cube = o3d.geometry.TriangleMesh.create_box(0.6, 0.6, 0.6).translate((0.31, 0.2, 1.53))
        self.scene = o3d.t.geometry.RaycastingScene()
        for m in (room, cube):
            self.scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(m))

    def pose(self, i: int) -> np.ndarray:
        th = self.speed * i / 0.5  # arc length speed * i on a 0.5 m circle
        yaw = 0.6 * np.sin(th)
        c, s = np.cos(yaw), np.sin(yaw)
        T = np.eye(4)
        T[:3, :3] = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        T[:3, 3] = [0.5 * np.sin(th), 0.1 * np.sin(2 * th), 0.5 - 0.5 * np.cos(th)]
        return T

    def render(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        import open3d as o3d

        c2w = self.pose(i)
        rays = o3d.t.geometry.RaycastingScene.create_rays_pinhole(
            o3d.core.Tensor(self.K), o3d.core.Tensor(np.linalg.inv(c2w)), self.width, self.height)
        ans = self.scene.cast_rays(rays)
        t = ans["t_hit"].numpy()
        dirs = rays.numpy()[..., 3:]
        z = (dirs @ c2w[:3, :3])[..., 2]
        depth = np.where(np.isfinite(t), t * z, 0).astype(np.float32)
        n = np.abs(ans["primitive_normals"].numpy())
        rgb = (40 + 200 * n).clip(0, 255).astype(np.uint8)
        return rgb, depth

    def distance(self, points: np.ndarray) -> np.ndarray:
        import open3d as o3d

        return self.scene.compute_distance(o3d.core.Tensor(np.asarray(points, np.float32))).numpy()


class Scene:
    """Exact-GT scene: ``pose(i)``, ``K``, ``render(i)``, ``distance(points)``, ``timestamp(i)``."""

    def __init__(self, frames: int = 12, width: int = 96, height: int = 72, speed: float = 0.08, seed: int = 1):
        self.frames, self.width, self.height = frames, width, height
        self.kind = "analytic"
        self._seq = None
        try:
            from slam3r_datasets.synthetic import SyntheticSequence

            seq = SyntheticSequence(seed=seed, frames=frames, width=width, height=height, speed=speed)
            rgb, depth = seq.render(0)
            assert depth.shape == (height, width) and rgb.shape == (height, width, 3)
            self._seq, self.kind, self.K = seq, "synthetic", np.asarray(seq.K, dtype=np.float64)
        except ImportError:
            self._room = _AnalyticRoom(frames, width, height, speed)
            self.K = self._room.K
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def pose(self, i: int) -> np.ndarray:
        return np.asarray(self._seq.pose(i) if self._seq is not None else self._room.pose(i), dtype=np.float64)

    def timestamp(self, i: int) -> float:
        return 10.0 + 0.05 * i

    def render(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._cache:
            self._cache[i] = self._seq.render(i) if self._seq is not None else self._room.render(i)
        rgb, depth = self._cache[i]
        return rgb.copy(), depth.copy()

    def distance(self, points: np.ndarray) -> np.ndarray:
        if self._seq is not None:
            return np.asarray(self._seq.scene.distance_to_surface(points))
        return self._room.distance(points)


_SCENES: dict[tuple, Scene] = {}


def get_scene(frames: int = 12, width: int = 96, height: int = 72, speed: float = 0.08) -> Scene:
    """A cached scene (rendering is the slow part of these tests)."""
    key = (frames, width, height, speed)
    if key not in _SCENES:
        _SCENES[key] = Scene(frames, width, height, speed)
    return _SCENES[key]


class SceneSource(FrameSource):
    name = "scene"
    has_gt = True

    def __init__(self, scene: Scene, with_depth: bool = True, first: int = 0, stride: int = 1,
                 max_frames: Optional[int] = None, sigint_at: Optional[int] = None) -> None:
        super().__init__()
        self.scene, self.has_depth = scene, with_depth
        self.idx = select_indices(scene.frames, first, stride, max_frames)
        self.sigint_at = sigint_at

    def __len__(self) -> int:
        return len(self.idx)

    def _iter_raw(self) -> Iterator[Frame]:
        import os
        import signal

        for k, i in enumerate(self.idx):
            if self.sigint_at is not None and k == self.sigint_at:
                os.kill(os.getpid(), signal.SIGINT)
            rgb, depth = self.scene.render(i)
            yield Frame(index=k, timestamp=self.scene.timestamp(i), rgb=rgb,
                        depth=depth if self.has_depth else None, intrinsics=self.scene.K.copy(),
                        gt_pose=self.scene.pose(i), name=f"scene#{i}")


class SceneFrontend(Frontend):
    """True pose and depth divided by ``scale`` (metric when scale == 1), with optional corruption.

    Args:
        scale: predicted units per metre is 1/scale (prediction = truth / scale).
        depth_noise: relative Gaussian noise on the predicted depth.
        outliers: fraction of predicted depth pixels replaced by random values.
        pose_noise: Gaussian noise (metres, before scaling) on the predicted translation.
        points: also return world points.
    """

    name = "scene"

    def __init__(self, scene: Scene, scale: float = 1.0, depth_noise: float = 0.0, outliers: float = 0.0, pose_noise: float = 0.0,
                 points: bool = False, seed: int = 0) -> None:
        self.scene = scene
        self.scale, self.depth_noise, self.outliers, self.pose_noise = scale, depth_noise, outliers, pose_noise
        self.points = points
        self.rng = np.random.default_rng(seed)
        self.cached: list[int] = []
        self.forgotten: list[int] = []

    def track(self, frame: Frame) -> Estimate:
        pose = np.array(frame.gt_pose, dtype=np.float64)
        pose[:3, 3] += self.rng.normal(0, self.pose_noise, 3) if self.pose_noise else 0.0
        pose[:3, 3] /= self.scale
        if frame.depth is not None:
            depth = frame.depth.astype(np.float64)
        else:  # monocular source: the scene still knows the truth
            depth = self.scene.render(int(frame.name.split("#")[1]))[1].astype(np.float64)
        conf = np.full(depth.shape, 2.0, np.float32)
        if self.depth_noise:
            depth = depth * (1 + self.rng.normal(0, self.depth_noise, depth.shape))
        if self.outliers:
            bad = self.rng.random(depth.shape) < self.outliers
            depth = np.where(bad, self.rng.uniform(0.2, 8.0, depth.shape), depth)
            conf = np.where(bad, 1.0, conf).astype(np.float32)  # outliers tend to be less confident
        depth = (depth / self.scale).astype(np.float32)
        est = Estimate(index=frame.index, timestamp=frame.timestamp, pose=pose, intrinsics=frame.intrinsics.copy(),
                       depth=depth, confidence=conf, depth_is_metric=self.scale == 1.0)
        if self.points:
            from slam3r_plugins.maps.common import unproject

            H, W = depth.shape
            pts = np.full((H * W, 3), np.nan, np.float32)
            p, flat = unproject(depth, frame.intrinsics, pose)
            pts[flat] = p
            est.points = pts.reshape(H, W, 3)
        self.cached.append(frame.index)
        return est

    def forget_last(self) -> None:
        self.forgotten.append(self.cached.pop())


class ScenePlugin:
    """Source type ``scene`` and frontend ``scene``; keeps the frontend for inspection."""

    def __init__(self, scene: Scene, with_depth: bool = True, sigint_at: Optional[int] = None, **frontend_kw) -> None:
        self.scene, self.with_depth, self.sigint_at, self.frontend_kw = scene, with_depth, sigint_at, frontend_kw
        self.frontend: Optional[SceneFrontend] = None

    @hookimpl
    def slam3r_make_source(self, source, context):
        if source.type != "scene":
            return None
        return SceneSource(self.scene, self.with_depth, source.first, source.stride, source.max_frames,
                           sigint_at=self.sigint_at)

    @hookimpl
    def slam3r_make_frontend(self, name, context):
        if name != "scene":
            return None
        self.frontend = SceneFrontend(self.scene, **self.frontend_kw)
        return self.frontend


def backend_modules() -> dict:
    import slam3r_plugins.evaluation as evaluation
    import slam3r_plugins.fusion.plugin as fusion
    import slam3r_plugins.keyframes as keyframes
    import slam3r_plugins.pointcloud_map as pointcloud
    import slam3r_plugins.trajectory_export as trajectory

    return {"keyframes": keyframes, "fusion": fusion, "pointcloud": pointcloud, "trajectory": trajectory,
            "evaluation": evaluation}


def make_pipeline(out, plugins: dict, data: Optional[dict] = None, overrides=(), backends=None) -> Pipeline:
    """A Pipeline on the real app core with only the given plugins (no entry points, no model)."""
    base = {"source": {"type": "scene"}, "frontend": "scene", "progress": False}
    for k, v in (data or {}).items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    cfg = load_config(data=base, overrides=list(overrides))
    host = PluginHost(builtins=False, entry_points=False)
    for name, p in plugins.items():
        host.register(p, name)
    mods = backend_modules()
    for name in (backends if backends is not None else list(mods)):
        host.register(mods[name], name)
    return Pipeline(cfg, output=str(out), host=host)


# ----------------------------------------------------------------------------- tests of the scene itself
def test_scene_depth_is_exact_z_depth():
    """Unprojected depth lands on the true surfaces (validates the fixture every backend test uses)."""
    from slam3r_plugins.maps.common import unproject

    sc = get_scene()
    for i in (0, sc.frames - 1):
        rgb, depth = sc.render(i)
        assert rgb.dtype == np.uint8 and depth.dtype == np.float32
        assert (depth > 0).mean() > 0.95
        pts, _ = unproject(depth, sc.K, sc.pose(i), stride=3)
        assert np.abs(sc.distance(pts)).max() < 1e-3


def test_scene_poses_are_rigid_and_move():
    from slam3r_app.trajectory import check_poses

    sc = get_scene()
    P = np.stack([sc.pose(i) for i in range(sc.frames)])
    check_poses(P, "scene")
    steps = np.linalg.norm(np.diff(P[:, :3, 3], axis=0), axis=1)
    assert steps.min() > 0.02
    # not collinear: a Sim(3) alignment is defined
    X = P[:, :3, 3] - P[:, :3, 3].mean(0)
    assert np.linalg.svd(X, compute_uv=False)[1] > 0.05


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
