"""Plugin discovery from all three places, disabling, bad plugins, and the README's example plugin.

The example plugin (examples/slam3r-plugin-example) is installed with pip as its own
distribution into a temporary folder and found through its entry point.
"""
from __future__ import annotations

import json
import os
import re
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



def test_the_example_plugin_follows_a_correction(tmp_path, site):
    """A correction at the end moves frames 3..5 by 0.3 m sideways: the example measures the corrected
    path (0.2 + the new step from frame 2 to 3), not the poses as they were first tracked (0.25)."""
    corrector = tmp_path / "corrector.py"
    corrector.write_text(textwrap.dedent("""
        import numpy as np
        from slam3r_app import PoseUpdate, hookimpl

        @hookimpl
        def slam3r_propose_corrections(context, final):
            if not final:
                return None
            traj, D = context.trajectory, np.eye(4)
            D[1, 3] = 0.3
            moved = {k: D @ T for k, T in traj.keyframe_transforms().items() if k >= 3}
            return PoseUpdate(keyframes=moved, propagate=False, based_on_revision=traj.revision)
    """))
    # no keyframe plugin: every frame is a keyframe, so the correction moves exactly frames 3, 4, 5
    cfg = write_config(tmp_path, path_length={"min_step": 0.0}, disable=["keyframes", "loop_closure"],
                       plugins=[str(REPO / "tests" / "fake_plugin.py"), str(corrector)])
    res = run_cli(["--config", str(cfg)], tmp_path, site)
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "run" / "path_length.json").read_text())
    assert data["frames"] == 6 and abs(data["path_length"] - (0.2 + (0.05**2 + 0.3**2) ** 0.5)) < 1e-9, data

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


def test_builtin_list_is_written_once_and_a_bare_checkout_reads_it():
    """pyproject.toml's entry points are the one list: the installed distribution's entry points
    and what a bare checkout reads from the file are the same, and every module imports."""
    import importlib
    import importlib.metadata as md

    from slam3r_app.plugin_host import checkout_builtins

    listed = checkout_builtins()
    installed = {ep.name: ep.value for ep in md.entry_points(group="slam3r.plugins")
                 if (ep.dist.name or "").lower() == "slam3r"}
    assert listed == installed and {"fusion", "loop_closure", "viewer", "exports", "datasets"} <= set(listed)
    for module in listed.values():
        assert hasattr(importlib.import_module(module), "__name__")
    import slam3r_plugins
    assert not hasattr(slam3r_plugins, "BUILTIN_PLUGINS")


def test_a_stale_installed_plugin_list_gives_way_to_the_checkouts(monkeypatch, caplog):
    """An editable install made before a plugin moved (entry point ``fusion = slam3r_plugins.fusion``, now a
    package whose hooks live in ``fusion.plugin``): the checkout's list is used, with a warning saying how
    to update the installed one; every built-in still gets its hooks."""
    import importlib.metadata as md

    from slam3r_app import plugin_host
    from slam3r_app.plugin_host import PluginHost, checkout_builtins

    current = checkout_builtins()
    stale = {**current, "fusion": "slam3r_plugins.fusion"}
    dist = md.distribution("slam3r")
    eps = [md.EntryPoint(name, value, "slam3r.plugins") for name, value in stale.items()]
    eps = [ep._for(dist) if hasattr(ep, "_for") else ep for ep in eps]
    monkeypatch.setattr(plugin_host, "_entry_points", lambda: eps)
    monkeypatch.setattr(plugin_host, "_dist_name", lambda ep: "slam3r")
    caplog.set_level("WARNING", logger="slam3r.plugins")
    host = PluginHost(entry_points=False)
    assert "plugin list is older than" in caplog.text and "pip install --no-deps -e ." in caplog.text
    assert host.infos["fusion"].module == "slam3r_plugins.fusion.plugin"
    assert "slam3r_process_frame" in host.infos["fusion"].hooks
