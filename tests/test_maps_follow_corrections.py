"""Every map follows pose corrections: trajectory, TSDF mesh and points, point-cloud map, viewer, rerun.

Truth is the synthetic room's (tests/test_fusion_scene.py): exact poses, exact depth, and the distance
of any point to the true surfaces. A test frontend returns the true depth but, from frame ``SWITCH`` on,
poses in a wrong world ``E`` (a rigid error for RGB-D; a Sim(3) error with depth scaled accordingly for
the monocular case), so that half the frames are fused at wrong poses: doubled walls. A test plugin then
proposes the exact correction mid-run: the true transform of every keyframe (``PoseUpdate``). The
frontend does not follow corrections, so the core maps its later estimates through the world correction
(``C = inv(E)``): from the correction on, everything is exact again, and every map must show it.

No wall-clock dependence: mid-run rebuilds are asked for with ``rebuild_interval: 0`` and are either
synchronous or waited for.
"""
from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest
from scipy.spatial.transform import Rotation

from slam3r_app.frame_loop import run
from slam3r_app.hookspecs import hookimpl
from slam3r_app.sim3 import make_sim3, strip_scale
from slam3r_app.trajectory import read_tum
from slam3r_app.types import PoseUpdate
from tests.test_fusion_scene import SceneFrontend, ScenePlugin, get_scene, make_pipeline

N = 24  # frames
SWITCH = 12  # first frame whose pose is in the wrong world (a keyframe: keyframes every 3 frames)
CORRECT_AT = 18  # the correction is proposed after this frame
VOXEL = 0.04
KEYFRAMES = {"mode": "motion", "min_translation": 100.0, "min_rotation_deg": 180.0, "max_interval": 3}


def scene():
    return get_scene(frames=N)


def error_transform(sc, scale: float = 1.0) -> np.ndarray:
    """The wrong world: 7 deg about the vertical through the camera at SWITCH, 12 cm sideways, times ``scale``."""
    c = sc.pose(SWITCH)[:3, 3]
    R = Rotation.from_rotvec([0.0, np.deg2rad(7.0), 0.0]).as_matrix()
    about = make_sim3(np.eye(3), c) @ make_sim3(R, [0, 0, 0], scale) @ make_sim3(np.eye(3), -c)
    return make_sim3(np.eye(3), [0.12, 0.0, -0.05]) @ about


class DriftFrontend(SceneFrontend):
    """True depth; from frame SWITCH on, pose ``strip(E @ truth)`` and depth ``s_E x truth`` (E a Sim(3))."""

    def __init__(self, scene, E: np.ndarray, **kw) -> None:
        super().__init__(scene, **kw)
        self.E = E
        self.s = float(np.cbrt(np.linalg.det(E[:3, :3])))

    def track(self, frame):
        est = super().track(frame)
        if frame.index >= SWITCH:
            est.pose = strip_scale(self.E @ est.pose)
            est.depth = (est.depth * np.float32(self.s)).astype(np.float32)
            est.depth_is_metric = self.s == 1.0
        return est


class DriftPlugin(ScenePlugin):
    def __init__(self, scene, E, **kw):
        super().__init__(scene, **kw)
        self.E = E

    @hookimpl
    def slam3r_make_frontend(self, name, context):
        if name != "scene":
            return None
        self.frontend = DriftFrontend(self.scene, self.E, **self.frontend_kw)
        return self.frontend


