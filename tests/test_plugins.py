"""Plugin discovery from all three places, disabling, bad plugins, and the README's example plugin.

The example plugin (examples/slam3r-plugin-example) is installed with pip as its own
distribution into a temporary folder and found through its entry point.
"""
from __future__ import annotations

import re
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "slam3r-plugin-example"


def pip_install_target(src: Path, target: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(src)], check=True, capture_output=True)


def run_cli(args, cwd, pythonpath):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pythonpath), str(REPO)]), MPLBACKEND="Agg")
    return subprocess.run([sys.executable, str(REPO / "run_slam.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder with the example plugin and a broken plugin installed as distributions."""
    site = tmp_path_factory.mktemp("site")
    pip_install_target(EXAMPLE, site)
    broken = tmp_path_factory.mktemp("broken_src")
    (broken / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "slam3r-broken-plugin"
        version = "0.0.1"
        [project.entry-points."slam3r.plugins"]
        broken = "slam3r_broken_plugin"
        [tool.setuptools]
        py-modules = ["slam3r_broken_plugin"]
    """))
    (broken / "slam3r_broken_plugin.py").write_text("raise ImportError('this plugin is broken on purpose')\n")
    pip_install_target(broken, site)
    return site


def write_config(tmp_path, **extra):
    cfg = {"name": "plug", "source": {"type": "fake", "max_frames": 6}, "frontend": "fake", "progress": False,
           "plugins": [str(REPO / "tests" / "fake_plugin.py")], "output": str(tmp_path / "run"),
           "evaluation": {"enabled": False}, **extra}  # the fake camera's straight line cannot be Sim(3)-aligned
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_plugins_command_lists_all_three_places(tmp_path, site):
    cfg = write_config(tmp_path)
    res = run_cli(["plugins", "--config", str(cfg)], tmp_path, site)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    import re

    squeezed = re.sub(r" {2,}", "  ", out)  # the name column is as wide as the longest name
    assert "path_length  entry point (slam3r-plugin-example 0.1.0)" in squeezed
    assert "hooks: slam3r_config_sections, slam3r_evaluate, slam3r_export" in out
    assert f"fake_plugin  config: {REPO / 'tests' / 'fake_plugin.py'}" in squeezed
    assert "datasets" in out and "built-in" in out
    # the broken distribution is skipped with a warning naming it, nothing else breaks
    assert "plugin 'broken' (slam3r_broken_plugin) could not be loaded and is skipped" in res.stderr
    assert "ERROR: ImportError: this plugin is broken on purpose" in out


def test_third_party_plugin_runs_and_its_options_are_validated(tmp_path, site):
    cfg = write_config(tmp_path, path_length={"min_step": 0.0})
    res = run_cli(["--config", str(cfg)], tmp_path, site)
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "run" / "path_length.json").read_text())
    # the fake camera moves 0.05 m per frame: 5 steps over 6 frames
    assert data["frames"] == 6 and abs(data["path_length"] - 0.25) < 1e-9
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert abs(metrics["path_length"] - 0.25) < 1e-9

    bad = write_config(tmp_path, path_length={"min_step": -1})
    res = run_cli(["--config", str(bad)], tmp_path, site)
    assert res.returncode == 1
    assert "cfg.yaml: path_length.min_step: Input should be greater than or equal to 0" in res.stderr
    assert "Traceback" not in res.stderr


def test_disable_by_name(tmp_path, site):
    # a disabled plugin's section may stay in the config; it is not validated
    cfg = write_config(tmp_path, disable=["path_length"], path_length={"min_step": -5})
    res = run_cli(["--config", str(cfg)], tmp_path, site)
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "run" / "path_length.json").exists()
    res = run_cli(["plugins", "--config", str(cfg)], tmp_path, site)
    assert re.search(r"path_length +entry point \(slam3r-plugin-example 0.1.0\)", res.stdout) and "disabled" in res.stdout


def test_config_plugin_that_fails_to_import_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("import not_a_module_anywhere\n")
    cfg = write_config(tmp_path, plugins=[str(bad)])
    res = run_cli(["--config", str(cfg)], tmp_path, tmp_path)
    assert res.returncode == 1
    assert "bad_plugin.py failed to import: ModuleNotFoundError" in res.stderr
    assert "Traceback" not in res.stderr
