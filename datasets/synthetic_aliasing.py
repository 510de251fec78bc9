"""A perceptual-aliasing scene: a hall of identical office bays (``synthetic_scene: aliasing``).

The hall (world y up, floor at y = 0) spans ``[0, bays * bay_width] x [0, H] x [0, D]``. It
is a row of ``bays`` identical modules side by side along x. Every module carries the same
geometry *and* the same texture, evaluated in the module's own frame (so a copy translated
by ``bay_width`` renders pixel for pixel the same): its stretch of floor, ceiling, back wall
(z = D) and near wall (z = 0), a pillar at its left edge, a desk against the back wall with
a monitor, a globe and a cabinet on or next to it, a chair, and a poster above the desk. Each
bay has its own light under the ceiling at the bay's centre, so the shading repeats too.
Only the two end walls (x = 0 and x = W) differ. That is the aliasing of repeated office
desks or corridor modules: two views from the same place relative to two different bays are
identical, and nothing in the image can tell them apart.

The camera's lap (:meth:`AliasingScene.lap_path`) is an ellipse in front of the desks, facing
them (heading +z, wobbling +- 12 deg with even harmonics), whose two ends sit at the same
spot relative to bays ``b - 1`` and ``b + 1`` around the middle bay ``b``: the frames at the
two ends are identical images of different places (false-loop bait; so, nearly, are their
neighbours). Within a lap the camera passes every x twice (along the back half of the
ellipse and back along the front half, 0.5 m closer: true revisits), and every lap revisits
exactly the same poses (true revisits again).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from slam3r_app.errors import SourceError

from .synthetic_paths import LoopPath, Wobble
from .synthetic_room import Shape, SyntheticScene, Texture, ValueNoise, _box, _quad, _sphere

BAY_WIDTH = 1.6  # metres
BAYS = 5
HALL_DEPTH = 4.5
HALL_HEIGHT = 2.6
ALIASING_SPEED = 0.02  # metres per frame: the heading barely turns, so a walking pace (0.6 m/s at 30 fps)


class AliasingScene(SyntheticScene):
    """A hall of ``bays`` identical office bays (see the module docstring).

    Args:
        seed: the textures and the small wobbles of the camera path follow from it (the layout does not).
        bays: number of identical bays (>= 3: the lap spans three of them).
        bay_width: width of one bay along x, metres.

    Attributes:
        size: hall extent ``(W, H, D)``, metres.
        bays, bay_width: as given.
        shapes: the :class:`~slam3r_datasets.synthetic_room.Shape` list; ``shape.name`` starts with ``bay<k>/``
            for the copies in bay ``k``.
    """

    kind = "aliasing"
    lap_speed = ALIASING_SPEED

    def __init__(self, seed: int = 0, bays: int = BAYS, bay_width: float = BAY_WIDTH) -> None:
        if int(bays) != bays or bays < 3:
            raise SourceError(f"synthetic aliasing scene: bays must be an integer >= 3, got {bays!r}")
        if not 1.2 <= bay_width <= 4.0:
            raise SourceError(f"synthetic aliasing scene: bay_width must be in [1.2, 4] metres, got {bay_width!r}")
        self.seed = int(seed)
        self.dynamic = False
        self.furnished = False
        self.bays, self.bay_width = int(bays), float(bay_width)
        rng = np.random.default_rng([self.seed, 0xA11A5])
        self.noise = ValueNoise(rng)
        W, H, D = self.bays * self.bay_width, HALL_HEIGHT, HALL_DEPTH
        self.size = (float(W), float(H), float(D))
        self.light = np.array([W / 2.0, H - 0.3, D / 2.0])  # (describe only: every bay has its own light)
        self.shapes: list[Shape] = []
        self._build_hall(rng)
        self._path = None
        self._static_scene = None
        self._static_ids: list[int] = []

    # ------------------------------------------------------------------ generation
    def bay_origin(self, k: int) -> np.ndarray:
        """``[4,4]`` bay-to-world transform of bay ``k`` (a translation by ``k * bay_width`` along x)."""
        T = np.eye(4)
        T[0, 3] = k * self.bay_width
        return T

    def _module(self, rng: np.random.Generator) -> list[tuple[str, str, tuple[np.ndarray, np.ndarray], Texture, dict]]:
        """One bay in its own frame (x in [0, bay_width]): ``(name, kind, (vertices, triangles), texture, extra)``."""
        P, H, D = self.bay_width, HALL_HEIGHT, HALL_DEPTH
        o = np.zeros(3)
        ex, ey, ez = np.array([P, 0.0, 0.0]), np.array([0.0, H, 0.0]), np.array([0.0, 0.0, D])
        parts: list = [
            ("floor", "wall", _quad(o, ez, ex), self._texture(rng, "tiles"), {}),
            ("ceiling", "wall", _quad(o + ey, ex, ez), self._texture(rng, "noise", light=True), {}),
            ("back_wall", "wall", _quad(o + ez, ey, ex), self._texture(rng), {}),
            ("near_wall", "wall", _quad(o, ex, ey), self._texture(rng), {}),
        ]

        def box(name: str, size, center) -> None:
            v, t = _box(size)
            parts.append((name, "box", (v + np.asarray(center, dtype=np.float64), t), self._texture(rng), {}))

        box("pillar", [0.3, H, 0.3], [0.15, H / 2, D - 0.15])
        desk_w, desk_h, desk_d = 0.75, 0.74, 0.6
        dx, dz = 0.35 + desk_w / 2, D - desk_d / 2 - 0.02
        box("desk", [desk_w, desk_h, desk_d], [dx, desk_h / 2, dz])
        box("monitor", [0.5, 0.32, 0.05], [dx - 0.05, desk_h + 0.2, dz + 0.12])
        box("cabinet", [0.4, 1.1, 0.45], [P - 0.23, 0.55, D - 0.25])
        box("chair", [0.42, 0.45, 0.42], [dx + 0.05, 0.225, dz - desk_d / 2 - 0.35])
        r = 0.09
        c = np.array([dx + 0.25, desk_h + r, dz - 0.1])
        vs, ts = _sphere(r)
        parts.append(("globe", "sphere", (vs + c, ts), self._texture(rng), {"sphere_radius": r, "sphere_center": c}))
        parts.append(("poster", "plane", _quad(np.array([dx - 0.3, 1.35, D - 0.01]), np.array([0.0, 0.55, 0.0]),
                                               np.array([0.6, 0.0, 0.0])), self._texture(rng), {}))
        return parts

    def _build_hall(self, rng: np.random.Generator) -> None:
        W, H, D = self.size
        module = self._module(rng)
        for k in range(self.bays):
            T = self.bay_origin(k)
            for name, kind, (v, t), tex, extra in module:
                extra = dict(extra)
                if "sphere_center" in extra:
                    extra["sphere_center"] = extra["sphere_center"] + T[:3, 3]
                self._add(f"bay{k}/{name}", kind, (v + T[:3, 3], t), tex, frame=T, **extra)
        o = np.zeros(3)
        ey, ez = np.array([0.0, H, 0.0]), np.array([0.0, 0.0, D])
        self._add("end_wall_x0", "wall", _quad(o, ey, ez), self._texture(rng))
        self._add("end_wall_x1", "wall", _quad(o + np.array([W, 0.0, 0.0]), ez, ey), self._texture(rng))
        self._bay_of_shape = np.array([int(s.name[3:s.name.index("/")]) if s.name.startswith("bay") else -1
                                       for s in self.shapes], dtype=np.int64)

    def _to_light(self, p: np.ndarray, owner: np.ndarray) -> np.ndarray:
        """Each surface is lit by its own bay's light (bay centre, 0.3 m under the ceiling); the end walls by
        the nearest bay's."""
        P = self.bay_width
        k = np.where(owner >= 0, self._bay_of_shape[np.maximum(owner, 0)], -1)
        k = np.where(k >= 0, k, np.clip(np.floor(p[:, 0] / P), 0, self.bays - 1))
        light = np.stack([(k + 0.5) * P, np.full(len(p), HALL_HEIGHT - 0.3), np.full(len(p), HALL_DEPTH / 2)], axis=1)
        return light - p

    # ------------------------------------------------------------------ camera
    def lap_path(self) -> LoopPath:
        """An ellipse in front of the desks (see the module docstring): centre in front of the middle bay,
        semi-axes ``bay_width`` along x (its ends face the centres of the neighbouring bays) and 0.25 m along
        z, 2.3-2.8 m from the back wall, 1.4 m high, looking at the desks (-12 deg pitch)."""
        rng = np.random.default_rng([self.seed, 0x1A95])
        ph = rng.uniform(0.0, 2.0 * np.pi, size=3)
        mid = self.bays // 2
        return LoopPath(center=((mid + 0.5) * self.bay_width, HALL_DEPTH - 2.55), radius_x=self.bay_width,
                        radius_z=0.25, height=1.4, heading=0.0, pitch=np.radians(-12.0),
                        bob=Wobble(0.03, 2, float(ph[0])), heading_wobble=Wobble(np.radians(12.0), 2, float(ph[1])),
                        pitch_wobble=Wobble(np.radians(4.0), 2, float(ph[2])), theta0=0.0)

    def camera_pose(self, i: float, speed: Optional[float] = None) -> np.ndarray:
        """Frame ``i``'s pose on the lap path (this scene has no other camera path)."""
        return self.lap_path().pose(int(i), self.lap_speed if speed is None else speed)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"scene": self.kind, "bays": self.bays, "bay_width_m": self.bay_width})
        return d
