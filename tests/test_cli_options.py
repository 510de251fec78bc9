"""`run_slam.py plugins --options`: the printed sections are a valid config.

Independent truth: the printed text, parsed as YAML and loaded as a config file, validates
with every plugin's own options model and yields each model's defaults.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from slam3r_app.config import RunConfig, load_config
from slam3r_app.plugin_host import PluginHost

REPO = Path(__file__).resolve().parents[1]


def test_plugins_options_output_is_a_valid_config(tmp_path):
    """The whole output (the plugin listing is YAML comments) parses, loads and validates as a config."""
    out = subprocess.run(
        [sys.executable, str(REPO / "run_slam.py"), "plugins", "--options"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert "# fusion" in out.stdout and "hooks:" in out.stdout
    data = yaml.safe_load(out.stdout)
    host = PluginHost()
    models = host.config_sections()
    core = set(RunConfig.model_fields)
    assert set(data) == set(models) | core
    path = tmp_path / "printed.yaml"
    path.write_text(out.stdout)
    cfg = load_config(path)
    cfg.validate_sections(models)
    assert cfg.run == RunConfig()
    for name, model in models.items():
        assert cfg.plugin_options[name] == model(), name


def test_log_level_sets_what_the_console_shows(tmp_path):
    """``log_level`` is read: WARNING hides the INFO lines on the console; run.log still has them."""
    from tests.cli_helpers import cli, fake_config

    cfg = fake_config(tmp_path, frames=3)
    info = cli(["--config", str(cfg), "--output", str(tmp_path / "a"), "--set", "progress=false"], cwd=tmp_path)
    quiet = cli(["--config", str(cfg), "--output", str(tmp_path / "b"), "--set", "progress=false",
                 "--set", "log_level=WARNING"], cwd=tmp_path)
    assert info.returncode == 0 and quiet.returncode == 0, quiet.stderr
    assert "INFO:" in info.stderr and "INFO:" not in quiet.stderr
    assert " INFO " in (tmp_path / "b" / "run.log").read_text()
