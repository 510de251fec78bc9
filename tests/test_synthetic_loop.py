"""Synthetic loop sequences: laps that revisit identical poses, hand-held motion, config keys, the synth command."""
from __future__ import annotations

import json

import numpy as np
import pytest

from slam3r_app.config import load_config
from slam3r_app.errors import ConfigError, SourceError
from slam3r_app.trajectory import read_tum, rotation_angle_deg
from slam3r_datasets import SyntheticScene, SyntheticSequence, TumSource, make_source
from slam3r_datasets.synthetic import LAP_SPEED
from slam3r_datasets.synthetic_truth import SequenceTruth

W, H = 48, 36


def test_laps_revisit_identical_poses():
    seq = SyntheticSequence(seed=2, laps=3, width=W, height=H)
    n = seq.frames_per_lap
    assert seq.frames == 3 * n and len(seq) == 3 * n
    assert n == round(seq.path.length / LAP_SPEED)
    P = seq.poses()
    np.testing.assert_array_equal(P[:n], P[n:2 * n])  # bit-identical, not just close
    np.testing.assert_array_equal(P[:n], P[2 * n:])
    assert [seq.lap_of(i) for i in (0, n - 1, n, 3 * n - 1)] == [0, 0, 1, 2]
    # the lap closes smoothly: the step from the last frame of a lap to the first is an ordinary step
    steps = np.linalg.norm(np.diff(P[:, :3, 3], axis=0), axis=1)
    assert steps[n - 1] == pytest.approx(np.median(steps), rel=0.01)
    # same images every lap (without noise)
    for k in (0, n // 2):
        np.testing.assert_array_equal(seq.render(k)[0], seq.render(k + 2 * n)[0])
        assert SequenceTruth(seq, max_width=W).view_overlap(k, k + n) == 1.0


def test_default_loop_fits_two_laps_in_600_to_650_frames():
    seq = SyntheticSequence(seed=0, laps=2, width=W, height=H)
    assert 600 <= seq.frames <= 650  # 2 x 306 frames at 1.4 cm
    assert SyntheticSequence(seed=0, laps=3, width=W, height=H).frames <= 950
    assert seq.describe()["frames_per_lap"] == seq.frames_per_lap and seq.describe()["laps"] == 2
    assert SyntheticSequence(seed=0, laps=2, frames=10, width=W, height=H).frames == 10  # explicit frames win


@pytest.mark.parametrize("seed", [0, 3, 7])
def test_lap_motion_is_hand_held_and_clear_of_the_furniture(seed):
    seq = SyntheticSequence(seed=seed, laps=1, width=W, height=H)
    P = np.concatenate([seq.poses(), seq.pose(seq.frames)[None]])  # + the first frame of lap 2
    steps = np.linalg.norm(np.diff(P[:, :3, 3], axis=0), axis=1)
    assert 0.01 <= steps.min() and steps.max() <= 0.03
    rel = np.einsum("nji,njk->nik", P[:-1, :3, :3], P[1:, :3, :3])
    turn = rotation_angle_deg(rel)
    assert turn.max() <= 1.5 and turn.min() > 0.5
    assert np.abs(np.diff(turn)).max() < 0.05  # smooth: the turn rate changes slowly
    fwd = P[:, :3, 2]
    heading = np.unwrap(np.arctan2(fwd[:, 0], fwd[:, 2]))
    assert abs(heading[-1] - heading[0]) == pytest.approx(2 * np.pi, abs=1e-6)  # one full turn a lap
    for T in P:
        np.testing.assert_allclose(T[:3, :3].T @ T[:3, :3], np.eye(3), atol=1e-12)
        assert np.linalg.det(T[:3, :3]) == pytest.approx(1.0)
    scene = seq.scene
    assert scene.furnished and (P[:, :3, 3] > 0).all() and (P[:, :3, 3] < scene.size).all()
    assert scene.distance_to_surface(P[:, :3, 3]).min() >= 0.3


def test_furnishing_adds_shapes_and_changes_nothing_else():
    bare, furnished = SyntheticScene(seed=4), SyntheticScene(seed=4, furnished=True)
    assert len(furnished.shapes) > len(bare.shapes) + 4
    for a, b in zip(bare.shapes, furnished.shapes):
        assert a.name == b.name
        np.testing.assert_array_equal(a.vertices, b.vertices)
        np.testing.assert_array_equal(a.texture.color1, b.texture.color1)
    assert bare.size == furnished.size and bare._path == furnished._path
    # without laps: the original sweep in the original (bare) room
    seq = SyntheticSequence(seed=4, frames=5, width=W, height=H)
    assert seq.path is None and not seq.scene.furnished and seq.speed == 0.012
    np.testing.assert_array_equal(seq.pose(3), bare.camera_pose(3, 0.012))
    assert "laps" not in seq.describe() and "furnished" not in seq.describe()
    new = [s for s in furnished.shapes[len(bare.shapes):]]
    pts = np.concatenate([s.vertices for s in new])
    assert (pts[:, 2] <= 0.45 * furnished.size[2] + 1e-9).all()  # the near half only


def test_laps_and_speed_errors():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(SourceError, match="laps must be an integer >= 1"):
            SyntheticSequence(laps=bad, width=W, height=H)
    with pytest.raises(SourceError, match="speed must be > 0"):
        SyntheticSequence(laps=1, speed=0.0, width=W, height=H)
    with pytest.raises(SourceError, match="unknown scene 'attic'"):
        SyntheticSequence(scene="attic", width=W, height=H)


# ----------------------------------------------------------------------------- config
def test_loop_configs_build_the_sources():
    cfg = load_config("synthetic_loop.yaml", overrides=["source.width=32", "source.height=24"])
    src = make_source(cfg.run.source)
    seq = src.sequence
    assert seq.laps == 2 and seq.noise is not None and seq.noise.name == "kinect" and len(src) == seq.frames >= 600
    assert cfg.run.frontend == "rgbd"
    info = src.info()
    json.dumps(info)
    assert info["laps"] == 2 and info["frames_per_lap"] == seq.frames_per_lap and info["noise"]["name"] == "kinect"
    assert "kinect" in src.name and "2laps" in src.name
    cfg = load_config("synthetic_aliasing.yaml", overrides=["source.width=32", "source.height=24"])
    src = make_source(cfg.run.source)
    assert src.scene.kind == "aliasing" and src.sequence.laps == 2 and len(src) == 2 * src.sequence.frames_per_lap
    cfg = load_config("synthetic.yaml", overrides=["source.synthetic_noise={preset: kinect, color_sigma: 0}",
                                                   "source.synthetic_laps=1", "source.synthetic_frames=5"])
    src = make_source(cfg.run.source)
    assert len(src) == 5 and src.sequence.noise.color_sigma == 0 and src.sequence.laps == 1


@pytest.mark.parametrize("override, key", [
    ("source.synthetic_laps=0", "source.synthetic_laps"),
    ("source.synthetic_scene=attic", "source.synthetic_scene"),
    ("source.synthetic_speed=-1", "source.synthetic_speed"),
])
def test_bad_loop_keys_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("synthetic.yaml", overrides=[override])


@pytest.mark.parametrize("overrides, key", [
    (["source.synthetic_noise=kinnect"], "source.synthetic_noise"),
    (["source.synthetic_noise={preset: kinect, loudness: 3}"], "source.synthetic_noise"),
    (["source.synthetic_scene=aliasing", "source.synthetic_dynamic=true"], "source.synthetic_dynamic"),
])
def test_bad_noise_or_scene_names_the_key(overrides, key):
    cfg = load_config("synthetic.yaml", overrides=overrides)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_source(cfg.run.source, where=cfg.where)


# ----------------------------------------------------------------------------- the synth command
def test_synth_command_laps_noise_scene(tmp_path, capsys):
    from slam3r_app.cli import main

    rc = main(["synth", "--out", str(tmp_path / "s"), "--laps", "2", "--speed", "0.25", "--noise", "kinect",
               "--width", "32", "--height", "24", "-q"])
    assert rc == 0
    out = capsys.readouterr().out
    n = SyntheticSequence(laps=1, speed=0.25, width=32, height=24).frames_per_lap
    assert f"wrote {2 * n} frames" in out and f"2 laps of {n} frames" in out and "kinect noise" in out
    src = TumSource(tmp_path / "s")
    assert len(src) == 2 * n
    _, gt = read_tum(tmp_path / "s" / "groundtruth.txt")
    np.testing.assert_allclose(gt[:n], gt[n:], atol=1e-12)
    depths = [f.depth for f in src.frames()]
    assert any((d == 0).any() for d in depths)  # dropouts
    assert not np.array_equal(depths[0], depths[n])  # same pose, another noise draw
    meta = json.loads((tmp_path / "s" / "synthetic.json").read_text())
    assert meta["laps"] == 2 and meta["noise"]["name"] == "kinect"
    rc = main(["synth", "--out", str(tmp_path / "a"), "--scene", "aliasing", "--frames", "3", "--width", "32",
               "--height", "24", "-q"])
    assert rc == 0 and "scene aliasing" in capsys.readouterr().out
    assert main(["synth", "--out", str(tmp_path / "x"), "--laps", "0", "-q"]) == 2
    assert main(["synth", "--out", str(tmp_path / "x"), "--scene", "aliasing", "--dynamic", "-q"]) == 2
    assert "--dynamic exists only in the room scene" in capsys.readouterr().err
