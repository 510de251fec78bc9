"""The frame loop: source -> frontend -> hooks, with progress, signals and controls."""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Iterator, Optional

from tqdm import tqdm

from .config import LoadedConfig
from .errors import Slam3rError, SourceError
from .pipeline import Pipeline
from .prefetch import Prefetcher
from .run_result import RunResult
from .signals import SignalGuard

log = logging.getLogger("slam3r")
#: ``extra=`` for records that go to run.log but not to the console (the CLI prints the error itself, once)
RUN_LOG_ONLY = {"console": False}


@contextlib.contextmanager
def stop_on_signals(pipeline: Pipeline) -> Iterator[SignalGuard]:
    """SIGINT / SIGTERM handlers for a run of ``pipeline`` (see :mod:`slam3r_app.signals`)."""
    guard = SignalGuard(pipeline.context.control.request_stop, busy=pipeline.host.busy,
                        grace_s=pipeline.config.run.stop_grace_s, on_first=pipeline.host.watchdog.set_stop_deadline)
    with guard.installed():
        yield guard


class _Rate:
    """Frames per second over a sliding window of recent frames."""

    def __init__(self, window: int = 20) -> None:
        self.times: list[float] = []
        self.window = window

    def tick(self) -> float:
        self.times.append(time.perf_counter())
        self.times = self.times[-self.window:]
        if len(self.times) < 2:
            return 0.0
        return (len(self.times) - 1) / max(self.times[-1] - self.times[0], 1e-9)


def run(config: LoadedConfig, output: Optional[str] = None, pipeline: Optional[Pipeline] = None) -> RunResult:
    """Run a whole sequence as configured; always writes the outputs of the frames done.

    Signals (main thread): the first Ctrl-C / SIGTERM stops after the current frame, the
    second stops at once, the third aborts (:mod:`slam3r_app.signals`); every way out
    writes the outputs. ``result.info["signal"]`` names the first signal received.

    Raises:
        Slam3rError: for configuration / source problems found before the first frame
            (after writing the error into the run folder's ``run.log`` and ``summary.json``).
    """
    pipe = pipeline or Pipeline(config, output=output)
    with stop_on_signals(pipe) as guard:
        try:
            result = _run_guarded(pipe, guard)
        finally:
            guard.phase = "after"
            pipe.context.out.close()  # the run folder's lock: the outputs are written
        _after_outputs(pipe)
    if guard.first_signal:
        result.info["signal"] = guard.first_signal
    return result


def _run_guarded(pipe: Pipeline, guard: SignalGuard) -> RunResult:
    run_cfg = pipe.config.run
    try:
        source = pipe.open_source()
    except BaseException as e:
        guard.phase = "outputs"
        _log_start_failure(e)
        pipe.terminate(stopped_early=True, reason=_reason(e, "source could not be opened"), ended_by="error")
        raise
    ctl = pipe.context.control
    stopped, reason, ended_by = False, "", "end"
    bar = None
    with source, contextlib.ExitStack() as stack:
        try:
            pipe.start(source)
            total = source.length()
            bar = tqdm(total=total, unit="frame", dynamic_ncols=True, disable=not run_cfg.progress,
                       desc=run_cfg.name)
            rate = _Rate()
            frames = stack.enter_context(
                _frame_stream(pipe, source, run_cfg.source.on_bad_frame, run_cfg.source.prefetch))
            timer = pipe.timer
            it = iter(frames)
            t_frame = time.perf_counter()
            while True:
                with timer.stage("source"):
                    frame = next(it, None)
                if frame is None or ctl.stop_requested:
                    break
                if ctl.paused:
                    while ctl.paused and not ctl.stop_requested:
                        ctl.wait_while_paused(0.5)
                        pipe.handle_requests()  # reset / save while paused: now, not after resume
                    t_frame = time.perf_counter()  # a pause is not a frame's time
                if ctl.stop_requested:
                    break
                pipe.context.services.dropped = int(getattr(source, "dropped", 0))  # live sources: for the viewer
                try:
                    pipe.track(frame)
                except SourceError as e:
                    if run_cfg.source.on_bad_frame == "skip":
                        log.warning("skipping frame: %s", e)
                        pipe.result.frames_skipped += 1
                        continue
                    raise
                fps = rate.tick()
                pipe.context.services.fps = fps
                bar.update(1)
                bar.set_postfix(_postfix(pipe, fps, source), refresh=False)
                now = time.perf_counter()
                timer.add("frame", now - t_frame)
                t_frame = now
            if ctl.stop_requested:
                stopped, reason, ended_by = True, ctl.stop_reason, "user"
            elif getattr(source, "end_reason", ""):
                reason = source.end_reason  # e.g. a camera that stopped delivering frames
                log.warning("source ended: %s", reason)
        except KeyboardInterrupt:
            sig = guard.first_signal or "SIGINT"
            stopped, ended_by = True, "user"
            reason = "interrupted (Ctrl-C)" if sig == "SIGINT" else f"interrupted ({sig})"
            if ctl.stop_reason:
                reason = f"{ctl.stop_reason}; {reason}"
        except Slam3rError as e:
            guard.phase = "outputs"
            stopped, reason, ended_by = True, str(e), "error"
            log.error("run stopped: %s", e, extra=RUN_LOG_ONLY)  # the caller prints it (once)
        finally:
            guard.phase = "outputs"  # from here on a signal no longer interrupts: the outputs are written
            stack.close()  # stop the prefetch thread before the outputs are written
            if bar is not None:
                bar.close()
            pipe.result.frames_skipped += len(source.skipped)
            pipe.result.info["source_dropped"] = getattr(source, "dropped", 0)
            result = pipe.terminate(stopped_early=stopped, reason=reason, ended_by=ended_by)
    return result


