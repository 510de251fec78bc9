"""Issue 14, case 11: messages.

* missing STream3R weights: the hint names ``hf download`` (current huggingface_hub has no
  ``huggingface-cli``), there is no half-minute of retries when the Hub cannot be reached, and the
  message is printed once;
* every config problem is reported at once, an unknown frontend or source type among them, before
  any run folder exists;
* ``--set`` typos are reported as what was typed, with the closest key.
(``plugins --options`` printing a valid config: tests/test_cli_options.py.)
"""
from __future__ import annotations

import pytest

from slam3r_app.config_check import load_and_check
from slam3r_app.errors import ConfigError
from tests.cli_helpers import cli


def test_missing_weights_message_is_printed_once_and_names_hf_download(tmp_path):
    p = cli(["--config", "demo.yaml", "--set", "frontend=stream3r", "--set", "model.checkpoint=yslan/STream3R",
             "--set", "progress=false", "--output", str(tmp_path / "run")], tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert p.returncode == 1
    both = p.stdout + p.stderr
    assert both.count("could not be loaded from 'yslan/STream3R'") == 1, both
    assert both.count("What to do:") == 1
    assert "hf download yslan/STream3R model.safetensors" in both and "huggingface-cli" not in both
    assert "Traceback" not in both
    assert "could not be loaded" in (tmp_path / "run" / "run.log").read_text()  # and in the run's log


def test_an_unreachable_hub_fails_at_once_without_download_retries(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub import constants

    from stream3r import checkpoint

    calls = []
    real = huggingface_hub.hf_hub_download

    def spy(*a, **kw):
        calls.append(kw.get("local_files_only"))
        return real(*a, **kw)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(checkpoint.WeightsUnavailable) as e:
        checkpoint.hub_files("yslan/STream3R", cache_dir=tmp_path)
    assert calls == [True]  # the local cache only: no network download (whose retries take ~25 s)
    assert "cannot be reached" in e.value.reason and "hf download yslan/STream3R" in str(e.value)


def test_every_config_problem_is_reported_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: demo.yaml\nsource:\n  stride: 0\nfrontend: stram3r\nfusion:\n  voxel_size: -1\n"
                   "fusoin: {}\nplugin_timeout_s: 0\n")
    p = cli(["--config", str(bad), "--set", "model.mode=sideways", "--output", str(tmp_path / "run")], tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    for expected in ("bad.yaml: source.stride: Input should be greater than or equal to 1 (got 0)",
                     "--set model.mode=sideways: Input should be 'causal' or 'window'",
                     "bad.yaml: plugin_timeout_s: Input should be greater than 0",
                     "bad.yaml: unknown config key 'fusoin' (did you mean 'fusion'?)",
                     "bad.yaml: fusion.voxel_size: Input should be greater than or equal to 0.0001 (got -1)",
                     "bad.yaml: frontend: unknown frontend 'stram3r' (did you mean 'stream3r'?)"):
        assert expected in p.stderr, (expected, p.stderr)
    assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.parametrize("typed, expected", [
    ("sourc.path=x", "--set sourc.path=x: unknown config key 'sourc' (did you mean 'source'?)"),
    ("source.pth=x", "--set source.pth=x: unknown key 'pth' in 'source' (did you mean 'path'?)"),
    ("fusion.voxl_size=1", "--set fusion.voxl_size=1: unknown key 'voxl_size' in 'fusion' (did you mean 'voxel_size'?)"),
    ("source.stride=two", "--set source.stride=two: Input should be a valid integer"),
    ("source.type=tumm", "--set source.type=tumm: unknown source type 'tumm' (did you mean 'tum'?)"),
])
def test_set_typos_are_reported_as_typed(typed, expected):
    with pytest.raises(ConfigError) as e:
        load_and_check("demo.yaml", overrides=[typed])
    msg = str(e.value)
    assert expected in msg and "defaults:" not in msg
    key = typed.partition("=")[0]
    assert msg.count(key) == 1  # the key is not repeated
