"""Issue 14, case 3: resource guards of the TSDF map.

* sizes are bounded by the options model: ``voxel_size=1e-6`` (which grew to 7 GB in two minutes on
  10 frames), ``inf`` and ``nan`` are config errors naming the key, before any work;
* a map whose next frame would pass ``fusion.max_memory_gb`` (estimated the way Open3D touches blocks,
  hash-map doubling included) is not grown: a first frame that cannot fit stops fusion with a message
  naming the budget and what to change (exit 3); later, the map stops growing and is still written.
Independent truth for the estimate: the block count Open3D itself allocates.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from slam3r_plugins.fusion.plugin import FusionOptions, block_bytes, frame_blocks, make_grid
from tests.cli_helpers import cli


@pytest.mark.parametrize("bad", [1e-6, 0.0, -0.01, float("inf"), float("nan"), 50.0])
def test_voxel_size_out_of_bounds_is_refused(bad):
    with pytest.raises(ValidationError):
        FusionOptions(voxel_size=bad)


def test_inf_voxel_size_is_a_config_error_before_any_work(tmp_path):
    for value in (".inf", "1e-6"):
        p = cli(["--config", "demo.yaml", "--set", f"fusion.voxel_size={value}", "--output", str(tmp_path / "r")],
                tmp_path)
        assert p.returncode == 1 and f"--set fusion.voxel_size={value}" in p.stderr and "Traceback" not in p.stderr
        assert not (tmp_path / "r").exists()


def test_block_estimate_against_open3d():
    import open3d.core as o3c

    from slam3r_datasets.tum import TumSource
    from slam3r_plugins.fusion.tsdf import integrate

    frame = next(iter(TumSource("sample:tum_fr1_rpy", max_frames=1).frames()))
    for voxel in (0.02, 0.01, 0.004, 0.002):
        opts = FusionOptions(voxel_size=voxel)
        grid = make_grid(voxel, opts, o3c.Device("CPU:0"))
        integrate(grid, frame.depth, frame.rgb, frame.intrinsics, np.eye(4), 3.0, opts.trunc_voxels, o3c.Device("CPU:0"))
        actual = grid.hashmap().size()
        est = frame_blocks(frame.depth, frame.intrinsics, voxel, opts, 3.0)
        assert 0.5 * actual <= est <= 3 * actual, (voxel, est, actual)
    assert block_bytes(FusionOptions()) == 8 ** 3 * 20 + 32


def test_a_first_frame_past_the_budget_stops_fusion_with_a_clear_message(tmp_path):
    # 0.1 mm voxels on 640x480: Open3D's most blocks for one frame (76800) and the hash map's growth: ~1 GB
    p = cli(["--config", "demo.yaml", "--set", "fusion.voxel_size=1e-4", "--set", "fusion.max_memory_gb=0.5",
             "--set", "source.max_frames=3", "--set", "progress=false", "--output", str(tmp_path / "run")], tmp_path)
    assert p.returncode == 3, p.stderr
    line = next(ln for ln in p.stderr.splitlines() if "fusion.max_memory_gb" in ln)
    assert "plugin 'fusion' failed" in line and "the TSDF map would need about" in line
    assert "raise fusion.voxel_size" in line
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["frames"] == 3 and "fusion" in summary["plugin_errors"]
    assert not (tmp_path / "run" / "mesh.ply").exists()


def test_a_map_reaching_the_budget_stops_growing_and_is_still_written(tmp_path):
    # 20000 blocks of 10 KB are allocated up front (0.2 GB); the first growth would double that
    p = cli(["--config", "synthetic.yaml", "--set", "fusion.voxel_size=0.002", "--set", "fusion.max_memory_gb=0.25",
             "--set", "source.synthetic_frames=20", "--set", "progress=false", "--output", str(tmp_path / "run")],
            tmp_path)
    assert p.returncode == 0, p.stderr
    assert "fusion.max_memory_gb = 0.25" in p.stderr and "stops growing" in p.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["fusion_memory_limited"] is True and 0 < metrics["fusion_frames"] < 20
    assert (tmp_path / "run" / "mesh.ply").stat().st_size > 0


def test_a_map_at_its_budget_is_rebuilt_after_a_correction_from_the_frames_it_held(tmp_path):
    """The bundle adjustment moves every frame when the stream ends; fusion rebuilds its map at the new
    poses from the frames it had fused, not from every buffered frame (which would pass the budget)."""
    p = cli(["--config", "synthetic.yaml", "--set", "fusion.voxel_size=0.002", "--set", "fusion.max_memory_gb=0.25",
             "--set", "source.synthetic_frames=20", "--set", "progress=false", "--set", "bundle_adjustment.enabled=true",
             "--output", str(tmp_path / "run")], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "stops growing" in p.stderr and "bundle adjustment: 20 frames" in p.stderr
    fused = int(p.stderr.split("the map keeps the ")[1].split(" frames fused")[0])
    assert f"map rebuilt from {fused} frames" in p.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["fusion_memory_limited"] is True and metrics["fusion_frames"] == fused < 20
