"""Test plugins for loop closure: the synthetic loop scenes as a source, and a frontend that returns the
ground truth with an injected, growing SE(3) or Sim(3) drift (so the truth of every correction is known).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from scipy.spatial.transform import Rotation

from slam3r_app.config import load_config
from slam3r_app.frontend import Frontend
from slam3r_app.hookspecs import hookimpl
from slam3r_app.pipeline import Pipeline
from slam3r_app.plugin_host import PluginHost
from slam3r_app.sim3 import make_sim3, strip_scale
from slam3r_app.types import Estimate, Frame


def drift(i: int, rot_deg: float, trans: float, log_scale: float) -> np.ndarray:
    """The injected error at frame ``i``: a Sim(3) growing linearly in the frame index.

    Rotation ``i * rot_deg`` degrees about a fixed tilted axis, translation ``i * trans`` along
    a fixed direction, scale ``exp(i * log_scale)``.
    """
    axis = np.array([0.3, 1.0, 0.2]) / np.linalg.norm([0.3, 1.0, 0.2])
    R = Rotation.from_rotvec(np.radians(i * rot_deg) * axis).as_matrix()
    t = i * trans * np.array([1.0, 0.0, 0.5]) / np.sqrt(1.25)
    return make_sim3(R, t, float(np.exp(i * log_scale)))


class DriftingFrontend(Frontend):
    """Ground truth pose and depth, seen through an injected drift ``S_i``: pose ``strip(S_i @ P_i)``,
    depth ``s_i * D_i`` (so the frame's geometry is exactly ``S_i`` applied to the truth).

    ``metric`` (SE(3) drift, metric depth) or not (Sim(3) drift: a monocular frontend).
    """

    name = "drifting"

    def __init__(self, rot_deg: float = 0.02, trans: float = 3e-4, log_scale: float = 0.0, metric: bool = True,
                 start: int = 0) -> None:
        self.rot_deg, self.trans, self.log_scale = rot_deg, trans, log_scale
        self.metric = metric
        self.start = start

    def track(self, frame: Frame) -> Estimate:
        k = max(0, frame.index - self.start)
        S = drift(k, self.rot_deg, self.trans, self.log_scale)
        s = float(np.exp(k * self.log_scale))
        pose = strip_scale(S @ frame.gt_pose)
        depth = (np.asarray(frame.depth, np.float32) * np.float32(s)).astype(np.float32)
        conf = (depth > 0).astype(np.float32)
        return Estimate(index=frame.index, timestamp=frame.timestamp, pose=pose, intrinsics=frame.intrinsics,
                        depth=depth, confidence=conf, depth_is_metric=self.metric)


class LoopScenePlugin:
    """Source type ``synthloop`` (a :class:`SyntheticSource` with the given arguments) and the frontend
    ``drifting``."""

    def __init__(self, frontend: Optional[Frontend] = None, **source_kw: Any) -> None:
        self.source_kw = source_kw
        self.frontend = frontend or DriftingFrontend()
        self.source = None

    @hookimpl
    def slam3r_make_source(self, source, context):
        if source.type != "synthloop":
            return None
        from slam3r_datasets.synthetic import SyntheticSource

        self.source = SyntheticSource(**self.source_kw)
        return self.source

    @hookimpl
    def slam3r_make_frontend(self, name, context):
        return self.frontend if name == "drifting" else None


def loop_pipeline(out, plugin: LoopScenePlugin, data: Optional[dict] = None, backends=("keyframes", "loop_closure"),
                  overrides=()) -> Pipeline:
    """A pipeline with the given built-in backends and the test plugin (no viewer, no files beyond the run's)."""
    import importlib

    cfg = load_config(data={"source": {"type": "synthloop"}, "frontend": "drifting", "progress": False,
                            **(data or {})}, overrides=list(overrides))
    host = PluginHost(builtins=False, entry_points=False)
    modules = {"keyframes": "keyframes", "loop_closure": "loop_closure.plugin", "trajectory": "trajectory_export",
               "fusion": "fusion.plugin", "pointcloud": "pointcloud_map", "evaluation": "evaluation"}
    for name in backends:
        host.register(importlib.import_module(f"slam3r_plugins.{modules[name]}"), name)
    host.register(plugin, "scene")
    return Pipeline(cfg, output=str(out), host=host)
