"""The frame loop: source -> frontend -> hooks, with progress, signals and controls."""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from typing import Any, Iterator, Optional

from tqdm import tqdm

from .config import LoadedConfig
from .errors import Slam3rError, SourceError
from .pipeline import Pipeline
from .prefetch import Prefetcher
from .types import RunResult

log = logging.getLogger("slam3r")


@contextlib.contextmanager
def stop_on_signals(pipeline: Pipeline) -> Iterator[None]:
    """SIGINT / SIGTERM ask the loop to stop after the current frame (outputs are written).

    A second Ctrl-C raises KeyboardInterrupt at once (still handled: outputs written).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ctl = pipeline.context.control
    old: dict[int, Any] = {}

    def handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if ctl.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning("%s received: stopping after this frame and writing outputs (Ctrl-C again to abort now)", name)
        ctl.request_stop(f"{name} received")

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # pragma: no cover
            pass
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


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

    Raises:
        Slam3rError: for configuration / source problems found before the first frame.
    """
    pipe = pipeline or Pipeline(config, output=output)
    run_cfg = config.run
    try:
        source = pipe.open_source()
    except BaseException:
        pipe.terminate(stopped_early=True, reason="source could not be opened", ended_by="error")
        raise
    ctl = pipe.context.control
    stopped, reason, ended_by = False, "", "end"
    bar = None
    with stop_on_signals(pipe), source, contextlib.ExitStack() as stack:
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
                pipe.context.state["dropped"] = getattr(source, "dropped", 0)  # live sources: for the viewer
                try:
                    pipe.track(frame)
                except SourceError as e:
                    if run_cfg.source.on_bad_frame == "skip":
                        log.warning("skipping frame: %s", e)
                        pipe.result.frames_skipped += 1
                        continue
                    raise
                fps = rate.tick()
                pipe.context.state["fps"] = fps
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
            stopped, reason, ended_by = True, "interrupted (Ctrl-C)", "user"
        except Slam3rError as e:
            stopped, reason, ended_by = True, str(e), "error"
            log.error("run stopped: %s", e)
        finally:
            stack.close()  # stop the prefetch thread before the outputs are written
            if bar is not None:
                bar.close()
            pipe.result.frames_skipped += len(source.skipped)
            pipe.result.info["source_dropped"] = getattr(source, "dropped", 0)
            result = pipe.terminate(stopped_early=stopped, reason=reason, ended_by=ended_by)
    return result


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
    if result.stopped_early:
        lines.append(f"stopped early: {result.stop_reason}")
    if timing:
        lines.append(timing)
    for k in ("ate", "rpe_trans", "rpe_rot", "ate_se3"):
        if k in result.metrics and result.metrics[k] is not None:
            unit = "deg" if k == "rpe_rot" else "m"
            note = " (rigid alignment, no scale)" if k == "ate_se3" else ""
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