class Corrector:
    """After frame CORRECT_AT, proposes every keyframe's true transform (what a perfect loop closure gives).

    A keyframe recorded in the wrong world (depth ``s_E x`` truth) needs ``truth @ diag(1/s_E)``: the
    transform that places its recorded camera-frame geometry on the true surfaces.
    """

    def __init__(self, sc, s_err: float = 1.0, at: int = CORRECT_AT) -> None:
        self.sc, self.s_err, self.at = sc, s_err, at
        self.updates: list[PoseUpdate] = []

    def truth(self, k: int) -> np.ndarray:
        T = self.sc.pose(k)
        return T if k < SWITCH else T @ np.diag([1 / self.s_err] * 3 + [1.0])

    @hookimpl
    def slam3r_propose_corrections(self, context, final):
        traj = context.trajectory
        if final or traj.last_index() != self.at:
            return None
        kind = "se3" if self.s_err == 1.0 else "sim3"
        return PoseUpdate(keyframes={k: self.truth(k) for k in traj.keyframe_indices()}, kind=kind,
                          reason="test: the true keyframe poses", based_on_revision=traj.revision)

    @hookimpl
    def slam3r_poses_updated(self, update, context):
        self.updates.append(update)


class MidRunProbe:
    """Reads the live maps after the frame following the correction (the viewer's view of them)."""

    def __init__(self, at: int = CORRECT_AT + 1) -> None:
        self.at = at
        self.mesh = None
        self.rebuilds = None

    @hookimpl(trylast=True)
    def slam3r_process_frame(self, frame, estimate, context):
        if frame.index == self.at:
            self.mesh = context.services.mesh()
            self.rebuilds = list(context.state["_fusion_state"].rebuilds)


def run_scene(tmp_path, name, plugins: dict, fusion=None, pointcloud=None, backends=None, extra=None):
    data = {"keyframes": dict(KEYFRAMES),
            # buffer_stride 1: at 96x72 a pixel already covers ~5 cm of wall (the rebuilt map is made from the buffer)
            "fusion": {"voxel_size": VOXEL, "frames": "all", "device": "cpu", "live_rebuild": "sync",
                       "rebuild_interval": 0.0, "buffer_stride": 1, **(fusion or {})},
            "pointcloud": {"frames": "all", "voxel_size": VOXEL / 2, "pixel_stride": 1, "conf_quantile": 0.0,
                           **(pointcloud or {})}}
    data.update(extra or {})
    pipe = make_pipeline(tmp_path / name, plugins, data, backends=backends or
                         ["keyframes", "fusion", "pointcloud", "trajectory"])
    result = run(pipe.config, pipeline=pipe)
    assert not result.plugin_errors, result.plugin_errors
    assert result.frames_seen == N
    return pipe, result


def mean_distance(sc, path, scale: float = 1.0) -> float:
    if str(path).endswith("mesh.ply"):
        pts = np.asarray(o3d.io.read_triangle_mesh(str(path)).vertices)
    else:
        pts = np.asarray(o3d.io.read_point_cloud(str(path)).points)
    assert len(pts) > 300, f"{path}: {len(pts)} points"
    return float(sc.distance(pts * scale).mean())


def gt_poses(sc) -> np.ndarray:
    return np.stack([sc.pose(i) for i in range(N)])


# ----------------------------------------------------------------------------- rigid (RGB-D) case
@pytest.fixture(scope="module")
def rigid_runs(tmp_path_factory):
    """The same drifting run with and without the correction (shared by the rigid-case tests)."""
    tmp = tmp_path_factory.mktemp("rigid")
    sc = scene()
    E = error_transform(sc)
    corr, probe = Corrector(sc), MidRunProbe()
    with_corr = run_scene(tmp, "corrected", {"scene": DriftPlugin(sc, E), "corr": corr, "probe": probe})
    without = run_scene(tmp, "drifting", {"scene": DriftPlugin(sc, E)})
    return {"sc": sc, "E": E, "corr": corr, "probe": probe, "with": with_corr, "without": without,
            "out": tmp / "corrected", "out_without": tmp / "drifting"}


