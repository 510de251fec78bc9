"""``bench --protocol upstream`` reproduces the paper's protocol; ``--protocol app`` runs the config as is.

Sequences are written by ``run_slam.py synth`` (TUM layout, 64x48 frames) under the names of the
upstream TUM list; the STream3R frontend runs a tiny random model on the CPU.  The truth is read
from what each run left behind: its resolved ``config.yaml``, ``summary.json`` (the frontend's
input size and how many frames its KV cache holds) and ``trajectory.txt`` against the sequence's
own ``rgb.txt``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from slam3r_app.cli import main as cli_main
from slam3r_app.errors import ConfigError
from slam3r_plugins.bench import LOOP_PROTOCOLS, UPSTREAM_SETTINGS, run_bench

pytest.importorskip("evo", reason="the benchmark's metrics come from the evaluation plugin (evo)")

SEQS = ("rgbd_dataset_freiburg3_walking_xyz", "rgbd_dataset_freiburg3_sitting_static")
TINY = ("model.arch={img_size: 28, embed_dim: 16, depth: 1, num_heads: 2, patch_embed: conv, camera_trunk_depth: 1, "
        "camera_num_heads: 2, dpt_features: 8, dpt_out_channels: [4, 8, 8, 8], dpt_intermediate_layers: [0, 0, 0, 0]}")
COMMON = ["model.random_weights=true", TINY, "disable=[fusion,pointcloud,viewer]", "evaluation.plot=false",
          "source.prefetch=0"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for seed, name in enumerate(SEQS):
        rc = cli_main(["synth", "--out", str(root / "tum" / name), "--frames", "40", "--format", "tum",
                       "--width", "64", "--height", "48", "--seed", str(seed), "-q"])
        assert rc == 0
    return root


def rgb_timestamps(seq_dir):
    rows = [ln.split() for ln in (seq_dir / "rgb.txt").read_text().splitlines() if ln.strip() and ln[0] != "#"]
    return np.array([float(r[0]) for r in rows])


def run_files(out, seq):
    d = out / seq
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    summary = json.loads((d / "summary.json").read_text())
    traj = np.loadtxt(d / "trajectory.txt", ndmin=2)
    return cfg, summary, traj


def test_upstream_protocol_is_the_papers(root, tmp_path):
    rows, out, table = run_bench("tum.yaml", root=root, out=tmp_path / "up", overrides=COMMON)
    ran = {r.sequence: r for r in rows if r.status == "ok"}
    assert set(ran) == set(SEQS), [(r.sequence, r.status, r.note) for r in rows]
    assert sum(r.status == "missing" for r in rows) == 6
    for seq in SEQS:
        cfg, summary, traj = run_files(out, seq)
        m = cfg["model"]
        # eval preprocessing at 518, causal, float32 as upstream's launcher runs it (TF32 on)
        assert (m["preprocess"], m["image_size"], m["mode"], m["dtype"], m["tf32"]) == ("eval", 518, "causal",
                                                                                       "float32", True)
        # every frame of the strided list: stride 3 from frame 0, at most 90 frames
        s = cfg["source"]
        assert (s["first"], s["stride"], s["max_frames"]) == (0, 3, 90)
        stamps = rgb_timestamps(root / "tum" / seq)[0:90 * 3:3]
        np.testing.assert_allclose(traj[:, 0], stamps, atol=1e-6)
        assert summary["frames"] == len(stamps) == 14 == ran[seq].frames
        # no frame dropped from the KV cache, whatever the keyframe selection says
        assert cfg["keyframes"]["keep_all_in_cache"] is True and cfg["model"]["cache_frames"] is None
        fs = summary["frontend_stats"]
        assert fs["cache_frames"] == 14
        # eval preprocessing: 64x48 -> 518x388 (bicubic, smaller than 518) -> 518x378
        assert fs["input_hw"] == [378, 518] and fs["preprocess"] == "eval" and fs["precision"] == "float32"
    md = (out / "bench.md").read_text()
    assert "protocol `upstream`" in md and "model.preprocess=eval" in md


def test_app_protocol_runs_the_config_as_shipped(root, tmp_path):
    rows, out, _ = run_bench("tum.yaml", root=root, out=tmp_path / "app", overrides=COMMON, protocol="app",
                             sequences=[SEQS[0]])
    assert [r.status for r in rows] == ["ok"]
    cfg, summary, traj = run_files(out, SEQS[0])
    assert cfg["model"]["preprocess"] == "crop" and cfg["model"]["dtype"] == "auto"
    assert cfg["keyframes"]["keep_all_in_cache"] is False
    fs = summary["frontend_stats"]
    assert fs["input_hw"] == [392, 518]  # the demo loader: width 518, height round(388.5 / 14) * 14
    keyframes = [ln for ln in (out / SEQS[0] / "keyframes.txt").read_text().splitlines()
                 if ln.strip() and not ln.startswith("#")]
    assert fs["cache_frames"] == len(keyframes) <= summary["frames"] == 14  # only keyframes stay cached
    assert "protocol `app`" in (out / "bench.md").read_text()
    # user overrides still come last
    rows, out, _ = run_bench("tum.yaml", root=root, out=tmp_path / "up2", overrides=COMMON + ["source.max_frames=4"],
                             sequences=[SEQS[1]])
    cfg, summary, _ = run_files(out, SEQS[1])
    assert summary["frames"] == 4 and cfg["model"]["preprocess"] == "eval"


def test_loops_suite_lists_the_loop_sequences(tmp_path, capsys):
    rc = cli_main(["bench", "--config", "tum.yaml", "--suite", "loops", "--root", str(tmp_path / "none"),
                   "--out", str(tmp_path / "loops")])
    assert rc == 1  # nothing ran
    printed = capsys.readouterr().out
    for seq in ("rgbd_dataset_freiburg1_room", "rgbd_dataset_freiburg2_desk",
                "rgbd_dataset_freiburg3_long_office_household"):
        assert f"{seq}: missing" in printed
    assert LOOP_PROTOCOLS["tum"].stride == 1 and LOOP_PROTOCOLS["tum"].max_frames is None
    assert "protocol `app`" in (tmp_path / "loops" / "bench.md").read_text()
    with pytest.raises(ConfigError, match="loops suite has no upstream protocol"):
        run_bench("tum.yaml", root=tmp_path, suite="loops", protocol="upstream", out=tmp_path / "x")
    with pytest.raises(ConfigError, match="in the loops suite"):
        run_bench("bonn.yaml", root=tmp_path, suite="loops", out=tmp_path / "y")
    assert "model.dtype=float32" in UPSTREAM_SETTINGS and "keyframes.keep_all_in_cache=true" in UPSTREAM_SETTINGS
