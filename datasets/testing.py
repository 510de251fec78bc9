"""Small on-disk fixture sequences for tests (TUM / Bonn and Sintel layouts), with known contents.

Every frame ``i`` is recognisable: colour value ``color_value(i)`` everywhere,
depth ``depth_m(i)`` metres everywhere, and the ground-truth pose
``fixture_pose(t)`` is a smooth function of time, so a test can check which
colour, depth and pose a reader paired.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from slam3r_app.trajectory import format_tum, pose_from_tq

from .sintel import c2w_to_extrinsics, write_cam, write_dpt


def color_value(i: int) -> int:
    return (20 + 7 * i) % 256


def depth_m(i: int) -> float:
    return 1.0 + 0.01 * i


def fixture_pose(t: float) -> np.ndarray:
    """A smooth camera-to-world pose as a function of time ``t`` (seconds)."""
    a = 0.3 * t
    q = np.array([0.0, np.sin(a / 2), 0.0, np.cos(a / 2)])
    return pose_from_tq([0.5 * t, 0.1 * np.sin(t), -0.2 * t], q)


def _png(path: Path, img: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    path.write_bytes(buf.tobytes())


def write_tum_fixture(
    root: Path,
    n: int = 10,
    size: tuple[int, int] = (48, 64),
    fps: float = 30.0,
    t0: float = 1000.0,
    depth_jitter: float = 0.004,
    gt_rate: Optional[float] = 100.0,
    depth_indices: Optional[Sequence[int]] = None,
    depth_scale: float = 5000.0,
    seed: int = 0,
) -> Path:
    """A TUM-layout sequence in ``root`` (created).

    Colour frame ``i`` is at ``t0 + i / fps``; its depth at the same time plus a
    random jitter of at most ``depth_jitter`` s (only for ``depth_indices``, default
    all); ground truth at ``gt_rate`` Hz covering the sequence with a margin (none
    if ``gt_rate`` is None). Returns ``root``.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    root.mkdir(parents=True, exist_ok=True)
    rgb_lines = ["# color images", "# timestamp filename"]
    depth_lines = ["# depth maps", "# timestamp filename"]
    depth_indices = range(n) if depth_indices is None else depth_indices
    for i in range(n):
        ts = t0 + i / fps
        _png(root / "rgb" / f"{ts:.6f}.png", np.full((h, w, 3), color_value(i), np.uint8))
        rgb_lines.append(f"{ts:.6f} rgb/{ts:.6f}.png")
    for i in depth_indices:
        ts = t0 + i / fps + rng.uniform(-depth_jitter, depth_jitter)
        raw = np.full((h, w), int(round(depth_m(i) * depth_scale)), np.uint16)
        _png(root / "depth" / f"{ts:.6f}.png", raw)
        depth_lines.append(f"{ts:.6f} depth/{ts:.6f}.png")
    (root / "rgb.txt").write_text("\n".join(rgb_lines) + "\n")
    (root / "depth.txt").write_text("\n".join(depth_lines) + "\n")
    if gt_rate:
        ts = np.arange(t0 - 0.1, t0 + n / fps + 0.1, 1.0 / gt_rate)
        poses = np.stack([fixture_pose(t - t0) for t in ts])
        (root / "groundtruth.txt").write_text("# ground truth\n# timestamp tx ty tz qx qy qz qw\n" + format_tum(ts, poses))
    return root


def fixture_intrinsics(i: int = 0) -> np.ndarray:
    return np.array([[100.0 + i, 0.0, 31.5], [0.0, 101.0 + i, 23.5], [0.0, 0.0, 1.0]])


def write_sintel_fixture(
    root: Path,
    sequence: str = "alley_9",
    n: int = 6,
    size: tuple[int, int] = (48, 64),
    passes: Sequence[str] = ("final",),
    cams: bool = True,
    depth: bool = True,
) -> Path:
    """The standard Sintel layout under ``root/training``; returns the first pass's image folder.

    Frame ``i`` (file ``frame_{i+1:04d}``): colour ``color_value(i)``, depth ``depth_m(i)``,
    intrinsics ``fixture_intrinsics(i)``, camera-to-world pose ``fixture_pose(i / 10)``.
    """
    h, w = size
    tr = root / "training"
    for i in range(n):
        stem = f"frame_{i + 1:04d}"
        for ps in passes:
            _png(tr / ps / sequence / f"{stem}.png", np.full((h, w, 3), color_value(i), np.uint8))
        if cams:
            write_cam(tr / "camdata_left" / sequence / f"{stem}.cam", fixture_intrinsics(i),
                      c2w_to_extrinsics(fixture_pose(i / 10)))
        if depth:
            write_dpt(tr / "depth" / sequence / f"{stem}.dpt", np.full((h, w), depth_m(i), np.float32))
    return tr / passes[0] / sequence
