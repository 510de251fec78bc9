"""``source.*`` config -> reader. Used by the plugin hook and by API users."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

from slam3r_app.errors import ConfigError, SourceError
from slam3r_app.sources import FrameSource

from .common import SAMPLE_PREFIX, resolve_path

#: The ``source.type`` values this package provides.
SOURCE_TYPES = ("tum", "bonn", "sintel", "folder", "video", "camera", "synthetic", "rosbag")
PATH_TYPES = ("tum", "bonn", "sintel", "folder", "video", "rosbag")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _checked_path(cfg: Any, kind: str, where: Callable[[str], str]) -> Path:
    raw = _get(cfg, "path")
    if raw is None or str(raw).strip() == "":
        raise ConfigError(f"{where('source.path')}: source.type '{kind}' needs source.path "
                          f"(the dataset folder{' or video file' if kind == 'video' else ''}"
                          f"{'; a .bag file, a ROS 2 bag folder or its .db3 / .mcap' if kind == 'rosbag' else ''}; "
                          f"'{SAMPLE_PREFIX}NAME' for a shipped sample)")
    try:
        p = resolve_path(str(raw))
    except SourceError as e:
        raise ConfigError(f"{where('source.path')}: {e}") from None
    exists = p.exists() or (kind == "sintel" and p.parent.is_dir())  # sintel accepts <root>/<sequence name>
    if not exists:
        what = {"video": "video file", "folder": "image folder", "rosbag": "ROS bag"}.get(kind, f"{kind} sequence folder")
        raise ConfigError(f"{where('source.path')}: {what} not found: {p}"
                          + ("" if p.is_absolute() else f" (relative to {os.getcwd()})"))
    return p


def make_source(cfg: Any, where: Optional[Callable[[str], str]] = None) -> Optional[FrameSource]:
    """The reader for ``cfg.type`` (a :class:`slam3r_app.config.SourceConfig` or a dict of its keys).

    Args:
        cfg: the ``source`` section.
        where: ``key -> "key (set in file)"`` for messages (``LoadedConfig.where``).

    Returns:
        A :class:`FrameSource`, or None when ``cfg.type`` is not one of :data:`SOURCE_TYPES`.

    Raises:
        ConfigError: a missing or unknown ``source.path`` (naming the key and the config file).
        SourceError: the data cannot be read (naming the file).
    """
    where = where or (lambda k: k)
    kind = str(_get(cfg, "type", "") or "").lower()
    if kind not in SOURCE_TYPES:
        return None
    from .common import set_max_image_pixels

    set_max_image_pixels(_get(cfg, "max_image_pixels"))
    sel = dict(first=int(_get(cfg, "first", 0) or 0), stride=int(_get(cfg, "stride", 1) or 1),
               max_frames=_get(cfg, "max_frames"))
    intr = _get(cfg, "intrinsics")
    if kind in ("tum", "bonn"):
        from .tum import BonnSource, TumSource

        path = _checked_path(cfg, kind, where)
        cls = TumSource if kind == "tum" else BonnSource
        return cls(path, max_time_diff=_get(cfg, "max_time_diff", 0.02) or 0.02,
                   depth_scale=_get(cfg, "depth_scale"), intrinsics=intr, **sel)
    if kind == "sintel":
        from .sintel import SintelSource

        path = _checked_path(cfg, kind, where)
        return SintelSource(path, sintel_pass=_get(cfg, "sintel_pass", "final") or "final", intrinsics=intr, **sel)
    if kind == "folder":
        from .folder import ImageFolderSource

        path = _checked_path(cfg, kind, where)
        return ImageFolderSource(path, intrinsics=intr, fps=_get(cfg, "fps"), **sel)
    if kind == "video":
        from .video import VideoSource

        path = _checked_path(cfg, kind, where)
        return VideoSource(path, intrinsics=intr, pace=_get(cfg, "pace", "fast") or "fast", **sel)
    if kind == "rosbag":
        from .rosbag import RosbagSource

        path = _checked_path(cfg, kind, where)
        return RosbagSource(path, rgb_topic=_get(cfg, "rosbag_rgb_topic"), depth_topic=_get(cfg, "rosbag_depth_topic"),
                            camera_info_topic=_get(cfg, "rosbag_camera_info_topic"),
                            max_time_diff=_get(cfg, "max_time_diff", 0.02) or 0.02,
                            depth_scale=_get(cfg, "depth_scale"), intrinsics=intr, **sel)
    if kind == "camera":
        from .camera import CameraSource

        cam = _get(cfg, "camera")
        if cam is None:
            cam = _get(cfg, "path")
        return CameraSource(0 if cam is None else cam, width=_get(cfg, "width"), height=_get(cfg, "height"),
                            fps=_get(cfg, "fps"), intrinsics=intr, pace=_get(cfg, "pace", "realtime") or "realtime",
                            **sel)
    # synthetic
    from .synthetic import DEFAULT_FPS, DEFAULT_HEIGHT, DEFAULT_WIDTH, SyntheticSource
    from .synthetic_noise import resolve_noise

    frames = _get(cfg, "synthetic_frames")
    scene = str(_get(cfg, "synthetic_scene", "room") or "room")
    if scene != "room" and bool(_get(cfg, "synthetic_dynamic", False)):
        raise ConfigError(f"{where('source.synthetic_dynamic')}: moving objects exist only in the 'room' scene, "
                          f"but {where('source.synthetic_scene')} is {scene!r}")
    try:
        noise = resolve_noise(_get(cfg, "synthetic_noise", "none"), key=where("source.synthetic_noise"))
    except SourceError as e:
        raise ConfigError(str(e)) from None
    return SyntheticSource(seed=int(_get(cfg, "seed", 0) or 0), frames=None if frames is None else int(frames),
                           dynamic=bool(_get(cfg, "synthetic_dynamic", False)),
                           width=int(_get(cfg, "width") or DEFAULT_WIDTH), height=int(_get(cfg, "height") or DEFAULT_HEIGHT),
                           intrinsics=intr, fps=float(_get(cfg, "fps") or DEFAULT_FPS),
                           scene=scene, laps=_get(cfg, "synthetic_laps"),
                           noise=noise, speed=_get(cfg, "synthetic_speed"), **sel)
