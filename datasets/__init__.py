"""Frame sources for slam3r (installed as ``slam3r_datasets``).

Readers (each a :class:`slam3r_app.sources.FrameSource`, usable without a run
context)::

    from slam3r_datasets import TumSource, BonnSource, SintelSource, ImageFolderSource, VideoSource
    from slam3r_datasets import CameraSource, SyntheticSource, make_source

    with TumSource("sample:tum_fr1_rpy", max_frames=20) as src:
        for frame in src.frames(on_bad_frame="skip"):
            ...

``make_source(source_config)`` builds the reader that ``source.type`` names
(the pluggy hook in :mod:`slam3r_datasets.plugin` calls it). Synthetic scenes
with exact ground truth live in :mod:`slam3r_datasets.synthetic` (laps: ``synthetic_paths``,
sensor noise: ``synthetic_noise``, the aliasing hall: ``synthetic_aliasing``, the revisit
oracle for loop-closure tests: ``synthetic_truth``).
"""
from __future__ import annotations

from .camera import CameraSource, probe_cameras
from .common import SAMPLES_DIR, available_samples, resolve_path
from .factory import SOURCE_TYPES, make_source
from .folder import ImageFolderSource
from .rosbag import RosbagSource
from .sintel import SintelSource, read_cam, read_cam_trajectory, read_dpt, write_cam, write_dpt
from .synthetic import SyntheticScene, SyntheticSequence, SyntheticSource, make_scene, write_sequence
from .synthetic_aliasing import AliasingScene
from .synthetic_noise import SensorNoise
from .synthetic_truth import SequenceTruth
from .tum import BonnSource, TumSource, tum_intrinsics_for
from .video import VideoSource

__all__ = [
    "SOURCE_TYPES", "SAMPLES_DIR", "available_samples", "resolve_path", "make_source",
    "TumSource", "BonnSource", "tum_intrinsics_for", "SintelSource", "read_cam",
    "read_cam_trajectory", "read_dpt", "write_cam", "write_dpt",
    "ImageFolderSource", "VideoSource", "RosbagSource", "CameraSource", "probe_cameras",
    "SyntheticScene", "SyntheticSequence", "SyntheticSource", "write_sequence", "make_scene", "AliasingScene",
    "SensorNoise", "SequenceTruth",
]