def test_trajectory_equals_ground_truth_after_the_correction(rigid_runs):
    r = rigid_runs
    assert len(r["corr"].updates) == 1 and len(r["corr"].updates[0].moved) == CORRECT_AT // 3 + 1  # keyframes 0, 3, .., 18
    _, poses = read_tum(r["out"] / "trajectory.txt")
    np.testing.assert_allclose(poses, gt_poses(r["sc"]), atol=2e-6)
    _, drifting = read_tum(r["out_without"] / "trajectory.txt")
    assert np.abs(drifting[SWITCH:, :3, 3] - gt_poses(r["sc"])[SWITCH:, :3, 3]).max() > 0.1


def test_tsdf_mesh_and_points_lie_on_the_true_surfaces_after_the_correction(rigid_runs):
    r = rigid_runs
    sc = r["sc"]
    mesh_ok = mean_distance(sc, r["out"] / "mesh.ply")
    points_ok = mean_distance(sc, r["out"] / "points.ply")
    mesh_bad = mean_distance(sc, r["out_without"] / "mesh.ply")
    points_bad = mean_distance(sc, r["out_without"] / "points.ply")
    print(f"mesh mean distance: corrected {mesh_ok * 1000:.1f} mm, without the correction {mesh_bad * 1000:.1f} mm;"
          f" points {points_ok * 1000:.1f} / {points_bad * 1000:.1f} mm (voxel {VOXEL * 1000:.0f} mm)")
    assert mesh_ok < 0.5 * VOXEL and points_ok < 0.5 * VOXEL
    assert mesh_bad > 2 * mesh_ok and points_bad > 2 * points_ok  # doubled walls without it
    info = r["with"][1].info
    assert [b["when"] for b in info["fusion_rebuilds"]] == ["mid-run"]  # nothing left to do at the end


def test_the_live_mesh_follows_the_correction_mid_run(rigid_runs):
    r = rigid_runs
    probe = r["probe"]
    assert probe.rebuilds and probe.rebuilds[0]["when"] == "mid-run"
    verts = probe.mesh[0]
    assert r["sc"].distance(verts).mean() < 0.5 * VOXEL


def test_pointcloud_follows_the_correction(rigid_runs):
    r = rigid_runs
    ok = mean_distance(r["sc"], r["out"] / "pointcloud.ply")
    bad = mean_distance(r["sc"], r["out_without"] / "pointcloud.ply")
    print(f"pointcloud mean distance: corrected {ok * 1000:.1f} mm, without {bad * 1000:.1f} mm")
    assert ok < 0.25 * VOXEL and bad > 3 * ok


def test_background_rebuild_swaps_in_a_map_with_the_frames_fused_meanwhile(tmp_path, monkeypatch):
    """live_rebuild auto: once the live mesh is read, a correction rebuilds in a thread; frames fused while it
    runs are added before the swap. The thread is held and released by the test (no timing)."""
    from slam3r_plugins.fusion import tsdf as _tsdf

    gate = __import__("threading").Event()
    run_orig = _tsdf.GridBuild._run

    def gated(self):
        if self.background:
            assert gate.wait(60)
        run_orig(self)

    monkeypatch.setattr(_tsdf.GridBuild, "_run", gated)

    class Driver:
        def __init__(self):
            self.mesh = None
            self.rebuilds_at = {}

        @hookimpl(trylast=True)
        def slam3r_process_frame(self, frame, estimate, context):
            st = context.state["_fusion_state"]
            self.rebuilds_at[frame.index] = len(st.rebuilds)
            if frame.index == 2:
                context.services.mesh()  # a live reader (the viewer does this): auto -> background
            elif frame.index == CORRECT_AT + 2:  # two frames fused into the old map meanwhile
                assert st.worker is not None and not st.worker.done
                gate.set()
                assert st.worker.wait(60)
            elif frame.index == CORRECT_AT + 3:
                self.mesh = context.services.mesh()

    sc = scene()
    driver = Driver()
    pipe, result = run_scene(tmp_path, "bg", {"scene": DriftPlugin(sc, error_transform(sc)), "corr": Corrector(sc),
                                              "driver": driver}, fusion={"live_rebuild": "auto"})
    rebuilds = result.info["fusion_rebuilds"]
    assert [b["when"] for b in rebuilds] == ["mid-run"] and rebuilds[0]["background"]
    assert driver.rebuilds_at[CORRECT_AT + 2] == 0 and driver.rebuilds_at[CORRECT_AT + 3] == 1
    assert rebuilds[0]["frames"] == CORRECT_AT + 3  # frames 0..18 rebuilt, 19 and 20 added before the swap
    assert sc.distance(driver.mesh[0]).mean() < 0.5 * VOXEL
    assert mean_distance(sc, tmp_path / "bg" / "mesh.ply") < 0.5 * VOXEL
    assert pipe.context.services.map_version == 1


