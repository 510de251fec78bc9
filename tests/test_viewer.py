"""The viser live viewer without a browser: point budget and incremental updates, the server on
localhost during a run, its buttons acting on the run, the TSDF mesh, headless mode, viser missing."""
from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import tests.test_live_support as support
from slam3r_app.config import load_config
from slam3r_app.frame_loop import run
from slam3r_app.hookspecs import hookimpl
from slam3r_app.pipeline import Pipeline
from slam3r_app.plugin_host import PluginHost
from slam3r_plugins.maps.images import colorize, thumbnail
from slam3r_plugins.viewer.plugin import PointMap

pytest.importorskip("viser")

SYNTH = ["source.type=synthetic", "source.synthetic_frames=16", "source.width=128", "source.height=96",
         "source.pace=fast", "frontend=oracle", "progress=false", "viewer.port=0", "rerun.enabled=false"]


# ----------------------------------------------------------------------------- pure parts
def _rigid(yaw: float, t) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec([0, yaw, 0]).as_matrix()
    T[:3, 3] = t
    return T


def test_point_map_sends_only_new_voxels():
    """Chunks live in their frame's camera frame; a new chunk leaves out what the recent ones show (in the world)."""
    from slam3r_app.sim3 import sim3_inverse
    from slam3r_plugins.maps.anchored import transform_chunk

    rng = np.random.default_rng(0)
    world = rng.uniform(0, 1, (5000, 3))
    rgb = rng.integers(0, 255, (5000, 3))
    poses = {0: np.eye(4), 1: _rigid(0.3, [0.2, 0.0, -0.1]), 2: np.eye(4)}
    m = PointMap(voxel=0.05, max_points=100_000)
    p1, c1, rebuilt = m.add(0, world, rgb, poses[0], poses.get)
    n_vox = len(np.unique(np.floor(world / 0.05).astype(int), axis=0))
    assert not rebuilt and len(p1) == n_vox == len(m)
    # the same world points seen from another camera (given in its camera frame): nothing new to send
    cam1 = transform_chunk(sim3_inverse(poses[1]), world)
    p2, _, rebuilt = m.add(1, cam1, rgb, poses[1], poses.get)
    assert not rebuilt and len(p2) == 0
    p3, _, _ = m.add(2, world + 2.0, rgb, poses[2], poses.get)  # a new region: all new
    assert len(p3) == n_vox and len(m.chunks) == 2 and sorted(m.indices()) == [0, 2]
    # chunk 0 placed at its pose is the world cloud (voxel means lie inside their voxels)
    xyz0, _ = m.chunk(0)
    assert np.abs(np.floor(xyz0 / 0.05) - np.floor(np.unique(np.floor(world / 0.05), axis=0))).max() <= 1


def test_point_map_dedup_uses_the_recent_chunks_current_poses():
    rng = np.random.default_rng(2)
    world = rng.uniform(0, 1, (3000, 3))
    rgb = rng.integers(0, 255, (3000, 3))
    poses = {0: np.eye(4)}
    m = PointMap(voxel=0.05, max_points=100_000)
    m.add(0, world, rgb, poses[0], poses.get)
    poses[0] = _rigid(0.0, [3.0, 0, 0])  # a correction moved frame 0 far away: its voxels are free again
    p, _, _ = m.add(1, world, rgb, np.eye(4), poses.get)
    assert len(p) == len(m.chunk(0)[0])


def test_point_map_budget_grows_the_voxel():
    rng = np.random.default_rng(1)
    m = PointMap(voxel=0.01, max_points=1000)
    rebuilds = 0
    for k in range(6):
        _, _, rebuilt = m.add(k, rng.uniform(0, 1, (800, 3)) + [k, 0, 0], rng.integers(0, 255, (800, 3)),
                              np.eye(4), lambda j: np.eye(4))
        rebuilds += rebuilt
        assert len(m) <= 1000
    assert rebuilds >= 1 and m.voxel > 0.01 and len(m.chunks) == 6
    m.clear()
    assert len(m) == 0


def test_colorize_and_thumbnail():
    d = np.linspace(1, 3, 64 * 48, dtype=np.float32).reshape(48, 64)
    d[0, 0] = 0
    c = colorize(d, valid=d > 0)
    assert c.shape == (48, 64, 3) and c.dtype == np.uint8 and (c[0, 0] == 0).all()
    assert not np.array_equal(c[5, 5], c[40, 60])
    assert thumbnail(np.zeros((480, 640, 3), np.uint8), 320).shape == (240, 320, 3)
    assert colorize(None) is None


