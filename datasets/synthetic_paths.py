"""Closed camera paths for the synthetic scenes: laps that revisit exactly the same poses.

A :class:`LoopPath` is a closed, smooth curve of camera poses parameterised by the
phase ``s`` in ``[0, 1)`` (one lap). Frame ``i`` of a sequence moving at ``speed``
metres per frame sits at phase ``(i mod N) / N`` with ``N = frames_per_lap(speed)``
= the lap length divided by the speed, rounded. So pose ``i`` and pose ``i + N`` are
*bit-identical* (the camera revisits exactly the same places every lap), and the
phase is re-parameterised by arc length so the step between frames is constant
(``length / N`` metres, within 0.1 %).

The curve is an ellipse in a horizontal plane (world y up) with a small vertical
bob; the heading (where the camera looks, in the x-z plane) either turns with the
camera (``heading="inward"``: it looks across the ellipse's centre, a full turn per
lap, like walking around a table while looking at it) or stays about a fixed
direction (``heading`` an angle: sweeping past a row of objects). Heading, pitch and
roll carry small periodic wobbles (integer harmonics of the lap, so the lap closes
smoothly), as a hand-held camera does.

Poses are camera-to-world ``[4,4]`` float64 matrices, OpenCV camera axes (x right,
y down, z forward), metres.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

from slam3r_app.errors import SourceError

_TABLE = 8192  # samples of the arc-length table per lap


def look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """Camera-to-world pose (OpenCV axes: x right, y down, z forward) at ``eye`` looking at ``target``."""
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, dtype=np.float64))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, eye
    return T


@dataclass(frozen=True)
class Wobble:
    """``amplitude * sin(harmonic * theta + phase)``: a periodic term over one lap (radians)."""

    amplitude: float = 0.0
    harmonic: int = 1
    phase: float = 0.0

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        return self.amplitude * np.sin(self.harmonic * theta + self.phase)


@dataclass(frozen=True)
class LoopPath:
    """A closed camera path: an ellipse with wobbling heading, pitch and roll (see the module docstring).

    Attributes:
        center: ``(x, z)`` of the ellipse, world metres.
        radius_x, radius_z: semi-axes along world x and z, metres.
        height: mean camera height (world y), metres.
        bob: vertical wobble of the camera centre, metres.
        heading: ``"inward"`` (look across the centre: one full turn per lap) or a fixed heading in
            radians (0 = looking along +z, pi/2 = along +x).
        heading_wobble, pitch_wobble, roll_wobble: periodic wobbles (radians).
        pitch: mean pitch, radians (negative = looking down).
        theta0: the ellipse angle at phase 0 (where lap 1 starts).
    """

    center: tuple[float, float]
    radius_x: float
    radius_z: float
    height: float
    heading: Union[str, float] = "inward"
    pitch: float = 0.0
    bob: Wobble = field(default_factory=Wobble)
    heading_wobble: Wobble = field(default_factory=Wobble)
    pitch_wobble: Wobble = field(default_factory=Wobble)
    roll_wobble: Wobble = field(default_factory=Wobble)
    theta0: float = 0.0

    def __post_init__(self) -> None:
        if not (self.heading == "inward" or isinstance(self.heading, (int, float))):
            raise SourceError(f"synthetic path: heading must be 'inward' or an angle in radians, got {self.heading!r}")
        if self.radius_x <= 0 or self.radius_z <= 0:
            raise SourceError(f"synthetic path: radii must be > 0, got {self.radius_x}, {self.radius_z}")
        for w in (self.bob, self.heading_wobble, self.pitch_wobble, self.roll_wobble):
            if int(w.harmonic) != w.harmonic or w.harmonic < 1:
                raise SourceError(f"synthetic path: wobble harmonics must be integers >= 1 (the lap must close), "
                                  f"got {w.harmonic}")
        theta = self.theta0 + 2.0 * np.pi * np.arange(_TABLE + 1) / _TABLE
        seg = np.linalg.norm(np.diff(self._positions(theta), axis=0), axis=1)
        object.__setattr__(self, "_arc", np.concatenate([[0.0], np.cumsum(seg)]))

    # ------------------------------------------------------------------ geometry
    def _positions(self, theta: np.ndarray) -> np.ndarray:
        cx, cz = self.center
        return np.stack([cx + self.radius_x * np.cos(theta), self.height + self.bob(theta),
                         cz + self.radius_z * np.sin(theta)], axis=-1)

    @property
    def length(self) -> float:
        """Length of one lap, metres."""
        return float(self._arc[-1])  # type: ignore[attr-defined]

    def frames_per_lap(self, speed: float) -> int:
        """Frames in one lap at ``speed`` metres per frame (at least 3)."""
        if not speed > 0:
            raise SourceError(f"synthetic: speed must be > 0 metres per frame, got {speed}")
        return max(3, int(round(self.length / float(speed))))

    def theta(self, s: float) -> float:
        """The ellipse angle at phase ``s`` in ``[0, 1)`` (arc-length parameterisation)."""
        arc = self._arc  # type: ignore[attr-defined]
        grid = self.theta0 + 2.0 * np.pi * np.arange(_TABLE + 1) / _TABLE
        return float(np.interp((float(s) % 1.0) * arc[-1], arc, grid))

    def pose_at(self, s: float) -> np.ndarray:
        """Camera-to-world ``[4,4]`` pose at phase ``s`` (one lap = ``[0, 1)``)."""
        th = self.theta(s)
        eye = self._positions(np.array(th))
        # heading psi: the viewing direction in the x-z plane is (sin psi, cos psi), psi = 0 looks along +z,
        # pi/2 along +x. Positions use (cos th, sin th) in (x, z), so looking at the centre,
        # (-cos th, -sin th), is psi = -th - pi/2.
        psi = (-th - 0.5 * np.pi) if self.heading == "inward" else float(self.heading)
        psi += float(self.heading_wobble(th))
        pitch = self.pitch + float(self.pitch_wobble(th))
        d = np.array([np.sin(psi) * np.cos(pitch), np.sin(pitch), np.cos(psi) * np.cos(pitch)])
        T = look_at(eye, eye + d)
        roll = float(self.roll_wobble(th))
        if roll:
            c, s_ = np.cos(roll), np.sin(roll)
            T[:3, :3] = T[:3, :3] @ np.array([[c, -s_, 0.0], [s_, c, 0.0], [0.0, 0.0, 1.0]])
        return T

    def pose(self, i: int, speed: float) -> np.ndarray:
        """Pose of frame ``i`` at ``speed`` m/frame: phase ``(i mod N) / N``, so frame ``i + N`` equals frame ``i``."""
        n = self.frames_per_lap(speed)
        return self.pose_at((int(i) % n) / n)

    def describe(self) -> dict:
        return {"center_xz": [float(c) for c in self.center], "radius_x": self.radius_x, "radius_z": self.radius_z,
                "height": self.height, "heading": self.heading if isinstance(self.heading, str) else float(self.heading),
                "lap_length_m": round(self.length, 4)}
