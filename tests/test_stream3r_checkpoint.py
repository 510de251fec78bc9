"""Checkpoint interface: STream3R() matches the official key/shape listing; save / load round trips;
training-checkpoint wrappers and prefixes; clear errors for mismatches and for an offline Hub."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stream3r import CheckpointError, STream3R, STream3RConfig


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models: one intra-op thread is fastest and immune to OpenMP spin-waits on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

TSV = Path(__file__).parent / "fixtures" / "stream3r" / "checkpoint_keys.tsv"
TINY = dict(img_size=28, embed_dim=16, depth=2, num_heads=2, patch_embed="conv", camera_trunk_depth=1,
            camera_num_heads=2, dpt_features=8, dpt_out_channels=(4, 8, 8, 8), dpt_intermediate_layers=(0, 1, 1, 1))


def official_listing():
    rows = []
    for line in TSV.read_text().splitlines():
        name, shape, dtype = line.split("\t")
        rows.append((name, tuple(int(s) for s in shape.split(",")), dtype))
    return rows


def test_default_model_matches_official_checkpoint_keys():
    with torch.device("meta"):
        model = STream3R()
    sd = model.state_dict()
    rows = official_listing()
    assert len(rows) == 1403
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == [(n, s) for n, s, _ in rows]  # same order too
    assert all(d == "float32" for _, _, d in rows) and all(v.dtype == torch.float32 for v in sd.values())
    assert sum(v.numel() for v in sd.values()) == 1_190_596_120
    # every entry is a parameter; the ImageNet mean/std buffers are not persistent
    assert set(sd) == {n for n, _ in model.named_parameters()}
    assert {n for n, _ in model.named_buffers()} == {"aggregator._resnet_mean", "aggregator._resnet_std"}


@pytest.mark.parametrize("kind,width", [("dinov2_vitb14_reg", 768), ("dinov2_vits14_reg", 384)])
def test_dinov2_presets_build(kind, width):
    with torch.device("meta"):
        m = STream3R(patch_embed=kind, embed_dim=width, num_heads=width // 64, depth=1, camera_num_heads=4,
                     dpt_intermediate_layers=(0, 0, 0, 0))
    assert m.aggregator.patch_embed.pos_embed.shape == (1, 1370, width)
    assert len(m.aggregator.patch_embed.blocks) == 12
    with pytest.raises(ValueError, match="width"):
        STream3R(patch_embed=kind, embed_dim=64)


def small_model(seed=0):
    torch.manual_seed(seed)
    return STream3R(**TINY).eval()


def outputs(model, x):
    with torch.no_grad():
        return model(x, mode="causal")


def assert_same_outputs(a, b):
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_save_from_pretrained_round_trip(tmp_path):
    model = small_model()
    x = torch.rand(1, 3, 3, 28, 28)
    model.save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["embed_dim"] == 16
    loaded = STream3R.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config
    assert not loaded.training
    assert_same_outputs(outputs(model, x), outputs(loaded, x))
    # the weights file alone (config.json next to it is picked up)
    loaded2 = STream3R.from_pretrained(str(tmp_path / "ckpt" / "model.safetensors"))
    assert_same_outputs(outputs(model, x), outputs(loaded2, x))
    # non-persistent buffers are real after a meta-device build
    assert torch.allclose(loaded.aggregator._resnet_std.flatten(), torch.tensor([0.229, 0.224, 0.225]))


def test_config_round_trip_and_overrides(tmp_path):
    cfg = STream3RConfig(**TINY)
    assert STream3RConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert STream3R(cfg).config == STream3R(**TINY).config
    # the official config.json carries a non-architecture key
    assert STream3RConfig.from_dict({"img_size": 518, "patch_size": 14, "embed_dim": 1024, "freeze": "none"}) == STream3RConfig()
    with pytest.raises(ValueError, match="unknown keys"):
        STream3RConfig.from_dict({"embed_dimm": 3})
    with pytest.raises(TypeError):
        STream3R(embed_dimm=3)
    small_model().save_pretrained(tmp_path)
    cfg_file = tmp_path / "config.json"  # extra keys in a config.json are ignored (with a warning)
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "_name_or_path": "x"}))
    assert STream3R.from_pretrained(tmp_path).config == STream3RConfig(**TINY)
    with pytest.raises(CheckpointError, match="does not match"):  # overriding the width breaks the shapes
        STream3R.from_pretrained(tmp_path, config_overrides={"embed_dim": 32})


@pytest.mark.parametrize("wrap,prefix,suffix", [("model", "net.", ".pt"), ("state_dict", "module.", ".pth"),
                                                (None, "model.", ".bin"), (None, "", ".ckpt")])
def test_torch_checkpoint_wrappers_and_prefixes(tmp_path, wrap, prefix, suffix):
    model = small_model(1)
    sd = {prefix + k: v for k, v in model.state_dict().items()}
    obj = {wrap: sd, "epoch": 3} if wrap else sd
    path = tmp_path / f"train{suffix}"
    torch.save(obj, path)
    loaded = STream3R.from_pretrained(path, config_overrides=TINY)
    x = torch.rand(1, 2, 3, 28, 28)
    assert_same_outputs(outputs(model, x), outputs(loaded, x))


def test_missing_unexpected_and_shape_errors_name_the_keys(tmp_path):
    model = small_model()
    sd = dict(model.state_dict())
    missing = sd.pop("camera_head.embed_pose.bias")
    sd["aggregator.extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as e:
        STream3R.from_pretrained(tmp_path / "bad.pt", config_overrides=TINY)
    msg = str(e.value)
    assert "missing" in msg and "camera_head.embed_pose.bias" in msg
    assert "unexpected" in msg and "aggregator.extra.weight" in msg
    sd = dict(model.state_dict())
    sd["camera_head.embed_pose.bias"] = torch.zeros(5)
    torch.save(sd, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError) as e:
        STream3R.from_pretrained(tmp_path / "shape.pt", config_overrides=TINY)
    assert "camera_head.embed_pose.bias" in str(e.value) and "[5]" in str(e.value) and f"[{missing.numel()}]" in str(e.value)


def test_missing_local_path_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        STream3R.from_pretrained(tmp_path / "nope.safetensors")
    with pytest.raises(OSError):
        STream3R.from_pretrained(tmp_path)  # a folder without weights


def test_offline_hub_fails_at_once(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []
    real = huggingface_hub.hf_hub_download

    def spy(*a, **kw):
        calls.append(kw.get("local_files_only"))
        return real(*a, **kw)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError) as e:
        STream3R.from_pretrained("yslan/STream3R", cache_dir=tmp_path)
    assert calls == [True]  # the local cache only: no network attempt (no retries)
    msg = str(e.value)
    assert "offline" in msg and "local file" in msg and "model.safetensors" in msg