def test_without_a_live_reader_the_map_is_rebuilt_at_the_end_and_on_save(tmp_path):
    sc = scene()

    class Saver:
        @hookimpl(trylast=True)
        def slam3r_process_frame(self, frame, estimate, context):
            if frame.index == CORRECT_AT + 1:
                context.control.request_save()  # "save now": written after this frame

    pipe, result = run_scene(tmp_path, "end", {"scene": DriftPlugin(sc, error_transform(sc)), "corr": Corrector(sc),
                                               "saver": Saver()}, fusion={"live_rebuild": "auto"})
    assert [b["when"] for b in result.info["fusion_rebuilds"]] == ["save now"]
    assert mean_distance(sc, tmp_path / "end" / "mesh.ply") < 0.5 * VOXEL


def test_a_background_rebuild_still_running_at_the_end_is_waited_for(tmp_path):
    """The correction comes after the last frame: the end of the run takes the background build in."""
    sc = scene()
    pipe, result = run_scene(tmp_path, "last", {"scene": DriftPlugin(sc, error_transform(sc)),
                                                "corr": Corrector(sc, at=N - 1)},
                             fusion={"live_rebuild": "background"})
    assert [b["when"] for b in result.info["fusion_rebuilds"]] == ["mid-run"]
    assert result.info["fusion_rebuilds"][0]["background"] and result.info["fusion_rebuilds"][0]["frames"] == N
    assert mean_distance(sc, tmp_path / "last" / "mesh.ply") < 0.5 * VOXEL


def test_frame_buffer_is_bounded_and_spread_over_the_run():
    from slam3r_plugins.maps import BufferedFrame, FrameBuffer

    buf = FrameBuffer(max_frames=10)
    one = None
    for i in range(100):
        one = BufferedFrame(i, np.zeros((240, 320), np.float16), np.zeros((240, 320, 3), np.uint8), np.eye(3), True)
        buf.add(one)
        assert len(buf) <= 10
    idx = buf.indices()
    assert idx[0] == 0 and idx[-1] >= 80 and np.all(np.diff(idx) == idx[1] - idx[0])  # evenly spread
    assert one.nbytes == 320 * 240 * 5 + 9 * 8 + 64  # float16 depth + uint8 colour (+ K, overhead)
    assert buf.nbytes == len(buf) * one.nbytes


