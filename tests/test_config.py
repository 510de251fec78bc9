"""Config loading: resolution, extends, typed overrides, errors naming key and file."""
from __future__ import annotations

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from slam3r_app.config import configs_dir, load_config, parse_override
from slam3r_app.errors import ConfigError


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_bare_name_resolves_to_shipped_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("base")
    assert cfg.files[-1] == str((configs_dir() / "base.yaml").resolve())
    assert cfg.run.model.checkpoint == "yslan/STream3R"


def test_extends_merges_and_tracks_origins(tmp_path):
    base = write(tmp_path / "b.yaml", {"source": {"type": "tum", "stride": 2}, "model": {"mode": "window"}})
    child = write(tmp_path / "c.yaml", {"extends": "b.yaml", "source": {"stride": 3}})
    cfg = load_config(str(child))
    assert cfg.run.source.type == "tum" and cfg.run.source.stride == 3 and cfg.run.model.mode == "window"
    assert cfg.origin("source.stride").endswith("c.yaml")
    assert cfg.origin("source.type").endswith("b.yaml")
    assert cfg.origin("model.window_size") == "defaults"
    assert base.exists()


def test_set_overrides_are_typed():
    cfg = load_config(overrides=["source.max_frames=50", "model.window_size=7", "progress=false",
                                 "source.intrinsics=[500, 500, 320, 240]", "source.camera=rtsp://cam/1"])
    assert cfg.run.source.max_frames == 50 and cfg.run.model.window_size == 7
    assert cfg.run.progress is False
    assert cfg.run.source.intrinsics == [500, 500, 320, 240]
    assert cfg.run.source.camera == "rtsp://cam/1"
    assert parse_override("a.b=null") == (["a", "b"], None)
    assert cfg.origin("source.max_frames") == "--set source.max_frames=50"  # messages show what was typed


@pytest.mark.parametrize("data, key, words", [
    ({"source": {"strid": 2}}, "source.strid", "unknown key"),
    ({"source": {"stride": 0}}, "source.stride", "greater than or equal to 1"),
    ({"source": {"stride": "fast"}}, "source.stride", "valid integer"),
    ({"model": {"mode": "sideways"}}, "model.mode", "'causal' or 'window'"),
    ({"model": {"device": "gpu7"}}, "model.device", "pattern"),
    ({"model": {"image_size": 500}}, "model.image_size", "multiple of 14"),
])
def test_errors_name_key_and_file(tmp_path, data, key, words):
    f = write(tmp_path / "bad.yaml", data)
    with pytest.raises(ConfigError) as e:
        load_config(str(f))
    msg = str(e.value)
    assert key in msg and "bad.yaml" in msg and words in msg


def test_unknown_top_level_key_names_file(tmp_path):
    f = write(tmp_path / "bad.yaml", {"fusoin": {"voxel_size": 0.01}})
    cfg = load_config(str(f))
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'fusoin'"):
        cfg.validate_sections({})


class FusionOpts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voxel_size: float = Field(0.01, gt=0)


def test_plugin_sections_validated_by_their_models(tmp_path):
    f = write(tmp_path / "p.yaml", {"fusion": {"voxel_size": -1}})
    cfg = load_config(str(f))
    with pytest.raises(ConfigError, match=r"p.yaml: fusion.voxel_size: Input should be greater than 0"):
        cfg.validate_sections({"fusion": FusionOpts})
    cfg = load_config(str(f), overrides=["fusion.voxel_size=0.02"])
    cfg.validate_sections({"fusion": FusionOpts})
    assert cfg.plugin_options["fusion"].voxel_size == 0.02
    assert cfg.to_dict()["fusion"] == {"voxel_size": 0.02}


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")
    bad = tmp_path / "x.yaml"
    bad.write_text("source: [unclosed\n")
    with pytest.raises(ConfigError, match="x.yaml: not valid YAML"):
        load_config(str(bad))
    loop = write(tmp_path / "l.yaml", {"extends": "l.yaml"})
    with pytest.raises(ConfigError, match="loops back"):
        load_config(str(loop))
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(overrides=["source.path"])
