"""The SLAM system's outer API: ``track(frame)`` ... ``terminate()`` -> result.

    from slam3r_app import Pipeline
    slam = Pipeline.from_config("tum.yaml", overrides=["source.max_frames=50"])
    source = slam.open_source()
    slam.start(source)
    for frame in source.frames():
        estimate = slam.track(frame)
    result = slam.terminate()          # trajectory, metrics, output files

:func:`slam3r_app.frame_loop.run` wraps this with a progress bar, signal handling and
the stop / pause / reset / save controls.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any, Optional

import numpy as np
import yaml

from .config import LoadedConfig
from .context import RunContext
from .corrections import CorrectionApplier
from .errors import ConfigError, SourceError
from .frontend import Frontend
from .keyframe_store import KeyframeStore
from .plugin_host import PluginHost
from .run_folder import RunFolder
from .run_result import RunResult
from .services import ExportedMaps
from .sources import FrameSource
from .timing import StageTimes
from .trajectory_store import TrajectoryStore
from .types import Estimate, Frame, KeyframeDecision, settle_status

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
        self.host.set_timeouts(run.plugin_timeout_s, run.plugin_frame_timeout_s, run.plugin_refine_timeout_s)
        config.validate_sections(self.host.config_sections(), disabled=self.host.disabled)
        folder = RunFolder(output) if output else RunFolder.from_template(run.output, run.name)
        self.trajectory = TrajectoryStore()
        kcfg = run.keyframe_store
        self.keyframes = KeyframeStore(max_side=kcfg.max_side, max_memory_mb=kcfg.max_memory_mb)
        self.context = RunContext(config=config, out=folder, host=self.host, trajectory=self.trajectory,
                                  keyframes=self.keyframes)
        self.corrections = CorrectionApplier(self.context)
        self.result = RunResult(trajectory=self.trajectory)
        self.timer = StageTimes()  # per-frame stage times (summary.json "timing")
        self._log_handler: Optional[logging.Handler] = None
        self._t0 = 0.0
        self._started = False
        self._terminated = False
        self._frame_shape: Optional[tuple[int, int]] = None
        self._attach_log()
        self.context.out.write_text("config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        self._write_errors_seen = 0

    @classmethod
    def from_config(cls, name: Optional[str] = None, overrides: Optional[list[str]] = None,
                    data: Optional[dict[str, Any]] = None, output: Optional[str] = None) -> "Pipeline":
        from .config_check import load_and_check

        config, host = load_and_check(name, overrides=overrides, data=data)  # every config problem at once
        return cls(config, output=output, host=host)

    # ------------------------------------------------------------------ setup
    def _attach_log(self) -> None:
        h = RunLogHandler(self.context.out.file("run.log"), encoding="utf-8")
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
            stype = self.config.run.source.type
            if stype == "rosbag":
                raise ConfigError(
                    f"the '{name}' frontend needs depth, but the ROS bag source reads colour only "
                    f"(topic {self.context.source_info.get('rgb_topic') or '?'}): name the bag's depth image topic "
                    f"with source.rosbag_depth_topic (e.g. --set source.rosbag_depth_topic=/camera/depth/image_raw), "
                    f"or use another frontend (frontend: stream3r)")
            raise ConfigError(
                f"the '{name}' frontend needs depth, but the source ({self.config.where('source.type')}: "
                f"'{stype}') gives colour only; use an RGB-D source (tum, bonn, sintel, "
                f"synthetic, rosbag with source.rosbag_depth_topic) or another frontend (frontend: stream3r)"
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
        self.check_writes()
        return estimate

    def check_writes(self) -> None:
        """Stop the run at a frame boundary once a file could not be written (a full disk: the next
        writes would fail too) or the run folder is gone.

        Raises:
            OutputWriteError: naming the first file that failed.
        """
        from .io import OutputWriteError

        self.context.out.check()
        errors = self.host.write_errors
        if len(errors) > self._write_errors_seen:
            self._write_errors_seen = len(errors)
            name, msg = next(iter(errors.items()))
            raise OutputWriteError(f"{msg} (plugin '{name}'); the run stops here")

    def _run_backends(self, frame: Frame, estimate: Estimate) -> None:
        """World correction, keyframe decision (and cache control), the trajectory and keyframe
        stores, per-frame hooks, and the corrections ready at this frame boundary."""
        frontend = self.context.frontend
        assert frontend is not None
        settle_status(estimate)
        if estimate.depth_is_metric:
            self.trajectory.declare_metric_frontend()
        if not frontend.follows_corrections:
            self.corrections.map_estimate(estimate)
        decision = self.host.call_first("slam3r_keyframe_decision", frame=frame, estimate=estimate, context=self.context)
        if decision is None:
            decision = KeyframeDecision(is_keyframe=True)
        estimate.is_keyframe = bool(decision.is_keyframe)
        if decision.is_keyframe and decision.reason:
            estimate.extras.setdefault("keyframe_reason", decision.reason)
        if not decision.keep:
            frontend.forget_last()
        self.trajectory.add(frame.index, frame.timestamp, np.array(estimate.pose, dtype=np.float64),
                            estimate.is_keyframe, estimate.status, intrinsics=estimate.intrinsics,
                            gt_pose=frame.gt_pose)
        self.result.frames_seen += 1  # with its trajectory row: a "stop now" during the hooks keeps both in step
        if estimate.is_keyframe and not estimate.lost:
            self.keyframes.add(frame, estimate)
        self.host.call("slam3r_process_frame", frame=frame, estimate=estimate, context=self.context)
        self.corrections.collect(final=False)

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
        self.context.places.clear()
        self.trajectory.clear()
        self.keyframes.clear()
        self.corrections.reset()
        self._frame_shape = None

    def save_now(self) -> dict[str, str]:
        """Write every output for the frames so far and go on."""
        self.context.saving_now = True
        try:
            written: dict[str, str] = {}
            path = self.write_core_trajectory()
            if path is not None:
                written["trajectory"] = path
            self.context.services.exported = ExportedMaps()  # this pass's maps only
            for _, files in self.host.call("slam3r_export", result=self.result, context=self.context):
                written.update(files)
            return written
        finally:
            self.context.saving_now = False

    # ------------------------------------------------------------------ end
    def terminate(self, stopped_early: bool = False, reason: str = "", ended_by: str = "") -> RunResult:
        """Finish the run: run-end, export and evaluation hooks; metrics.json and summary.json.

        Safe to call after an error or interruption: whatever was tracked is written. The core's
        own files come first (trajectory.txt, a summary.json marked ``"complete": false``), so that
        a plugin that fails, hangs (cut by ``plugin_timeout_s``) or an abort during the plugins'
        exports cannot lose them; the final summary.json (``"complete": true``) comes last.
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
            if self._started:
                self.corrections.collect(final=True)  # optimisations still running hand in their result
                if r.ended_by != "error":
                    with self.host.timed_calls() as refine_seconds:
                        self.corrections.refine()  # a global refinement (bundle adjustment) of the whole run
                    for name, seconds in refine_seconds.items():
                        self.timer.add_end_of_run(name, seconds)
            self.write_core_trajectory()
            self._write_summary(complete=False)
            with self.host.timed_calls() as per_plugin:
                self.host.call("slam3r_run_end", result=r, context=ctx)
                ctx.services.exported = ExportedMaps()
                for _, files in self.host.call("slam3r_export", result=r, context=ctx):
                    r.outputs.update({k: str(v) for k, v in files.items()})
                for _name, metrics in self.host.call("slam3r_evaluate", result=r, context=ctx):
                    r.metrics.update(metrics)
            for name, seconds in per_plugin.items():
                self.timer.add_end_of_run(name, seconds)
            r.plugin_errors = dict(self.host.errors)
            if r.metrics:
                try:
                    ctx.out.write_json("metrics.json", r.metrics, lenient=True)
                    r.outputs.setdefault("metrics", str(ctx.out / "metrics.json"))
                except OSError as e:
                    self._core_write_failed("metrics.json", e)
            self._write_summary(complete=True)
        finally:
            if ctx.frontend is not None:
                try:
                    ctx.frontend.close()
                except Exception as e:  # noqa: BLE001 # pragma: no cover - plugin code must not stop the shutdown
                    log.warning("frontend close failed: %s", e)
            if self._log_handler is not None:
                logging.getLogger("slam3r").removeHandler(self._log_handler)
                self._log_handler.close()
            ctx.out.close()  # the run folder's lock
            self.host.watchdog.close()  # its idle worker thread ends (a later hook call starts another)
        return r

    def _write_summary(self, complete: bool) -> None:
        """summary.json; ``complete`` False while the plugins' end-of-run hooks are still to run."""
        self.result.plugin_errors = dict(self.host.errors)
        self._collect_write_errors()
        try:
            self.context.out.write_json("summary.json", {**self.summary(), "complete": complete}, lenient=True)
        except OSError as e:
            self._core_write_failed("summary.json", e)

    def _core_write_failed(self, name: str, e: OSError) -> None:
        """A file of the core's own could not be written: reported once, the run ends with exit 1."""
        from .io import describe_os_error

        msg = str(e) if name in str(e) else f"could not write {name}: {describe_os_error(e)}"
        if self.result.write_errors.get("core") != msg:
            log.error("%s", msg)
        self.result.write_errors.setdefault("core", msg)

    def _collect_write_errors(self) -> None:
        for name, msg in self.host.write_errors.items():
            self.result.write_errors.setdefault(name, msg)

    def write_core_trajectory(self) -> Optional[str]:
        """Write ``trajectory.txt`` (TUM, every frame, current poses, the world's final scale) and
        ``scale.json`` from the trajectory store (:func:`slam3r_app.trajectory.write_world_trajectory`).

        Written by the core only, before any plugin runs at the end of a run (after the last
        corrections, the world's scale included), so that a failing or hanging plugin can never
        lose it; also on "save now".
        """
        from .trajectory import write_world_trajectory

        try:
            self.context.out.check()  # a run folder removed during the run is never made again
            files = write_world_trajectory(self.context.out.path, self.trajectory)
        except OSError as e:
            self._core_write_failed("trajectory.txt", e)
            return None
        self.result.outputs.update(files)
        return files["trajectory"]

    def summary(self) -> dict[str, Any]:
        r = self.result
        return {
            "run_folder": str(self.context.out),
            "frontend": self.config.run.frontend,
            "source": self.context.source_info,
            "frames": r.frames_seen,
            "frames_skipped": r.frames_skipped,
            "keyframes": r.num_keyframes,
            "seconds": round(r.seconds, 3),
            "fps": round(r.frames_seen / r.seconds, 3) if r.seconds > 0 else None,
            "stopped_early": r.stopped_early,
            "stop_reason": r.stop_reason,
            "ended_by": r.ended_by,
            "metrics": r.metrics,
            "outputs": r.outputs,
            "plugin_errors": r.plugin_errors,
            "write_errors": r.write_errors,
            "info": {**r.info, "keyframe_store": self.keyframes.stats(),
                     "trajectory_revision": self.trajectory.revision},
            "corrections": self.corrections.summary(),
            "frontend_stats": self.context.frontend.stats() if self.context.frontend else {},
            "timing": self.timer.summary(),
        }


class RunLogHandler(logging.FileHandler):
    """``run.log``: a write that fails (a full disk) switches the file off with one console line,
    instead of a "--- Logging error ---" traceback per record and one more when the file is closed."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if self.failed:
            return
        self.failed = True
        err = sys.exc_info()[1]
        from .io import describe_os_error

        why = describe_os_error(err) if err is not None else "unknown error"
        with contextlib.suppress(Exception):
            sys.stderr.write(f"WARNING: {self.baseFilename}: {why}; run.log stops here (the console goes on)\n")

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def flush(self) -> None:
        if self.failed:
            return
        try:
            super().flush()
        except OSError:
            self.handleError(None)  # type: ignore[arg-type]

    def close(self) -> None:
        try:
            super().close()
        except OSError:
            if not self.failed:
                self.handleError(None)  # type: ignore[arg-type]
            with contextlib.suppress(Exception):
                if self.stream is not None:
                    self.stream = None

