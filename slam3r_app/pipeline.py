"""The SLAM system's outer API: ``track(frame)`` ... ``terminate()`` -> result.

    from slam3r_app import Pipeline
    slam = Pipeline.from_config("tum.yaml", overrides=["source.max_frames=50"])
    source = slam.open_source()
    slam.start(source)
    for frame in source.frames():
        estimate = slam.track(frame)
    result = slam.terminate()          # trajectory, metrics, output files

:func:`slam3r_app.loop.run` wraps this with a progress bar, signal handling and
the stop / pause / reset / save controls.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional

import numpy as np
import yaml

from .config import LoadedConfig, load_config
from .context import RunContext
from .errors import ConfigError, SourceError
from .frontend import Frontend
from .plugin_host import PluginHost
from .run_folder import RunFolder
from .sources import FrameSource
from .timing import StageTimes
from .types import Estimate, Frame, KeyframeDecision, RunResult, TrajectoryPose

log = logging.getLogger("slam3r")


class Pipeline:
    """One run: plugins, run folder, frontend and the per-frame hook sequence.

    Args:
        config: a loaded config.
        output: run folder (overrides ``config.run.output``).
        host: a plugin host (default: built from ``config.run.plugins`` / ``disable``).
    """

    def __init__(self, config: LoadedConfig, output: Optional[str] = None, host: Optional[PluginHost] = None):
        self.config = config
        run = config.run
        self.host = host or PluginHost(
            disable=run.disable, extra=run.plugins, config_file=config.origin("plugins")
        )
        config.validate_sections(self.host.config_sections(), disabled=self.host.disabled)
        folder = RunFolder(output) if output else RunFolder.from_template(run.output, run.name)
        self.context = RunContext(config=config, out=folder, host=self.host)
        self.result = RunResult()
        self.timer = StageTimes()  # per-frame stage times (summary.json "timing")
        self._log_handler: Optional[logging.Handler] = None
        self._t0 = 0.0
        self._started = False
        self._terminated = False
        self._frame_shape: Optional[tuple[int, int]] = None
        self._attach_log()
        self.context.out.write_text("config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))

    @classmethod
    def from_config(cls, name: Optional[str] = None, overrides: Optional[list[str]] = None,
                    data: Optional[dict[str, Any]] = None, output: Optional[str] = None) -> "Pipeline":
        return cls(load_config(name, overrides=overrides, data=data), output=output)

    # ------------------------------------------------------------------ setup
    def _attach_log(self) -> None:
        h = logging.FileHandler(self.context.out.file("run.log"), encoding="utf-8")
        h.setLevel(logging.DEBUG)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("slam3r").addHandler(h)
        logging.getLogger("slam3r").setLevel(logging.DEBUG)
        self._log_handler = h

    def open_source(self) -> FrameSource:
        """Create the frame source named by ``source.type`` (errors name the key and file)."""
        src_cfg = self.config.run.source
        source = self.host.call_first_strict("slam3r_make_source", source=src_cfg, context=self.context)
        if source is None:
            types = self.known_source_types()
            raise ConfigError(
                f"{self.config.where('source.type')}: unknown source type '{src_cfg.type}'"
                + (f" (known: {', '.join(types)})" if types else "")
            )
        return source

    def known_source_types(self) -> list[str]:
        types: list[str] = []
        for info in self.host.describe():
            mod = self.host.pm.get_plugin(info.name)
            types += list(getattr(mod, "SOURCE_TYPES", []) or [])
        return sorted(set(types))

    def start(self, source: Optional[FrameSource] = None) -> None:
        """Create the frontend and call ``slam3r_run_start``."""
        if source is not None:
            self.context.source_info = source.info()
        name = self.config.run.frontend
        frontend = self.host.call_first_strict("slam3r_make_frontend", name=name, context=self.context)
        if frontend is None:
            raise ConfigError(f"{self.config.where('frontend')}: no plugin provides the frontend '{name}'"
                              f" (disabled? see `run_slam.py plugins`)")
        if not isinstance(frontend, Frontend):
            raise ConfigError(f"frontend '{name}' is a {type(frontend).__name__}, not a slam3r_app.Frontend")
        if frontend.needs_depth and source is not None and not source.has_depth:
            raise ConfigError(
                f"the '{name}' frontend needs depth, but the source ({self.config.where('source.type')}: "
                f"'{self.config.run.source.type}') gives colour only; use an RGB-D source (tum, bonn, sintel, "
                f"synthetic) or another frontend (frontend: stream3r)"
            )
        frontend.timer = self.timer
        self.context.frontend = frontend
        self.host.call("slam3r_run_start", context=self.context)
        self._t0 = time.perf_counter()
        self._started = True

    # ------------------------------------------------------------------ per frame
    def check_frame(self, frame: Frame) -> None:
        """Frames of one stream must keep their size (raises SourceError naming the frame)."""
        shape = (frame.height, frame.width)
        if self._frame_shape is None:
            self._frame_shape = shape
        elif shape != self._frame_shape:
            raise SourceError(
                f"frame {frame.index} ({frame.name or 'unnamed'}) is {shape[1]}x{shape[0]} but the stream "
                f"started at {self._frame_shape[1]}x{self._frame_shape[0]}"
            )

    def track(self, frame: Frame) -> Estimate:
        """Run one frame through the frontend and every per-frame hook."""
        if not self._started:
            self.start()
        ctl = self.context.control
        if ctl.take_reset():
            self.reset()
        self.check_frame(frame)
        frontend = self.context.frontend
        assert frontend is not None
        with self.timer.stage("frontend"):
            estimate = frontend.track(frame)
        with self.timer.stage("backends"), self.host.timed_calls() as per_plugin:
            self._run_backends(frame, estimate)
        for name, seconds in per_plugin.items():
            self.timer.add(f"backends.{name}", seconds)
        if ctl.take_save():
            self.save_now()
        return estimate

    def _run_backends(self, frame: Frame, estimate: Estimate) -> None:
        """Keyframe decision (and cache control), per-frame hooks, and the run's bookkeeping."""
        frontend = self.context.frontend
        assert frontend is not None
        decision = self.host.call_first("slam3r_keyframe_decision", frame=frame, estimate=estimate, context=self.context)
        if decision is None:
            decision = KeyframeDecision(is_keyframe=True)
        estimate.is_keyframe = bool(decision.is_keyframe)
        if decision.is_keyframe and decision.reason:
            estimate.extras.setdefault("keyframe_reason", decision.reason)
        if not decision.keep:
            frontend.forget_last()
        self.host.call("slam3r_process_frame", frame=frame, estimate=estimate, context=self.context)
        r = self.result
        r.poses.append(TrajectoryPose(frame.index, frame.timestamp, np.asarray(estimate.pose, dtype=np.float64),
                                      estimate.is_keyframe))
        r.intrinsics[frame.index] = np.asarray(estimate.intrinsics, dtype=np.float64)
        if frame.gt_pose is not None:
            r.gt_poses[frame.index] = np.asarray(frame.gt_pose, dtype=np.float64)
        r.frames_seen += 1

    def handle_requests(self) -> None:
        """Honour pending reset / save requests now (the loop calls this while paused)."""
        ctl = self.context.control
        if ctl.take_reset():
            self.reset()
        if ctl.take_save():
            self.save_now()

    def reset(self) -> None:
        """Forget the map: the frontend restarts and plugins clear their state."""
        log.info("map reset after %d frames", self.result.frames_seen)
        if self.context.frontend is not None:
            self.context.frontend.reset()
        self.host.call("slam3r_reset", context=self.context)
        self.result.poses.clear()
        self.result.gt_poses.clear()
        self.result.intrinsics.clear()
        self._frame_shape = None

    def save_now(self) -> dict[str, str]:
        """Write every output for the frames so far and go on."""
        self.context.saving_now = True
        try:
            written: dict[str, str] = {}
            for _, files in self.host.call("slam3r_export", result=self.result, context=self.context):
                written.update(files)
            return written
        finally:
            self.context.saving_now = False

    # ------------------------------------------------------------------ end
    def terminate(self, stopped_early: bool = False, reason: str = "", ended_by: str = "") -> RunResult:
        """Finish the run: run-end, export and evaluation hooks; metrics.json and summary.json.

        Safe to call after an error or interruption: whatever was tracked is written.
        """
        if self._terminated:
            return self.result
        self._terminated = True
        r = self.result
        r.stopped_early = stopped_early
        r.stop_reason = reason
        r.ended_by = ended_by or ("error" if stopped_early else "end")
        r.seconds = time.perf_counter() - self._t0 if self._started else 0.0
        ctx = self.context
        try:
            with self.host.timed_calls() as per_plugin:
                self.host.call("slam3r_run_end", result=r, context=ctx)
                for _, files in self.host.call("slam3r_export", result=r, context=ctx):
                    r.outputs.update({k: str(v) for k, v in files.items()})
                for name, metrics in self.host.call("slam3r_evaluate", result=r, context=ctx):
                    r.metrics.update(metrics)
            for name, seconds in per_plugin.items():
                self.timer.add_end_of_run(name, seconds)
            r.plugin_errors = dict(self.host.errors)
            if r.metrics:
                ctx.out.write_json("metrics.json", r.metrics)
                r.outputs.setdefault("metrics", str(ctx.out / "metrics.json"))
            ctx.out.write_json("summary.json", self.summary())
        finally:
            if ctx.frontend is not None:
                try:
                    ctx.frontend.close()
                except Exception as e:  # pragma: no cover
                    log.warning("frontend close failed: %s", e)
            if self._log_handler is not None:
                logging.getLogger("slam3r").removeHandler(self._log_handler)
                self._log_handler.close()
        return r

    def summary(self) -> dict[str, Any]:
        r = self.result
        return {
            "run_folder": str(self.context.out),
            "frontend": self.config.run.frontend,
            "source": self.context.source_info,
            "frames": r.frames_seen,
            "frames_skipped": r.frames_skipped,
            "keyframes": len(r.keyframe_indices),
            "seconds": round(r.seconds, 3),
            "fps": round(r.frames_seen / r.seconds, 3) if r.seconds > 0 else None,
            "stopped_early": r.stopped_early,
            "stop_reason": r.stop_reason,
            "ended_by": r.ended_by,
            "metrics": r.metrics,
            "outputs": r.outputs,
            "plugin_errors": r.plugin_errors,
            "info": r.info,
            "frontend_stats": self.context.frontend.stats() if self.context.frontend else {},
            "timing": self.timer.summary(),
        }