# ----------------------------------------------------------------------------- in a run
class Probe:
    """Acts like a user in the browser: loads the page, presses the buttons at given frames."""

    def __init__(self):
        self.viewer = None
        self.page = ""
        self.host = ""
        self.saved_mid_run = False
        self.keyframes_before_reset = 0

    @hookimpl
    def slam3r_process_frame(self, frame, estimate, context):
        v = context.state.get("_viewer")
        self.viewer = v or self.viewer
        i = frame.index
        if i == 1:
            url = context.services.viewer_url
            self.host = v.server.get_host()
            with urllib.request.urlopen(url, timeout=120) as r:
                self.page = r.read().decode("utf-8", "replace")
        elif i == 3:
            v.request_save()  # "Save now": written at the end of this frame
        elif i == 4:
            self.saved_mid_run = (context.out / "trajectory.txt").is_file()
            v.toggle_pause()
            assert context.control.paused and v.btn_pause.label == "Resume"
            v.toggle_pause()
            assert not context.control.paused and v.btn_pause.label == "Pause"
        elif i == 6:
            self.keyframes_before_reset = v.keyframes
            v.request_reset()  # applied before the next frame
        elif i == 10:
            v.request_stop()


def run_with(tmp_path: Path, overrides: list[str], *plugins) -> tuple[Pipeline, object]:
    cfg = load_config("webcam.yaml", overrides=SYNTH + overrides)
    host = PluginHost(disable=cfg.run.disable)
    host.register(support, name="live_support")
    for k, p in enumerate(plugins):
        host.register(p, name=f"probe{k}")
    pipe = Pipeline(cfg, output=str(tmp_path / "run"), host=host)
    return pipe, run(cfg, pipeline=pipe)


def test_viewer_serves_localhost_and_buttons_drive_the_run(tmp_path):
    probe = Probe()
    pipe, result = run_with(tmp_path, ["keyframes.mode=all", "viewer.mesh_every=2"], probe)
    v = probe.viewer
    assert result.plugin_errors == {}
    assert probe.host == "127.0.0.1" and v.url.startswith("http://127.0.0.1:")
    assert "<html" in probe.page.lower()
    # the buttons: save now (files written mid-run), pause/resume, reset, stop
    assert probe.saved_mid_run
    assert probe.keyframes_before_reset == 6 and v.keyframes == 4  # (probe runs first) frames 7..10 after the reset
    assert result.ended_by == "user" and result.stop_reason == "stop button in the viewer"
    assert result.frames_seen == 11
    # incremental: one node per keyframe since the reset, each holding only voxels not shown before
    sent = v.stats["points_sent"]
    assert len(sent) == 11 and sent[0] > 200 and v.stats["rebuilds"] == 0
    assert len(v.map) == sum(sent[7:]) and len(v.chunk_nodes) == 4 and len(v.kf_nodes) == 4
    assert len(v.kf_frustums) == 4 and len(v.positions) == 4
    assert v.stats["mesh_updates"] >= 2 and v.mesh_node is not None
    assert "run ended: stop button in the viewer" in v.message
    # the server is gone once the run is over
    assert v.closed
    with pytest.raises(OSError):
        urllib.request.urlopen(v.url, timeout=2)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["ended_by"] == "user"


def test_viewer_point_budget_in_a_run(tmp_path):
    probe = Probe()
    _, result = run_with(tmp_path, ["keyframes.mode=all", "viewer.max_points=1000", "viewer.voxel_fraction=0.002",
                                    "source.synthetic_frames=6", "viewer.mesh=false"], probe)
    v = probe.viewer
    assert result.frames_seen == 6 and v.stats["rebuilds"] >= 1
    assert 0 < len(v.map) <= 1000 and v.mesh_node is None


def test_headless_runs_without_a_server(tmp_path):
    _, result = run_with(tmp_path, ["viewer.enabled=false", "source.synthetic_frames=3"])
    assert result.frames_seen == 3 and result.plugin_errors == {}
    no_viewer_keys = [o for o in SYNTH if not o.startswith("viewer.")]
    cfg = load_config("webcam.yaml", overrides=no_viewer_keys + ["disable=[viewer]", "source.synthetic_frames=3"])
    host = PluginHost(disable=cfg.run.disable)
    host.register(support, name="live_support")
    pipe = Pipeline(cfg, output=str(tmp_path / "run2"), host=host)
    result = run(cfg, pipeline=pipe)
    assert result.frames_seen == 3 and pipe.context.services.viewer_url is None


def test_viser_missing_is_reported_by_name_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "viser", None)  # import viser -> ImportError
    _, result = run_with(tmp_path, ["source.synthetic_frames=3"])
    assert "viser is not installed" in result.plugin_errors["viewer"]
    assert "viewer.enabled=false" in result.plugin_errors["viewer"]
    assert result.frames_seen == 3 and (tmp_path / "run" / "trajectory.txt").is_file()
