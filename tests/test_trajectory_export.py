"""Trajectory files: valid after every N frames, after an interruption, in every format, scaled when asked."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from slam3r_app.errors import ConfigError
from slam3r_app.frame_loop import run
from slam3r_app.hookspecs import hookimpl
from slam3r_app.trajectory import read_tum
from tests.test_fusion_scene import ScenePlugin, get_scene, make_pipeline


class FileWatcher:
    """Reads trajectory.txt at the start of every frame's processing (before this frame's rewrite)."""

    def __init__(self, path):
        self.path = path
        self.seen: list[tuple[int, int]] = []  # (frame index, rows in the file)

    @hookimpl(tryfirst=True)
    def slam3r_process_frame(self, frame, estimate, context):
        n = len(read_tum(self.path)[0]) if self.path.exists() else 0
        self.seen.append((frame.index, n))


def test_file_is_valid_every_n_frames_mid_run(tmp_path):
    sc = get_scene()
    out = tmp_path / "run"
    watcher = FileWatcher(out / "trajectory.txt")
    pipe = make_pipeline(out, {"scene": ScenePlugin(sc), "watch": watcher}, {"trajectory": {"every_n": 3}},
                         backends=["keyframes", "trajectory"])
    run(pipe.config, pipeline=pipe)
    # before frame i is processed the file holds the frames of the last multiple of 3
    assert watcher.seen == [(i, (i // 3) * 3) for i in range(sc.frames)]
    stamps, poses = read_tum(out / "trajectory.txt")
    assert stamps == pytest.approx([sc.timestamp(i) for i in range(sc.frames)])  # the source's timestamps
    np.testing.assert_allclose(poses, np.stack([sc.pose(i) for i in range(sc.frames)]), atol=1e-8)
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_interrupted_run_leaves_a_valid_trajectory(tmp_path):
    sc = get_scene()
    out = tmp_path / "run"
    # prefetch off: the signal then comes exactly while frame 7 is read (frames 0-6 tracked)
    pipe = make_pipeline(out, {"scene": ScenePlugin(sc, sigint_at=7)},
                         {"trajectory": {"every_n": 0}, "source": {"prefetch": 0}},
                         backends=["keyframes", "trajectory"])
    result = run(pipe.config, pipeline=pipe)
    assert result.stopped_early and result.ended_by == "user" and result.frames_seen == 7
    stamps, poses = read_tum(out / "trajectory.txt")
    assert len(stamps) == 7
    np.testing.assert_allclose(poses[:, :3, 3], np.stack([sc.pose(i) for i in range(7)])[:, :3, 3], atol=1e-8)
    kstamps, _ = read_tum(out / "trajectory_keyframes.txt")
    assert set(kstamps) <= set(stamps) and kstamps[0] == stamps[0]


def test_all_formats_and_keyframes_file(tmp_path):
    sc = get_scene()
    out = tmp_path / "run"
    plug = ScenePlugin(sc)
    pipe = make_pipeline(out, {"scene": plug}, {"trajectory": {"formats": ["tum", "kitti", "matrix"]},
                                                "keyframes": {"min_translation": 0.05}},
                         backends=["keyframes", "trajectory"])
    result = run(pipe.config, pipeline=pipe)
    gt = np.stack([sc.pose(i) for i in range(sc.frames)])
    kitti = np.loadtxt(out / "trajectory_kitti.txt")
    assert kitti.shape == (sc.frames, 12)
    np.testing.assert_allclose(kitti.reshape(-1, 3, 4), gt[:, :3, :4], atol=1e-8)
    mat = np.loadtxt(out / "trajectory_matrices.txt")
    assert mat.shape == (sc.frames, 17)
    np.testing.assert_allclose(mat[:, 0], [sc.timestamp(i) for i in range(sc.frames)], atol=1e-6)
    np.testing.assert_allclose(mat[:, 1:].reshape(-1, 4, 4), gt, atol=1e-8)
    kstamps, kposes = read_tum(out / "trajectory_keyframes.txt")
    kf = result.keyframe_indices
    assert 1 < len(kf) < sc.frames
    assert kstamps == pytest.approx([sc.timestamp(i) for i in kf])
    np.testing.assert_allclose(kposes, gt[kf], atol=1e-8)
    assert {"trajectory", "trajectory_keyframes", "trajectory_kitti", "trajectory_matrices"} <= set(result.outputs)


def test_metric_scale_from_the_store_in_the_files_and_scale_json(tmp_path):
    sc = get_scene()
    # up-to-scale frontend (prediction = truth / 2); fusion estimates the scale from the sensor depth
    out = tmp_path / "a"
    pipe = make_pipeline(out, {"scene": ScenePlugin(sc, scale=2.0)}, {"fusion": {"enabled": False}},
                         backends=["fusion", "trajectory"])
    run(pipe.config, pipeline=pipe)
    header = (out / "trajectory.txt").read_text().splitlines()[0]
    assert "scale: metric, translations multiplied by 2" in header
    scale = json.loads((out / "scale.json").read_text())  # what programs read (the offline exporter)
    assert scale["metric"] is True and scale["provenance"] == "sensor_depth"
    assert scale["scale"] == pytest.approx(2.0, rel=1e-6) and scale["frames"] == sc.frames
    _, poses = read_tum(out / "trajectory.txt")
    np.testing.assert_allclose(poses[:, :3, 3], np.stack([sc.pose(i) for i in range(sc.frames)])[:, :3, 3], atol=1e-6)
    # the option off: the plugin's files in the prediction's own units, and their header says so;
    # trajectory.txt is the core's, always in the world's final scale
    out = tmp_path / "b"
    pipe = make_pipeline(out, {"scene": ScenePlugin(sc, scale=2.0)},
                         {"fusion": {"enabled": False}, "trajectory": {"metric_scale": False}},
                         backends=["fusion", "trajectory"])
    run(pipe.config, pipeline=pipe)
    header = (out / "trajectory_keyframes.txt").read_text().splitlines()[0]
    assert "scale: as predicted" in header and "metric_scale is off" in header
    _, poses = read_tum(out / "trajectory_keyframes.txt")  # every frame is a keyframe here (no keyframe plugin)
    truth = np.stack([sc.pose(i) for i in range(sc.frames)])[:, :3, 3]
    np.testing.assert_allclose(poses[:, :3, 3] * 2.0, truth, atol=1e-6)
    _, metric = read_tum(out / "trajectory.txt")
    assert "scale: metric" in (out / "trajectory.txt").read_text().splitlines()[0]
    np.testing.assert_allclose(metric[:, :3, 3], truth, atol=1e-6)


def test_save_now_and_reset(tmp_path):
    sc = get_scene()
    out = tmp_path / "run"

    class Controller:
        @hookimpl
        def slam3r_process_frame(self, frame, estimate, context):
            if frame.index == 2:
                context.control.request_save()
            if frame.index == 4:
                context.control.request_reset()

    class Check:
        rows_after_save = None

        @hookimpl
        def slam3r_process_frame(self, frame, estimate, context):
            if frame.index == 3:
                Check.rows_after_save = len(read_tum(out / "trajectory.txt")[0])

    pipe = make_pipeline(out, {"scene": ScenePlugin(sc), "ctl": Controller(), "check": Check()},
                         {"trajectory": {"every_n": 0}}, backends=["trajectory"])
    run(pipe.config, pipeline=pipe)
    assert Check.rows_after_save == 3  # "save now" after frame 2 wrote frames 0..2
    stamps, _ = read_tum(out / "trajectory.txt")
    assert len(stamps) == sc.frames - 5  # the reset before frame 5 started a new map


def test_options_validated():
    from slam3r_plugins.trajectory_export import TrajectoryOptions

    assert TrajectoryOptions(formats=["tum", "tum", "kitti"]).formats == ["tum", "kitti"]
    with pytest.raises(ValidationError):
        TrajectoryOptions(formats=["euroc"])
    with pytest.raises(ValidationError):
        TrajectoryOptions(formats=[])
    with pytest.raises(ConfigError, match="trajectory.every_n"):
        make_pipeline("/tmp/never", {}, {"trajectory": {"every_n": -1}})
