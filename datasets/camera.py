"""Live camera source: an OpenCV device index, a stream URL, or a video file standing in for a camera.

A background thread reads the camera as fast as it delivers and keeps only the
newest frame; the consumer always gets the newest one, and every frame it never
saw counts as *dropped* (``source.dropped``; frames captured before the consumer
took its first one, while the application starts up, are ``startup_frames``). The device is released on every
exit path: :meth:`CameraSource.close`, leaving a ``with`` block, the end of the
frame generator (also when the consumer stops early or raises), garbage
collection, and interpreter exit (the reader thread is a daemon).

A video file can stand in for a camera (``source.type: camera`` with
``source.camera: path/to/video.mp4``): with ``pace="realtime"`` the reader thread
plays it at its own frame rate (or ``fps``), exactly like a camera, so a slow
consumer drops frames; with ``pace="fast"`` the reader hands over every frame, as
fast as the consumer takes them (nothing dropped). The end of the file ends the
stream (``end_reason`` says so).

Requested ``width`` / ``height`` are asked of the device; if it delivers another
size of the same aspect ratio (or for a file), frames are resized to the request.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np

from slam3r_app.errors import BadFrameError, SourceError
from slam3r_app.sources import FrameSource
from slam3r_app.types import Frame

from .common import as_intrinsics, bad_frame, check_selection, format_intrinsics

log = logging.getLogger("slam3r.source")

PROBE_INDICES = range(0, 6)
PACES = ("realtime", "fast")


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's 'can't open camera by index' warnings while probing."""
    import cv2

    try:
        old = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # pragma: no cover - very old OpenCV
        old = None
    try:
        yield
    finally:
        if old is not None:
            cv2.utils.logging.setLogLevel(old)


def _default_factory(target: Union[int, str]):
    import cv2

    return cv2.VideoCapture(target)


