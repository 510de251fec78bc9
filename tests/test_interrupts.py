"""Issue 14, case 5: Ctrl-C and SIGTERM, end to end with real signals.

The first signal stops after the current frame, the second stops at once (the frame in progress is
abandoned) and still writes every completed output, the third aborts at once. SIGINT exits 130,
SIGTERM 143. The run is the synthetic room with the rgbd frontend, fusion and evaluation, so that
every kind of output (trajectory, summary, metrics, mesh, points, plot) is expected. A test plugin
(tests/misbehaving_plugin.py, action ``wait``) holds the run at a chosen point, writes a marker file
there and waits for a release file: the signals are sent at known moments, never after a sleep.
"""
from __future__ import annotations

import json
import signal

import pytest

from tests.cli_helpers import MISBEHAVING, finish, read_until, start_cli, wait_for_file

OUTPUTS = ("trajectory.txt", "summary.json", "metrics.json", "mesh.ply", "points.ply", "trajectory.png",
           "pointcloud.ply", "config.yaml", "run.log")


def _start(tmp_path, *sets: str):
    args = ["--config", "synthetic.yaml", "--output", str(tmp_path / "run")]
    for s in ("progress=false", "source.synthetic_frames=30", "source.width=160", "source.height=120",
              f"plugins=[{MISBEHAVING}]", f"misbehave.marker={tmp_path / 'marker'}",
              f"misbehave.release={tmp_path / 'release'}", *sets):
        args += ["--set", s]
    return start_cli(args, tmp_path)


def _assert_outputs(run, frames_max: int) -> dict:
    for name in OUTPUTS:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, f"{name} was not written"
    summary = json.loads((run / "summary.json").read_text())
    rows = [r for r in (run / "trajectory.txt").read_text().splitlines() if r.strip() and not r.startswith("#")]
    assert 0 < summary["frames"] <= frames_max and len(rows) == summary["frames"]
    assert "ate" in json.loads((run / "metrics.json").read_text())
    return summary


def test_second_ctrl_c_while_the_outputs_are_written_still_writes_every_output(tmp_path):
    proc = _start(tmp_path, "misbehave.hook=run_end", "misbehave.action=wait")
    seen: list[str] = []
    try:
        wait_for_file(tmp_path / "marker", proc)  # the stream ended; the outputs are being written
        proc.send_signal(signal.SIGINT)
        read_until(proc.stderr, "SIGINT received: writing the outputs", seen)
        proc.send_signal(signal.SIGINT)
        read_until(proc.stderr, "once more to abort at once", seen)
        (tmp_path / "release").touch()
    finally:
        out, err = finish(proc, seen)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    _assert_outputs(tmp_path / "run", 30)


def test_second_ctrl_c_during_a_frame_stops_now_and_writes_every_completed_output(tmp_path):
    proc = _start(tmp_path, "misbehave.hook=process_frame", "misbehave.action=wait", "misbehave.at_frame=12",
                  "misbehave.every_frame=false")
    seen: list[str] = []
    try:
        wait_for_file(tmp_path / "marker", proc)  # frame 12 is in progress
        proc.send_signal(signal.SIGINT)
        read_until(proc.stderr, "stopping after this frame", seen)
        proc.send_signal(signal.SIGINT)
        read_until(proc.stderr, "stopping now", seen)
        (tmp_path / "release").touch()  # the abandoned plugin call ends (the run gives it a few seconds)
    finally:
        out, err = finish(proc, seen)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    summary = _assert_outputs(tmp_path / "run", 13)
    # frame 12 was tracked (its pose is in the trajectory), its hooks abandoned; no later frame was read
    assert summary["frames"] == 13 and summary["ended_by"] == "user" and summary["stopped_early"]


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_one_signal_stops_after_the_frame_writes_everything_and_sets_the_exit_code(tmp_path, sig, code):
    proc = _start(tmp_path, "misbehave.hook=process_frame", "misbehave.action=wait", "misbehave.at_frame=8",
                  "misbehave.every_frame=false")
    seen: list[str] = []
    try:
        wait_for_file(tmp_path / "marker", proc)
        proc.send_signal(sig)
        read_until(proc.stderr, "stopping after this frame", seen)
        (tmp_path / "release").touch()
    finally:
        out, err = finish(proc, seen)
    assert proc.returncode == code, err
    summary = _assert_outputs(tmp_path / "run", 9)
    assert summary["frames"] == 9 and summary["ended_by"] == "user"  # the frame in progress was finished
    assert signal.Signals(sig).name in summary["stop_reason"]
    assert summary["plugin_errors"] == {}


def test_third_ctrl_c_aborts_at_once_and_the_core_files_are_already_written(tmp_path):
    """A plugin hangs while the outputs are written (limit 600 s): the third Ctrl-C ends the program at
    once; trajectory.txt and summary.json, written by the core before any plugin's export, are there."""
    proc = _start(tmp_path, "misbehave.hook=export", "misbehave.action=hang", "plugin_timeout_s=600")
    seen: list[str] = []
    try:
        wait_for_file(tmp_path / "marker", proc)
        for expected in ("writing the outputs", "writing the outputs", "aborting at once"):
            proc.send_signal(signal.SIGINT)
            read_until(proc.stderr, expected, seen)
    finally:
        out, err = finish(proc, seen)
    assert proc.returncode == 130, err
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] is False and summary["frames"] == 30
    rows = [r for r in (run / "trajectory.txt").read_text().splitlines() if r.strip() and not r.startswith("#")]
    assert len(rows) == 30
    assert "aborting at once" in (run / "run.log").read_text()
