"""While a live run is paused (viewer button, p key), save / reset / stop requests act at once; the
end-of-run summary prints the frames a live source dropped.

Headless, with a video file standing in for the camera and the slow fake frontend of
``tests/test_live_support.py``. Independent truth: a probe plugin records, from the hooks the
app calls, whether the run was paused when the save / reset happened and how many frames had been
tracked; the files written by the save are read back; the video holds exactly N frames, so
frames tracked + frames dropped = N.
"""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

import tests.test_live_support as support
from slam3r_app.config import load_config
from slam3r_app.frame_loop import format_summary, run
from slam3r_app.hookspecs import hookimpl
from slam3r_app.pipeline import Pipeline
from slam3r_app.plugin_host import PluginHost
from slam3r_app.trajectory import read_tum

N = 45
HEADLESS = ["viewer.enabled=false", "progress=false", "rerun.enabled=false", "source.width=null",
            "source.height=null"]


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return support.write_video(tmp_path_factory.mktemp("pause") / "camera.avi", n=N, fps=30.0)


def live_pipeline(tmp_path: Path, overrides: list[str], *probes) -> Pipeline:
    cfg = load_config("webcam.yaml", overrides=HEADLESS + overrides)
    host = PluginHost(disable=cfg.run.disable, extra=cfg.run.plugins)
    host.register(support, name="live_support")
    for k, p in enumerate(probes):
        host.register(p, name=f"probe{k}")
    return Pipeline(cfg, output=str(tmp_path / "run"), host=host)


def _wait(cond, guard_s: float = 120.0) -> bool:
    """Poll ``cond`` until it holds; ``guard_s`` only catches a hang (it is no timing margin)."""
    deadline = time.monotonic() + guard_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class PauseProbe:
    """Pauses the run after frame ``pause_at`` (as the p key would) and records saves and resets."""

    def __init__(self, pause_at: int) -> None:
        self.pause_at = pause_at
        self.tracked = 0
        self.paused_after = None
        self.saves: list[dict] = []
        self.resets: list[dict] = []
        self.context = None

    @hookimpl
    def slam3r_process_frame(self, frame, estimate, context):
        self.context = context
        self.tracked += 1
        if self.tracked == self.pause_at:
            context.control.pause()
            self.paused_after = self.tracked

    @hookimpl
    def slam3r_export(self, result, context):
        if context.saving_now:
            self.saves.append({"paused": context.control.paused, "tracked": self.tracked,
                               "thread": threading.current_thread().name})
        return None

    @hookimpl
    def slam3r_reset(self, context):
        self.resets.append({"paused": context.control.paused, "tracked": self.tracked})


def test_save_reset_and_stop_act_while_paused(tmp_path, video, monkeypatch):
    monkeypatch.setenv("SLAM3R_TEST_DELAY", "0.02")
    probe = PauseProbe(pause_at=5)
    pipe = live_pipeline(tmp_path, [f"source.camera={video}", "source.pace=fast", "frontend=slowfake",
                                    "trajectory.every_n=1000"], probe)
    ctl = pipe.context.control
    seen: dict = {}

    def user():  # what the viewer buttons / keys do, from another thread
        if not _wait(lambda: probe.paused_after is not None):
            return
        seen["tracked_before_save"] = probe.tracked
        ctl.request_save()
        seen["saved"] = _wait(lambda: probe.saves)
        trajectory = pipe.context.out / "trajectory.txt"  # trajectory.every_n=1000: written by the save only
        # the other export hooks of the same save (the probe's runs first): the trajectory, with its rows
        _wait(lambda: trajectory.is_file() and len(read_tum(trajectory)[0]) == probe.paused_after)
        seen["rows"] = len(read_tum(trajectory)[0]) if trajectory.is_file() else 0
        ctl.request_reset()
        seen["reset"] = _wait(lambda: probe.resets)
        seen["tracked_while_paused"] = probe.tracked
        ctl.resume()
        _wait(lambda: probe.tracked >= probe.paused_after + 5)
        ctl.pause()
        seen["stop_requested"] = True
        ctl.request_stop("stop button in the viewer")

    threading.Thread(target=user, daemon=True).start()
    result = run(pipe.config, pipeline=pipe)
    assert seen.get("saved") and seen.get("reset"), (seen, probe.saves, probe.resets)
    # the save ran while paused, at once, from the loop (its plugin thread, not the requester's), with the frames
    # tracked before the pause
    (save,) = probe.saves
    assert save["paused"] and save["tracked"] == probe.paused_after == seen["tracked_before_save"]
    assert seen["rows"] == probe.paused_after and save["thread"] == "slam3r-plugins"  # the loop's plugin thread
    # the reset too, and no frame was tracked in between
    (reset,) = probe.resets
    assert reset["paused"] and reset["tracked"] == probe.paused_after
    assert seen["tracked_while_paused"] == probe.paused_after
    fe = pipe.context.state["test_frontend"]
    assert fe.resets == 1
    # after resume the trajectory restarts at the reset; the stop, asked while paused again, ends the run
    assert result.ended_by == "user" and result.stop_reason == "stop button in the viewer"
    assert len(result.poses) == result.frames_seen - probe.paused_after >= 5
    assert seen["stop_requested"] and result.frames_seen < N  # the stop ended the run, not the end of the file
    rows = read_tum(tmp_path / "run" / "trajectory.txt")[0]
    assert len(rows) == len(result.poses)


def test_summary_prints_the_frames_a_live_source_dropped(tmp_path, video, monkeypatch):
    monkeypatch.setenv("SLAM3R_TEST_DELAY", "0.08")  # 12.5 frames/s against a 30 frames/s camera
    pipe = live_pipeline(tmp_path, [f"source.camera={video}", "source.pace=realtime", "frontend=slowfake"])
    result = run(pipe.config, pipeline=pipe)
    text = format_summary(result, str(tmp_path / "run"))
    m = re.search(r"^dropped: (\d+) frames", text, re.M)
    assert m, text
    dropped = int(m.group(1))
    assert dropped >= 10 and result.frames_seen + dropped == N  # every frame of the file: tracked or dropped


def test_summary_without_drops_has_no_dropped_line(tmp_path, video, monkeypatch):
    monkeypatch.setenv("SLAM3R_TEST_DELAY", "0.0")
    pipe = live_pipeline(tmp_path, [f"source.camera={video}", "source.pace=fast", "frontend=slowfake"])
    result = run(pipe.config, pipeline=pipe)
    assert result.frames_seen == N
    assert "dropped" not in format_summary(result, str(tmp_path / "run"))


@pytest.mark.parametrize("request_name", ["request_save", "request_reset", "resume", "request_stop"])
def test_a_paused_wait_wakes_up_for_any_request(request_name):
    """Waits with a 600 s timeout: returning at all shows it woke up for the request (no time measured)."""
    from slam3r_app.context import RunControl

    ctl = RunControl()
    done = threading.Event()
    t = threading.Thread(target=lambda: (ctl.wait_while_paused(600.0), done.set()), daemon=True)
    t.start()  # not paused: returns at once
    assert done.wait(120)
    ctl.pause()
    done.clear()
    t = threading.Thread(target=lambda: (ctl.wait_while_paused(600.0), done.set()), daemon=True)
    t.start()
    assert not done.is_set()  # (paused, nothing asked yet)
    getattr(ctl, request_name)()
    assert done.wait(120), f"{request_name} did not wake the paused wait"
