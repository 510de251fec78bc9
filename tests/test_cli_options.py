"""`run_slam.py plugins --options`: the printed sections are a valid config.

Independent truth: the printed text, parsed as YAML and loaded as a config file, validates
with every plugin's own options model and yields each model's defaults.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from slam3r_app.config import load_config
from slam3r_app.plugin_host import PluginHost

REPO = Path(__file__).resolve().parents[1]


def test_plugins_options_output_is_a_valid_config(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "run_slam.py"), "plugins", "--options"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    listing, _, options = out.stdout.partition("\n\n")
    assert "fusion" in listing and "hooks:" in listing
    data = yaml.safe_load(options)
    host = PluginHost()
    models = host.config_sections()
    assert set(data) == set(models)
    path = tmp_path / "printed.yaml"
    path.write_text(options)
    cfg = load_config(path)
    cfg.validate_sections(models)
    for name, model in models.items():
        assert cfg.plugin_options[name] == model(), name
