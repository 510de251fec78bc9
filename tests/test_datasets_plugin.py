"""The datasets plugin: source.type -> reader, config errors naming the key and the file."""
from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from slam3r_app.config import SourceConfig, load_config
from slam3r_app.errors import ConfigError, SourceError
from slam3r_datasets import (
    BonnSource,
    CameraSource,
    ImageFolderSource,
    SintelSource,
    SyntheticSource,
    TumSource,
    VideoSource,
    make_source,
)
from slam3r_datasets import plugin as ds_plugin
from slam3r_datasets.testing import write_sintel_fixture, write_tum_fixture


def _cfg(tmp_path, text: str):
    p = tmp_path / "my.yaml"
    p.write_text(text)
    return load_config(str(p))


def _make(cfg):
    return ds_plugin.slam3r_make_source(source=cfg.run.source, context=SimpleNamespace(config=cfg))


def test_every_type_builds_its_reader(tmp_path):
    write_tum_fixture(tmp_path / "rgbd_dataset_freiburg3_x", n=3)
    write_tum_fixture(tmp_path / "rgbd_bonn_y", n=3)
    write_sintel_fixture(tmp_path / "sintel", n=3)
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    w = cv2.VideoWriter(str(tmp_path / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (16, 16))
    for _ in range(3):
        w.write(np.zeros((16, 16, 3), np.uint8))
    w.release()
    cases = {
        "tum": (tmp_path / "rgbd_dataset_freiburg3_x", TumSource),
        "bonn": (tmp_path / "rgbd_bonn_y", BonnSource),
        "sintel": (tmp_path / "sintel", SintelSource),
        "folder": (tmp_path / "imgs", ImageFolderSource),
        "video": (tmp_path / "v.avi", VideoSource),
    }
    for kind, (path, cls) in cases.items():
        src = make_source(SourceConfig(type=kind, path=str(path), max_frames=2))
        assert type(src) is cls, kind
        assert len(src) == (1 if kind == "folder" else 2), kind
        assert src.info()["type"] == kind
    src = make_source(SourceConfig(type="synthetic", seed=3, synthetic_frames=5, width=32, height=24, stride=2))
    assert isinstance(src, SyntheticSource) and len(src) == 3
    assert next(src.frames()).rgb.shape == (24, 32, 3)
    assert make_source({"type": "tum", "path": str(cases["tum"][0]), "first": 1}).__len__() == 2  # a dict works too


def test_options_reach_the_readers(tmp_path):
    root = write_tum_fixture(tmp_path / "seq", n=6, depth_scale=1000.0)
    src = make_source(SourceConfig(type="tum", path=str(root), first=1, stride=2, depth_scale=1000.0,
                                   intrinsics=[1, 2, 3, 4], max_time_diff=0.01))
    assert len(src) == 3 and src.depth_scale == 1000.0 and src.max_time_diff == 0.01
    f = next(src.frames())
    assert f.intrinsics[0, 0] == 1 and f.depth[0, 0] == pytest.approx(1.01, abs=1e-6)
    write_sintel_fixture(tmp_path / "s", n=2, passes=("final", "clean"))
    src = make_source(SourceConfig(type="sintel", path=str(tmp_path / "s"), sintel_pass="clean"))
    assert src.layout.image_pass == "clean"


def test_unknown_type_is_left_to_other_plugins():
    assert make_source(SourceConfig(type="kitti", path="/x")) is None
    assert ds_plugin.slam3r_make_source(source=SourceConfig(type="kitti"), context=None) is None
    assert set(ds_plugin.SOURCE_TYPES) == {"tum", "bonn", "sintel", "folder", "video", "camera", "synthetic", "rosbag"}


def test_missing_path_names_key_and_file(tmp_path):
    cfg = _cfg(tmp_path, "source:\n  type: tum\n  path: /no/such/rgbd_dataset\n")
    with pytest.raises(ConfigError) as e:
        _make(cfg)
    msg = str(e.value)
    assert "source.path" in msg and "my.yaml" in msg and "tum sequence folder not found: /no/such/rgbd_dataset" in msg
    cfg = _cfg(tmp_path, "source:\n  type: video\n")
    with pytest.raises(ConfigError, match=r"source.path .*: source.type 'video' needs source.path"):
        _make(cfg)
    cfg = load_config(None, overrides=["source.type=folder", "source.path=relative/imgs"])
    with pytest.raises(ConfigError, match=r"--set source.path=relative/imgs: image folder not found: "
                                          r"relative/imgs \(relative to "):
        _make(cfg)


def test_sample_paths(tmp_path):
    cfg = load_config(None, overrides=["source.type=tum", "source.path=sample:tum_fr1_rpy", "source.max_frames=3"])
    src = _make(cfg)
    assert isinstance(src, TumSource) and len(src) == 3
    cfg = load_config(None, overrides=["source.type=tum", "source.path=sample:nothing"])
    with pytest.raises(ConfigError, match=r"--set source.path=sample:nothing: no shipped sample named "
                                          r"'nothing'.*available: .*tum_fr1_rpy"):
        _make(cfg)


def test_data_errors_stay_source_errors(tmp_path):
    root = tmp_path / "seq"
    root.mkdir()
    cfg = load_config(None, overrides=["source.type=tum", f"source.path={root}"])
    with pytest.raises(SourceError, match="no rgb.txt here"):
        _make(cfg)


def test_camera_type_reports_unopenable_device():
    with pytest.raises(SourceError, match="cannot open camera index 57"):
        make_source(SourceConfig(type="camera", camera=57))
    assert CameraSource.is_live


def test_plugin_is_registered_with_the_host(tmp_path):
    from slam3r_app.plugin_host import PluginHost

    host = PluginHost()
    names = [r.name for r in host.describe()]
    assert "datasets" in names
    root = write_tum_fixture(tmp_path / "seq", n=2)
    cfg = load_config(None, overrides=["source.type=tum", f"source.path={root}"])
    src = host.call_first_strict("slam3r_make_source", source=cfg.run.source, context=SimpleNamespace(config=cfg))
    assert isinstance(src, TumSource) and len(src) == 2
