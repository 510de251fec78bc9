"""Issue 14, case 1: a plugin can no longer hang or crash a run.

Every hook call runs under the plugin host's watchdog; a plugin that runs past its limit
(``plugin_timeout_s`` / ``plugin_frame_timeout_s``), raises, or returns the wrong type is named,
switched off, and the run goes on to write every other output (exit 3). Signals are handled at
once whatever a plugin is doing. Subprocess runs with real signals, synchronised on the files the
misbehaving plugin writes when it starts misbehaving and on the lines the run prints.
"""
from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from slam3r_app.hook_results import check
from slam3r_app.types import KeyframeDecision
from slam3r_app.watchdog import Overrun, Watchdog
from tests.cli_helpers import MISBEHAVING, cli, fake_config, start_cli, wait_for_file


def _rows(path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))


def _config(tmp_path, **misbehave):
    return fake_config(tmp_path, plugins=(MISBEHAVING,), misbehave=misbehave, output=str(tmp_path / "run"))


def test_a_plugin_hanging_in_export_is_switched_off_and_every_other_output_is_written(tmp_path):
    # (the hang never ends, so the limit's value cannot make this flaky; 5 s keeps legitimate end-of-run
    # work of the other plugins inside it on a loaded machine, and nothing below depends on them)
    cfg = _config(tmp_path, hook="export", action="hang")
    p = cli(["--config", str(cfg), "--set", "plugin_timeout_s=5"], tmp_path)
    assert p.returncode == 3, p.stderr
    assert "plugin 'misbehaving_plugin' failed in slam3r_export" in p.stderr and "still running after" in p.stderr
    assert "plugin_timeout_s" in p.stderr and "Traceback" not in p.stderr
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert "misbehaving_plugin" in summary["plugin_errors"] and summary["frames"] == 10
    assert summary["complete"] is True  # the run went on after the plugin was cut: the final summary
    assert _rows(run / "trajectory.txt") == 10


def test_a_plugin_hanging_in_a_frame_is_switched_off_and_the_run_goes_on(tmp_path):
    cfg = _config(tmp_path, hook="process_frame", action="hang", at_frame=2)
    p = cli(["--config", str(cfg), "--set", "plugin_frame_timeout_s=5"], tmp_path)
    assert p.returncode == 3, p.stderr
    assert "failed in slam3r_process_frame" in p.stderr and "plugin_frame_timeout_s" in p.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["frames"] == 10 and _rows(tmp_path / "run" / "trajectory.txt") == 10


def test_a_plugin_hanging_in_the_refinement_is_cut_by_its_own_limit_and_the_tracked_poses_are_written(tmp_path):
    cfg = _config(tmp_path, hook="refine_trajectory", action="hang")
    p = cli(["--config", str(cfg), "--set", "plugin_refine_timeout_s=5"], tmp_path)
    assert p.returncode == 3, p.stderr
    assert "failed in slam3r_refine_trajectory" in p.stderr and "plugin_refine_timeout_s" in p.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["complete"] is True and summary["frames"] == 10
    assert _rows(tmp_path / "run" / "trajectory.txt") == 10


@pytest.mark.parametrize("hook, expected", [
    ("keyframe_decision", "returned a str"),
    ("refine_trajectory", "returned a dict"),
    ("export", "returned a list"),
    ("evaluate", "returned a float"),
])
def test_a_wrong_return_type_names_the_plugin_and_switches_it_off(tmp_path, hook, expected):
    cfg = _config(tmp_path, hook=hook, action="wrong_type")
    p = cli(["--config", str(cfg)], tmp_path)
    assert p.returncode == 3, p.stderr
    assert f"plugin 'misbehaving_plugin' failed in slam3r_{hook}" in p.stderr and expected in p.stderr
    assert "Traceback" not in p.stderr and "AttributeError" not in p.stderr
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert expected in summary["plugin_errors"]["misbehaving_plugin"]
    assert summary["frames"] == 10 and summary["keyframes"] >= 1  # the keyframes plugin decided instead
    assert (run / "metrics.json").is_file() and _rows(run / "trajectory.txt") == 10