def test_placement_of_sensor_and_predicted_depth():
    """Sensor depth (metres) keeps its size; predicted depth takes the Sim(3) scale and the metric scale."""
    from slam3r_plugins.fusion.tsdf import displacement, placement

    R = Rotation.from_rotvec([0.1, 0.2, 0.3]).as_matrix()
    T = make_sim3(R, [1.0, 2.0, 3.0], 0.5)
    f, c2w = placement(T, 2.0, sensor=True)
    assert f == 1.0
    np.testing.assert_allclose(c2w[:3, :3], R, atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 3], [2.0, 4.0, 6.0])
    f, c2w = placement(T, 2.0, sensor=False)
    assert f == pytest.approx(1.0)  # 0.5 (Sim(3)) x 2 (metric)
    x = np.array([0.3, -0.2, 1.5])  # a camera-frame point in the frame's recorded units -> map units
    np.testing.assert_allclose(c2w[:3, :3] @ (f * x) + c2w[:3, 3], 2.0 * (T[:3, :3] @ x + T[:3, 3]), atol=1e-12)
    # the displacement bound covers the true motion of points within reach
    T2 = make_sim3(Rotation.from_rotvec([0.1, 0.25, 0.3]).as_matrix(), [1.1, 2.0, 3.0], 0.55)
    pts = np.random.default_rng(0).uniform(-1, 1, (500, 3)) * 2.0 / np.sqrt(3)
    moved = np.linalg.norm((pts @ T2[:3, :3].T + T2[:3, 3]) - (pts @ T[:3, :3].T + T[:3, 3]), axis=1).max()
    assert moved <= displacement(T, T2, 2.0)


# ----------------------------------------------------------------------------- monocular, Sim(3)
def test_sim3_correction_rescales_the_pointcloud_and_the_predicted_depth_map(tmp_path):
    """Monocular: from SWITCH on the frontend's world is scaled by 1.3 (depth too); the Sim(3) correction gives
    those keyframes the scale 1/1.3 back; point cloud, TSDF of predicted depth and trajectory are true again."""
    sc = scene()
    s_err = 1.3
    E = error_transform(sc, scale=s_err)
    corr = Corrector(sc, s_err=s_err)
    pipe, result = run_scene(tmp_path, "sim3", {"scene": DriftPlugin(sc, E, with_depth=False), "corr": corr})
    _, bad = run_scene(tmp_path, "sim3_drift", {"scene": DriftPlugin(sc, E, with_depth=False)})
    assert corr.updates[0].kind == "sim3"
    traj = pipe.context.trajectory
    assert traj.scale(SWITCH) == pytest.approx(1 / s_err) and traj.scale(0) == pytest.approx(1.0)
    _, poses = read_tum(tmp_path / "sim3" / "trajectory.txt")
    np.testing.assert_allclose(poses, gt_poses(sc), atol=2e-6)
    pc_ok = mean_distance(sc, tmp_path / "sim3" / "pointcloud.ply")
    pc_bad = mean_distance(sc, tmp_path / "sim3_drift" / "pointcloud.ply")
    mesh_ok = mean_distance(sc, tmp_path / "sim3" / "mesh.ply")
    mesh_bad = mean_distance(sc, tmp_path / "sim3_drift" / "mesh.ply")
    print(f"Sim(3): pointcloud {pc_ok * 1000:.1f} / {pc_bad * 1000:.1f} mm, mesh {mesh_ok * 1000:.1f} / "
          f"{mesh_bad * 1000:.1f} mm (corrected / not)")
    assert pc_ok < 0.25 * VOXEL and pc_bad > 3 * pc_ok
    assert mesh_ok < 0.5 * VOXEL and mesh_bad > 2 * mesh_ok


# ----------------------------------------------------------------------------- viewer
def _viewer_run(tmp_path, name, E, corr, s_err=1.0):
    pytest.importorskip("viser")
    import slam3r_plugins.viewer.plugin as viewer

    sc = scene()

    class Keep:
        """Keeps the viewer (the run closes and drops it) and its point nodes just before the correction."""

        def __init__(self):
            self.viewer = None
            self.nodes_before = {}

        @hookimpl(trylast=True)
        def slam3r_process_frame(self, frame, estimate, context):
            self.viewer = context.state.get("_viewer") or self.viewer
            if frame.index == CORRECT_AT:
                self.nodes_before = dict(self.viewer.chunk_nodes)

    keep = Keep()
    plugins = {"scene": DriftPlugin(sc, E, with_depth=s_err == 1.0), "keep": keep, "viewer": viewer}
    if corr is not None:
        plugins["corr"] = corr
    run_scene(tmp_path, name, plugins, extra={"viewer": {"port": 0, "mesh_every": 2, "pixel_stride": 2,
                                                         "voxel_size": VOXEL / 2, "conf_quantile": 0.0}})
    return sc, keep


