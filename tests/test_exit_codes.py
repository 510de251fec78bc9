"""Issue 20, cases 5 and "exit codes that hide failures": a failed evaluation is a failed plugin
(exit 3), whatever made it fail (evo missing or broken, a trajectory that cannot be aligned, every
frame lost); an evaluate hook's values that JSON cannot hold are named with the plugin and dropped,
and the run's outputs and summary are still written (exit 3)."""
from __future__ import annotations

import json

from tests.cli_helpers import MISBEHAVING, cli, fake_config


def _summary(tmp_path):
    return json.loads((tmp_path / "run" / "summary.json").read_text())


def test_an_evaluate_hook_returning_a_datetime_is_named_dropped_and_exit_3(tmp_path):
    cfg = fake_config(tmp_path, plugins=(MISBEHAVING,), misbehave={"hook": "evaluate", "action": "not_json"})
    p = cli(["--config", str(cfg), "--output", str(tmp_path / "run")], tmp_path)
    assert p.returncode == 3, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    line = [ln for ln in p.stderr.splitlines() if "plugin 'misbehaving_plugin' failed in slam3r_evaluate" in ln]
    assert line and "'misbehave_when' (a datetime)" in line[0] and "dropped" in line[0], p.stderr[-3000:]
    assert "run folder:" in p.stdout  # the summary is printed
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["misbehave_ok"] == 1.5 and "misbehave_when" not in metrics
    s = _summary(tmp_path)
    assert s["complete"] is True and "misbehave_when" in s["plugin_errors"]["misbehaving_plugin"]


def test_a_failed_evaluation_is_exit_3(tmp_path):
    # the fake camera moves on a straight line: a Sim(3) alignment is undefined, the evaluation fails
    cfg = fake_config(tmp_path, evaluation={"enabled": True})
    p = cli(["--config", str(cfg), "--output", str(tmp_path / "run")], tmp_path)
    assert p.returncode == 3, p.stderr[-3000:]
    assert "plugin 'evaluation' failed in slam3r_evaluate: evaluation failed: cannot align" in p.stderr
    assert "collinear" in _summary(tmp_path)["plugin_errors"]["evaluation"]
    assert "collinear" in json.loads((tmp_path / "run" / "metrics.json").read_text())["evaluation_error"]


def test_a_run_whose_frames_are_all_lost_is_not_exit_0(tmp_path):
    cfg = fake_config(tmp_path, frontend="fake_lost", evaluation={"enabled": True})
    p = cli(["--config", str(cfg), "--output", str(tmp_path / "run")], tmp_path)
    assert p.returncode == 3, p.stderr[-3000:]
    assert "evaluation" in _summary(tmp_path)["plugin_errors"]


def test_evaluation_without_evo_is_exit_3(tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "evo").mkdir()
    (blocker / "evo" / "__init__.py").write_text("raise ImportError('rosbags 0.11 is not supported (test stand-in)')\n")
    cfg = fake_config(tmp_path, evaluation={"enabled": True})
    p = cli(["--config", str(cfg), "--output", str(tmp_path / "run")], tmp_path, env={"PYTHONPATH": str(blocker)})
    assert p.returncode == 3, p.stderr[-3000:]
    err = _summary(tmp_path)["plugin_errors"]["evaluation"]
    assert "evo, which is installed but cannot be imported (ImportError: rosbags 0.11" in err, err
    assert "not installed" not in err