def _open_with_timeout(factory: Callable[[Union[int, str]], Any], target: Union[int, str], timeout: float):
    """Open ``target`` in a helper thread; None when it fails or takes longer than ``timeout`` s."""
    box: dict[str, Any] = {}
    abandoned = threading.Event()

    def work() -> None:
        cap = None
        try:
            cap = factory(target)
            ok = bool(cap is not None and cap.isOpened())
        except Exception as e:  # noqa: BLE001 - any backend error means "cannot open"
            box["error"] = e
            ok = False
        if not ok or abandoned.is_set():
            if cap is not None:
                with contextlib.suppress(Exception):
                    cap.release()
            return
        box["cap"] = cap

    t = threading.Thread(target=work, name=f"slam3r-camera-open-{target}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        abandoned.set()  # the thread releases the device if it opens after all
        return None
    return box.get("cap")


def probe_cameras(indices: Sequence[int] = PROBE_INDICES, timeout: float = 3.0,
                  factory: Optional[Callable[[Union[int, str]], Any]] = None) -> list[int]:
    """Device indices that OpenCV can open (each opened and released at once), within ``timeout`` s in all."""
    factory = factory or _default_factory
    found: list[int] = []
    deadline = time.monotonic() + timeout
    with _quiet_opencv():
        for i in indices:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            cap = _open_with_timeout(factory, i, min(left, 1.5))
            if cap is not None:
                found.append(int(i))
                with contextlib.suppress(Exception):
                    cap.release()
    return found


class _Grabber:
    """Owns the capture object; its thread keeps the newest frame. Holds no reference to the source."""

    def __init__(self, cap: Any, label: str, max_failures: int = 50, pace: Optional[str] = None,
                 fps: Optional[float] = None) -> None:
        """``pace`` None: a live device (read as fast as it delivers). For a video file standing in
        for a camera: ``"realtime"`` (one frame every 1/``fps`` s) or ``"fast"`` (the next frame is
        read once the consumer took the previous one); the first failed read is the end of the file."""
        self.cap = cap
        self.label = label
        self.cond = threading.Condition()
        self.frame: Optional[np.ndarray] = None
        self.stamp = 0.0
        self.seq = 0  # frames captured so far
        self.failures = 0
        self.max_failures = max_failures
        self.ended = False
        self.eof = False  # a video file reached its end
        self.error: Optional[BaseException] = None
        self.released = False
        self.pace = pace
        self.fps = fps if fps and fps > 0 else None
        self.taken = 0  # newest sequence number the consumer took
        self.t_start: Optional[float] = None  # when the consumer took its first frame
        self._stop = threading.Event()
        self._release_lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"slam3r-camera-{label}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _wait_turn(self) -> bool:
        """File pacing before reading frame ``self.seq`` (0-based); False when asked to stop.

        The file's clock starts when the consumer takes its first frame (a file does not play on
        while the application is still starting up, as a camera would)."""
        if self.pace == "fast" or (self.pace == "realtime" and self.seq > 0 and self.t_start is None):
            with self.cond:
                while self.taken < self.seq and not self._stop.is_set():
                    self.cond.wait(0.1)
        if self.pace == "realtime" and self.fps and self.seq > 0 and self.t_start is not None:
            wait = self.t_start + self.seq / self.fps - time.monotonic()
            if wait > 0:
                self._stop.wait(wait)
        return not self._stop.is_set()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self.pace is not None and not self._wait_turn():
                    break
                ok, img = self.cap.read()
                stamp = time.time()
                if not ok or img is None:
                    if self.pace is not None:  # a video file: the end
                        self.eof = True
                        break
                    self.failures += 1
                    if self.failures >= self.max_failures:
                        break
                    time.sleep(0.01)
                    continue
                self.failures = 0
                with self.cond:
                    self.frame, self.stamp = img, stamp
                    self.seq += 1
                    self.cond.notify_all()
        except BaseException as e:  # noqa: BLE001 - reported to the consumer
            self.error = e
        finally:
            with self.cond:
                self.ended = True
                self.cond.notify_all()
            self._release()

    def _release(self) -> None:
        with self._release_lock:
            if not self.released:
                self.released = True
                with contextlib.suppress(Exception):
                    self.cap.release()

    def next_after(self, seq: int, timeout: float, take: bool = True) -> Optional[tuple[int, np.ndarray, float]]:
        """The newest frame with a sequence number above ``seq``; None on timeout or end.

        ``take``: the consumer takes it (a file read with ``pace="fast"`` then reads on)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.seq <= seq and not self.ended:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            if self.seq <= seq:
                return None
            if take:
                if self.taken == 0:
                    self.t_start = time.monotonic()
                self.taken = self.seq
                self.cond.notify_all()
            return self.seq, self.frame, self.stamp  # type: ignore[return-value]

    def stop(self, join_timeout: float = 2.0) -> None:
        self._stop.set()
        with self.cond:
            self.cond.notify_all()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(join_timeout)
        if not self.thread.is_alive():
            self._release()
        # else: the thread is blocked inside read(); it releases the device when read() returns


class CameraSource(FrameSource):
    """Frames from a live camera (``is_live = True``): always the newest, stale ones dropped.

    Args:
        camera: OpenCV device index (``0``), a stream URL / GStreamer pipeline
            (``rtsp://...``, ``http://.../video``), or a video file standing in for a
            camera; a digit string counts as an index.
        width, height: requested frame size; the device is asked for it, and frames of
            another size with the same aspect ratio (always the case for one of the two
            given alone) are resized to it. ``info()`` reports both sizes.
        fps: requested capture rate; for a video file, the rate it is played at with
            ``pace="realtime"`` (default: the file's own rate).
        pace: video files only: ``"realtime"`` plays the file like a camera (frames the
            consumer is too slow for are dropped and counted); ``"fast"`` hands over
            every frame as fast as the consumer takes them.
        intrinsics: ``[fx, fy, cx, cy]`` (optional).
        first: frames to throw away at the start (auto exposure settling).
        stride: hand out every stride-th frame the consumer would get.
        max_frames: stop after this many frames (None: until closed).
        open_timeout: seconds to wait for the device to open and deliver a first frame.
        frame_timeout: seconds without a new frame after which the stream ends
            (``end_reason`` says so).
        capture_factory: ``callable(camera) -> cv2.VideoCapture``-like (tests, other backends).

    Raises:
        SourceError: the camera cannot be opened (for an index, the message lists
            the indices 0-5 that can be), or it delivers no frame within ``open_timeout``.
    """

    kind = "camera"
    is_live = True

    def __init__(
        self,
        camera: Union[int, str, None] = 0,
        width: Optional[int] = None,
        height: Optional[int] = None,
        fps: Optional[float] = None,
        intrinsics: Optional[Union[Sequence[float], np.ndarray]] = None,
        first: int = 0,
        stride: int = 1,
        max_frames: Optional[int] = None,
        open_timeout: float = 5.0,
        frame_timeout: float = 5.0,
        capture_factory: Optional[Callable[[Union[int, str]], Any]] = None,
        pace: str = "realtime",
    ) -> None:
        super().__init__()
        self._grabber: Optional[_Grabber] = None
        self._finalizer = None
        if camera is None:
            camera = 0
        if isinstance(camera, str) and camera.strip().isdigit():
            camera = int(camera.strip())
        check_selection(first, stride)
        if pace not in PACES:
            raise SourceError(f"pace must be one of {', '.join(PACES)}, got {pace!r}")
        self.camera = camera
        self.is_file = isinstance(camera, str) and os.path.isfile(os.path.expanduser(camera))
        if self.is_file:
            self.camera = camera = os.path.expanduser(camera)
        self.pace = pace if self.is_file else None
        self.name = f"camera:{os.path.basename(camera)}" if self.is_file else f"camera:{camera}"
        self.first, self.stride, self.max_frames = int(first), int(stride), max_frames
        self.frame_timeout = float(frame_timeout)
        self.intrinsics = as_intrinsics(intrinsics, what="source.intrinsics")
        self.dropped = 0  # frames the consumer was too slow for, once it took its first frame
        self.startup_frames = 0  # frames captured before the consumer took its first one (not "dropped")
        self.delivered = 0
        self.end_reason = ""
        self._factory = capture_factory or _default_factory
        self._last_seq = 0

        with _quiet_opencv():
            cap = _open_with_timeout(self._factory, camera, open_timeout)
        if cap is None:
            raise SourceError(self._open_failure_message(open_timeout))
        try:
            self._configure(cap, width, height, fps)
        except Exception:
            with contextlib.suppress(Exception):
                cap.release()
            raise
        self.file_fps: Optional[float] = None
        if self.is_file:
            import cv2

            with contextlib.suppress(Exception):
                self.file_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or None
            if self.pace == "realtime" and not (fps or self.file_fps):
                log.warning("%s: the file does not say its frame rate; playing it at 30 fps (set source.fps)",
                            self.name)
        self.play_fps = (fps or self.file_fps or 30.0) if self.is_file else None
        self._grabber = _Grabber(cap, str(camera), pace=self.pace, fps=self.play_fps)
        # Release the device even if close() is never called (garbage collection, exit).
        self._finalizer = weakref.finalize(self, _Grabber.stop, self._grabber, 0.5)
        self._grabber.start()
        got = self._grabber.next_after(0, open_timeout, take=False)
        if got is None:
            err = self._grabber.error
            self._ended_early = self._grabber.ended
            self.close()
            how = f"every read failed ({err})" if err else ("every read failed" if self._ended_early else
                                                             f"none within {open_timeout:g} s")
            raise SourceError(f"camera {camera!r} opened but delivered no frame: {how}")
        _, img, _ = got
        self.raw_height, self.raw_width = int(img.shape[0]), int(img.shape[1])
        self.width, self.height = self._output_size(width, height)

    def _open_failure_message(self, timeout: float) -> str:
        cam = self.camera
        if isinstance(cam, int):
            others = [i for i in probe_cameras(factory=self._factory) if i != cam]
            lst = (f"cameras that can be opened: {', '.join(map(str, others))}" if others
                   else f"no camera could be opened at indices {PROBE_INDICES.start}-{PROBE_INDICES.stop - 1}")
            return (f"cannot open camera index {cam} ({lst}); set source.camera to one of them, check that no "
                    f"other program holds the camera and that you may access /dev/video*")
        return (f"cannot open camera stream {cam!r} within {timeout:g} s (check the URL, the network and that "
                f"OpenCV was built with the needed backend)")

    def _output_size(self, width: Optional[int], height: Optional[int]) -> tuple[int, int]:
        """The size frames are handed out at: the request where it keeps the delivered aspect ratio."""
        w0, h0 = self.raw_width, self.raw_height
        if width and not height:
            height = max(1, round(h0 * width / w0))
        elif height and not width:
            width = max(1, round(w0 * height / h0))
        if not width or not height or (width, height) == (w0, h0):
            return w0, h0
        if abs((width / height) / (w0 / h0) - 1.0) > 0.02:
            log.warning("%s delivers %dx%d, not the requested %dx%d (another aspect ratio): using %dx%d",
                        self.name, w0, h0, width, height, w0, h0)
            return w0, h0
        log.info("%s delivers %dx%d: frames are resized to the requested %dx%d", self.name, w0, h0, width, height)
        return int(width), int(height)

    @staticmethod
    def _configure(cap: Any, width: Optional[int], height: Optional[int], fps: Optional[float]) -> None:
        import cv2

        if width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, float(width))
        if height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, float(height))
        if fps:
            cap.set(cv2.CAP_PROP_FPS, float(fps))
        with contextlib.suppress(Exception):
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1.0)  # smallest driver queue: fresher frames

    # ------------------------------------------------------------------ frames
    def _iter_raw(self) -> Iterator[Union[Frame, BadFrameError]]:
        import cv2

        g = self._grabber
        if g is None:
            raise SourceError(f"{self.name}: the camera is closed")
        taken = 0  # frames taken from the grabber (before first/stride)
        try:
            while self.max_frames is None or self.delivered < self.max_frames:
                got = g.next_after(self._last_seq, self.frame_timeout)
                if got is None:
                    if g.error is not None:
                        self.end_reason = f"{self.name}: camera read failed: {g.error}"
                    elif g.eof:
                        self.end_reason = f"{self.name}: end of the video file after {g.seq} frames"
                    elif g.ended:
                        self.end_reason = (f"{self.name}: the camera stopped delivering frames "
                                           f"(unplugged, or closed by another program?)")
                    elif self._grabber is None or g.released:
                        self.end_reason = f"{self.name}: closed"
                    else:
                        self.end_reason = f"{self.name}: no new frame for {self.frame_timeout:g} s"
                    return
                seq, img, stamp = got
                if self._last_seq == 0:  # frames captured while the application was starting up
                    self.startup_frames = seq - 1
                else:
                    self.dropped += max(0, seq - self._last_seq - 1)
                self._last_seq = seq
                taken += 1
                if taken <= self.first or (taken - self.first - 1) % self.stride:
                    continue
                rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if img.ndim == 3 else cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
                name = f"{self.name}#{seq}"
                if (rgb.shape[0], rgb.shape[1]) != (self.raw_height, self.raw_width):
                    yield bad_frame(name, f"{name}: frame is {rgb.shape[1]}x{rgb.shape[0]}, but the camera started "
                                          f"at {self.raw_width}x{self.raw_height}")
                    continue
                if (self.width, self.height) != (self.raw_width, self.raw_height):
                    rgb = cv2.resize(rgb, (self.width, self.height), interpolation=cv2.INTER_AREA)
                frame = Frame(index=self.delivered, timestamp=stamp, rgb=rgb,
                              intrinsics=None if self.intrinsics is None else self.intrinsics.copy(), name=name)
                self.delivered += 1
                yield frame
        finally:
            self.close()

    def close(self) -> None:
        """Stop the reader thread and release the device (safe to call twice)."""
        g, self._grabber = self._grabber, None
        if g is not None:
            g.stop()
        if self._finalizer is not None:
            self._finalizer.detach()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    @property
    def released(self) -> bool:
        """True once the device has been released."""
        return self._grabber is None

    def info(self) -> dict[str, Any]:
        d = super().info()
        d.update({"type": self.kind, "camera": self.camera, "size": [self.width, self.height],
                  "delivered_size": [self.raw_width, self.raw_height],
                  "intrinsics": format_intrinsics(self.intrinsics), "dropped": self.dropped,
                  "startup_frames": self.startup_frames})
        if self.is_file:
            d.update({"file": True, "pace": self.pace, "fps": self.play_fps})
        return d