def _wxyz_to_R(wxyz) -> np.ndarray:
    w, x, y, z = wxyz
    return Rotation.from_quat([x, y, z, w]).as_matrix()


def _shown_world_points(v) -> np.ndarray:
    """Every point the viewer shows, placed as the browser places it: keyframe node, then the points' node."""
    out = []
    for f, node in v.chunk_nodes.items():
        kf = v.kf_nodes[v.chunk_anchor[f]]
        P = make_sim3(_wxyz_to_R(kf.wxyz), kf.position)
        A = make_sim3(_wxyz_to_R(node.wxyz), node.position, float(np.mean(node.scale)))
        xyz, _ = v.map.chunk(f)
        out.append(xyz.astype(np.float64) @ (P @ A)[:3, :3].T + (P @ A)[:3, 3])
    return np.concatenate(out)


@pytest.mark.parametrize("s_err", [1.0, 1.3], ids=["se3", "sim3"])
def test_viewer_keyframe_nodes_carry_the_corrected_poses(tmp_path, s_err):
    sc = scene()
    E = error_transform(sc, scale=s_err)
    sc, keep = _viewer_run(tmp_path, "viewer", E, Corrector(sc, s_err=s_err), s_err)
    v = keep.viewer
    assert v.closed and v.stats["pose_updates"] == 1 and v.stats["rebuilds"] == 0
    assert sorted(v.kf_nodes) == list(range(0, N, 3))
    for k, node in v.kf_nodes.items():  # every keyframe node is at the true pose
        np.testing.assert_allclose(node.position, sc.pose(k)[:3, 3], atol=1e-6)
        np.testing.assert_allclose(_wxyz_to_R(node.wxyz), sc.pose(k)[:3, :3], atol=1e-6)
    assert v.stats["nodes_moved"] == len(range(SWITCH, CORRECT_AT + 1, 3))
    # the points were moved with their nodes, not sent again
    assert all(v.chunk_nodes[f] is n for f, n in keep.nodes_before.items())
    assert v.stats["chunks_reposed"] == (0 if s_err == 1.0 else len(range(SWITCH, CORRECT_AT + 1, 3)))
    shown = _shown_world_points(v)
    d = sc.distance(shown)
    print(f"viewer points: mean distance {d.mean() * 1000:.1f} mm ({len(shown)} points)")
    assert d.mean() < 0.25 * VOXEL
    np.testing.assert_allclose(v.positions, gt_poses(sc)[:, :3, 3], atol=1e-6)  # the trajectory line
    if s_err == 1.0:  # the TSDF mesh shown is fusion's map after its rebuild
        assert v.mesh_version == 1 and v.stats["mesh_updates"] >= 1


def test_viewer_without_a_correction_shows_the_doubled_walls(tmp_path):
    sc = scene()
    sc, keep = _viewer_run(tmp_path, "viewer_drift", error_transform(sc), None)
    d = sc.distance(_shown_world_points(keep.viewer))
    assert d.mean() > 0.01 and keep.viewer.stats["pose_updates"] == 0


# ----------------------------------------------------------------------------- rerun
def _rrd_rows(path) -> dict[str, list[dict]]:
    """``{entity: [{"frame": ..., column: value}, ...]}`` of a recording (rows in log order)."""
    from rerun.chunk import RrdReader

    out: dict[str, list[dict]] = {}
    for chunk in RrdReader(path).stream():
        b = chunk.to_record_batch()
        cols = {n: b.column(n).to_pylist() for n in b.schema.names if ":" in n or n == "frame"}
        for r in range(b.num_rows):
            out.setdefault(str(chunk.entity_path), []).append({n: v[r] for n, v in cols.items()})
    return out


