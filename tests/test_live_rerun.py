"""The optional rerun recorder: off by default (rerun never imported), a clear message when enabled
without rerun-sdk, and a real .rrd recording when rerun-sdk is installed."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import tests.test_live_support as support
from slam3r_app.config import load_config
from slam3r_app.frame_loop import run
from slam3r_app.pipeline import Pipeline
from slam3r_app.plugin_host import PluginHost

BASE = ["source.type=synthetic", "source.synthetic_frames=6", "source.width=96", "source.height=72",
        "frontend=oracle", "progress=false", "viewer.enabled=false", "keyframes.max_interval=2"]


def run_with(tmp_path: Path, overrides: list[str]):
    cfg = load_config("webcam.yaml", overrides=BASE + overrides)
    host = PluginHost(disable=cfg.run.disable)
    host.register(support, name="live_support")
    pipe = Pipeline(cfg, output=str(tmp_path / "run"), host=host)
    return run(cfg, pipeline=pipe)


def test_off_by_default_never_imports_rerun(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rerun", None)  # any import of rerun would fail
    result = run_with(tmp_path, [])
    assert result.plugin_errors == {} and result.frames_seen == 6
    assert not (tmp_path / "run" / "recording.rrd").exists()


def test_enabled_without_rerun_sdk_says_so_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rerun", None)
    result = run_with(tmp_path, ["rerun.enabled=true"])
    msg = result.plugin_errors["rerun"]
    assert "rerun-sdk is not installed" in msg and "pip install" in msg and "rerun.enabled: false" in msg
    assert result.frames_seen == 6 and (tmp_path / "run" / "trajectory.txt").is_file()


def test_recording_with_rerun_sdk(tmp_path):
    pytest.importorskip("rerun", reason="rerun-sdk is optional (pip install 'slam3r[rerun]')")
    result = run_with(tmp_path, ["rerun.enabled=true", "fusion.enabled=true"])
    assert result.plugin_errors == {}
    rrd = tmp_path / "run" / "recording.rrd"
    assert result.outputs["rerun"] == str(rrd) and rrd.stat().st_size > 10_000
    paths = recorded_entities(rrd)
    if paths is not None:  # a reader exists in this rerun version: check what was logged
        assert {"/world/camera", "/world/camera/image", "/world/camera/image/depth", "/world/trajectory",
                "/world/mesh", "/stats/fps", "/stats/dropped"} <= paths
        assert len([p for p in paths if p.startswith("/world/map/kf_")]) >= 3


def recorded_entities(rrd: Path):
    """Entity paths in an .rrd file (None when this rerun version has no reader we know)."""
    try:
        from rerun.chunk import RrdReader
    except ImportError:
        return None
    return {str(chunk.entity_path) for chunk in RrdReader(rrd).stream()}