def test_a_plugin_that_raises_is_named_and_the_run_exits_3(tmp_path):
    cfg = _config(tmp_path, hook="run_end", action="raise")
    p = cli(["--config", str(cfg)], tmp_path)
    assert p.returncode == 3, p.stderr
    assert "failed in slam3r_run_end" in p.stderr and "misbehaving in run_end on purpose" in p.stderr


def test_ctrl_c_acts_at_once_while_a_plugin_hangs_in_a_frame(tmp_path):
    """First Ctrl-C: the run says at once that it stops after the frame, naming the busy plugin;
    second: it stops now, the hung plugin is given up and every other output is written (exit 130)."""
    marker = tmp_path / "entered"
    cfg = _config(tmp_path, hook="process_frame", action="hang", at_frame=3, marker=str(marker))
    proc = start_cli(["--config", str(cfg), "--set", "plugin_frame_timeout_s=600"], tmp_path)
    at = 0  # stderr lines read so far
    try:
        wait_for_file(marker, proc)
        proc.send_signal(signal.SIGINT)
        line, at = proc.read_until("stopping after this frame", at)
        assert "plugin 'misbehaving_plugin' in slam3r_process_frame" in line
        proc.send_signal(signal.SIGINT)
        _, at = proc.read_until("stopping now", at)
    finally:
        out, err = proc.finish()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["ended_by"] == "user" and summary["frames"] == 4  # frame 3 was tracked; its hooks abandoned
    assert "misbehaving_plugin" in summary["plugin_errors"]
    assert _rows(run / "trajectory.txt") == 4 and (run / "metrics.json").is_file()


# ----------------------------------------------------------------------------- the parts, in-process
def test_watchdog_gives_up_on_an_overrun_and_replaces_its_worker():
    wd = Watchdog()
    release = threading.Event()
    with pytest.raises(Overrun) as e:
        wd.run([lambda: 1, lambda: release.wait(600)], [60.0, 0.2], labels=["a", "b"])
    assert e.value.index == 1 and e.value.label == "b" and [o.value for o in e.value.outcomes] == [1]
    assert wd.abandoned == 1
    assert [o.value for o in wd.run([lambda: 2], [60.0])] == [2]  # a fresh worker
    release.set()


def test_watchdog_reports_errors_and_stops_at_the_first_result():
    wd = Watchdog()
    outs = wd.run([lambda: None, lambda: 1 / 0, lambda: "x", lambda: "never"], [60.0] * 4,
                  stop_when=lambda v: v == "x")
    assert [o.ok for o in outs] == [True, False, True] and isinstance(outs[1].error, ZeroDivisionError)
    assert "ZeroDivisionError" in outs[1].traceback


def test_watchdog_runs_nested_calls_inline():
    wd = Watchdog()
    outs = wd.run([lambda: wd.run([lambda: threading.current_thread().name], [0.001])[0].value], [60.0])
    assert outs[0].value == "slam3r-plugins"


def test_hook_results_are_checked():
    assert check("slam3r_keyframe_decision", KeyframeDecision(True)) is None
    assert "expected a slam3r_app.KeyframeDecision" in check("slam3r_keyframe_decision", {"is_keyframe": True})
    assert check("slam3r_export", {"mesh": "/x/mesh.ply"}) is None
    assert "each value must be the path" in check("slam3r_export", {"mesh": 3})
    assert "returned a list" in check("slam3r_export", ["a"])
    assert check("slam3r_process_frame", "anything") is None and check("slam3r_export", None) is None


def test_a_busy_plugin_is_named_while_the_loop_waits(tmp_path):
    from slam3r_app.hookspecs import hookimpl
    from slam3r_app.plugin_host import PluginHost

    entered, release = threading.Event(), threading.Event()

    class Slow:
        @hookimpl
        def slam3r_reset(self, context):
            entered.set()
            release.wait(60)

    host = PluginHost(builtins=False, entry_points=False)
    host.register(Slow(), name="slow")
    t = threading.Thread(target=lambda: host.call("slam3r_reset", context=None))
    t.start()
    try:
        assert entered.wait(60)
        assert host.busy().startswith("plugin 'slow' in slam3r_reset for ")
    finally:
        release.set()
        t.join(60)
    deadline = time.monotonic() + 60
    while host.busy() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert host.busy() == ""