def test_rerun_keyframe_transforms_are_logged_again_after_the_correction(tmp_path):
    pytest.importorskip("rerun", reason="rerun-sdk is optional (pip install 'slam3r[rerun]')")
    import slam3r_plugins.rerun_recorder as recorder

    sc = scene()
    run_scene(tmp_path, "rr", {"scene": DriftPlugin(sc, error_transform(sc)), "corr": Corrector(sc),
                               "rerun": recorder},
              extra={"rerun": {"enabled": True, "images": False, "pixel_stride": 2, "conf_quantile": 0.0}})
    rows = _rrd_rows(tmp_path / "rr" / "recording.rrd")
    kf = sorted(e for e in rows if e.startswith("/world/map/kf_") and e.count("/") == 3)
    assert [int(e[-6:]) for e in kf] == list(range(0, N, 3))
    placed = []
    for e in kf:
        k = int(e[-6:])
        tf = [r for r in rows[e] if r.get("Transform3D:translation")]
        # logged when first seen; again at the correction for the keyframes recorded in the wrong world
        assert len(tf) == (2 if SWITCH <= k <= CORRECT_AT else 1), (e, len(tf))
        if len(tf) == 2:
            assert tf[1]["frame"] == CORRECT_AT
        last = tf[-1]
        T = np.eye(4)
        T[:3, :3] = np.asarray(last["Transform3D:mat3x3"][0]).reshape(3, 3).T  # rerun stores columns
        T[:3, 3] = last["Transform3D:translation"][0]
        np.testing.assert_allclose(T, sc.pose(k), atol=1e-5)
        pts = [r for r in rows[e + "/points"] if r.get("Points3D:positions")]
        assert len(pts) == 1  # the points were logged once, in the keyframe's camera frame
        placed.append(np.asarray(pts[0]["Points3D:positions"]) @ T[:3, :3].T + T[:3, 3])
    d = sc.distance(np.concatenate(placed))
    assert d.mean() < 0.005  # exact depth at the true poses (float32 positions)


# ----------------------------------------------------------------------------- keyframe selection
@pytest.mark.parametrize("scale", [1.0, 2.0], ids=["se3", "sim3"])
def test_keyframe_reference_follows_the_correction(tmp_path, scale):
    """The camera moves 5 cm a frame in front of a plane 2 m away: a keyframe every 5 frames (0.25 > 11 % of the
    depth). A correction moving the whole world (and, for Sim(3), scaling it) at frame 7 changes no relative
    motion, so the keyframes stay 0, 5, 10, 15; a reference cached before the correction would fire at frame 8."""
    import slam3r_plugins.keyframes as keyframes
    from tests.fakes import FakePlugin
    from tests.test_app_pipeline import make_pipeline as fake_pipeline

    delta = make_sim3(Rotation.from_rotvec([0.2, 0.5, 0.0]).as_matrix(), [1.5, -0.3, 0.8], scale)

    class WholeWorld:
        @hookimpl
        def slam3r_propose_corrections(self, context, final):
            traj = context.trajectory
            if final or traj.last_index() != 7:
                return None
            return PoseUpdate(keyframes={k: delta @ T for k, T in traj.keyframe_transforms().items()},
                              kind="se3" if scale == 1.0 else "sim3")

    pipe = fake_pipeline(tmp_path, {"fake": FakePlugin(n=18), "keyframes": keyframes, "corr": WholeWorld()},
                         keyframes={"mode": "motion", "min_translation": 0.11, "min_rotation_deg": 30.0})
    result = run(pipe.config, pipeline=pipe)
    assert pipe.trajectory.revision == 1
    assert result.keyframe_indices == [0, 5, 10, 15]
    traj = pipe.trajectory
    rel = np.linalg.inv(traj.pose(15)) @ traj.pose(16)
    np.testing.assert_allclose(rel[:3, 3], [0.05 * scale, 0, 0], atol=1e-9)