def _reason(e: BaseException, default: str) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted during start-up"
    return str(e) or default


def _log_start_failure(e: BaseException) -> None:
    """The error that stopped a run before its first frame goes into run.log (and on the console)."""
    if isinstance(e, KeyboardInterrupt):
        log.warning("interrupted during start-up", extra=RUN_LOG_ONLY)
    elif isinstance(e, Slam3rError):
        log.error("run failed before its first frame: %s", e, extra=RUN_LOG_ONLY)
    else:
        log.error("run failed before its first frame: %s: %s", type(e).__name__, e, exc_info=True,
                  extra=RUN_LOG_ONLY)


def _after_outputs(pipe: Pipeline) -> None:
    """Callables plugins left in ``context.services.after_outputs`` (a viewer kept open after the
    run): called once the outputs are written, in the loop's thread; a signal ends them."""
    calls, pipe.context.services.after_outputs = pipe.context.services.after_outputs, []
    for fn in calls:
        try:
            fn()
        except KeyboardInterrupt:
            pass
        except Exception as e:  # noqa: BLE001 - the outputs are written; report and go on
            log.warning("after the run: %s: %s", type(e).__name__, e)
    pipe.host.watchdog.close()


def _frame_stream(pipe: Pipeline, source: Any, on_bad_frame: str, prefetch: int) -> Any:
    """The source's frames, read ``prefetch`` frames ahead (and prepared by the frontend) in a
    background thread for file sources; live sources are read in the loop's thread."""
    frames = source.frames(on_bad_frame=on_bad_frame)
    if prefetch <= 0 or getattr(source, "is_live", False):
        return contextlib.nullcontext(frames)
    fe = pipe.context.frontend
    prepare = fe.prepare if fe is not None and fe.prepares_ahead else None
    return Prefetcher(frames, prepare=prepare, depth=prefetch, timer=pipe.timer)


def _postfix(pipe: Pipeline, fps: float, source: Any) -> dict[str, Any]:
    r = pipe.result
    post: dict[str, Any] = {"fps": f"{fps:.1f}", "kf": r.num_keyframes}
    fe = pipe.context.frontend
    stats = fe.stats() if fe is not None else {}
    if "gpu_mem_gb" in stats:
        post["mem"] = f"{stats['gpu_mem_gb']:.1f}GB"
    if "cache_frames" in stats:
        post["cache"] = stats["cache_frames"]
    dropped = getattr(source, "dropped", 0)
    if dropped:
        post["dropped"] = dropped
    return post


def format_summary(result: RunResult, run_folder: str, timing: Optional[str] = None) -> str:
    """A short human-readable end-of-run summary (``timing``: :meth:`StageTimes.format`'s line)."""
    lines = [f"run folder: {run_folder}"]
    n = result.frames_seen
    fps = n / result.seconds if result.seconds > 0 else 0.0
    lines.append(f"frames: {n} ({result.num_keyframes} keyframes, {result.frames_skipped} skipped), "
                 f"{result.seconds:.1f} s, {fps:.2f} frames/s")
    dropped = int(result.info.get("source_dropped") or 0)
    if dropped:  # a live source: frames that arrived while the frontend was busy
        lines.append(f"dropped: {dropped} frames (the live source delivered them while the frontend was busy)")
    if result.stopped_early and result.ended_by == "error":
        lines.append("stopped early: by the error below")
    elif result.stopped_early:
        lines.append(f"stopped early: {result.stop_reason}")
    if timing:
        lines.append(timing)
    for k in ("ate", "rpe_trans", "rpe_rot", "ate_se3", "rpe_trans_se3"):
        if k in result.metrics and result.metrics[k] is not None:
            unit = "deg" if k == "rpe_rot" else "m"
            note = {"ate_se3": " (rigid alignment, no scale)", "rpe_trans_se3": " (no scale)"}.get(k, "")
            lines.append(f"{k}: {result.metrics[k]:.4f} {unit}{note}")
    if result.metrics.get("fusion_skipped_lost"):
        lines.append(f"map: {result.metrics['fusion_skipped_lost']} lost frames not fused (tracking lost)")
    if result.metrics.get("metric_scale") is not None:
        lines.append(f"metric scale (sensor depth / predicted): {result.metrics['metric_scale']:.4f}")
    for label, path in sorted(result.outputs.items()):
        lines.append(f"  {label}: {path}")
    for name, err in sorted(result.plugin_errors.items()):
        lines.append(f"plugin '{name}' failed: {err}")
    return "\n".join(lines)
