"""The synthetic room: procedural textures, mesh primitives and :class:`SyntheticScene` (its geometry,
rendering and ground-truth surfaces). The sequences that move a camera through a scene are in
:mod:`.synthetic`; the aliasing hall (:mod:`.synthetic_aliasing`) builds on the primitives here.

World frame: y up, floor at y = 0, the room spans ``[0, W] x [0, H] x [0, D]``.
Poses are camera-to-world in OpenCV camera axes (x right, y down, z forward).
"""
from __future__ import annotations

import colorsys
import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from .common import intrinsics_matrix
from .synthetic_paths import LoopPath, Wobble, look_at

log = logging.getLogger("slam3r.synthetic")

DEFAULT_SPEED = 0.012  # metres per frame along the camera loop
LAP_SPEED = 0.014  # metres per frame along a lap path (``laps``): ~1.2 deg/frame of turning on the room's lap
LAP_RADIUS = 0.68  # metres, the room's lap circle (4.29 m a lap with the bob: 306 frames at LAP_SPEED)

# Texture bandwidth. Rendering takes one ray per pixel (no anti-aliasing), so textures are kept smooth
# enough not to alias at the far wall (1 px is about 2.3 cm at 6 m with the default camera); aliasing
# would break brightness constancy between neighbouring views.
EDGE = 5.0  # sharpness of checker / tile edges
GRAIN_SCALE = 0.04  # metres, lattice spacing of the fine grain noise
GRAIN_AMP = 0.18


def _mm(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``a @ m`` for ``[N,3] @ [3,3]`` (numpy's matmul is very slow on a non-contiguous small operand)."""
    return np.ascontiguousarray(a) @ np.ascontiguousarray(m)


def default_intrinsics(width: int, height: int) -> np.ndarray:
    """A Kinect-like pinhole scaled to the image: fx = fy = 525 * width / 640, centred principal point."""
    f = 525.0 * width / 640.0
    return intrinsics_matrix(f, f, (width - 1) / 2.0, (height - 1) / 2.0)


# ----------------------------------------------------------------------------- noise and textures
class ValueNoise:
    """Seeded 3-D value noise in [0, 1] (smoothstep-interpolated lattice), vectorised.

    The lattice value at integer ``(x, y, z)`` is ``table[(px[x] + py[y] + pz[z]) mod N]`` with
    seeded random per-axis offsets (period 1024 cells along each axis).
    """

    def __init__(self, rng: np.random.Generator, size: int = 4096, period: int = 1024) -> None:
        if size & (size - 1) or period & (period - 1):
            raise ValueError("size and period must be powers of two")
        self.table = rng.random(size)
        self.smask = size - 1
        self.pmask = period - 1
        self.axes = rng.integers(0, size, size=(3, period))

    def __call__(self, p: np.ndarray) -> np.ndarray:
        fl = np.floor(p)
        f = p - fl
        w = f * f * (3.0 - 2.0 * f)
        i = fl.astype(np.int64) & self.pmask
        j = (i + 1) & self.pmask
        hx = (self.axes[0][i[:, 0]], self.axes[0][j[:, 0]])
        hy = (self.axes[1][i[:, 1]], self.axes[1][j[:, 1]])
        hz = (self.axes[2][i[:, 2]], self.axes[2][j[:, 2]])
        wx = (1.0 - w[:, 0], w[:, 0])
        wy = (1.0 - w[:, 1], w[:, 1])
        wz = (1.0 - w[:, 2], w[:, 2])
        t = self.table
        out = np.zeros(len(p))
        for a in (0, 1):
            for b in (0, 1):
                hab = hx[a] + hy[b]
                wab = wx[a] * wy[b]
                out += wab * (wz[0] * t[(hab + hz[0]) & self.smask] + wz[1] * t[(hab + hz[1]) & self.smask])
        return out

    def fbm(self, p: np.ndarray, octaves: int = 3) -> np.ndarray:
        """Fractal sum of ``octaves`` octaves, normalised to [0, 1]."""
        total, amp, norm = np.zeros(len(p)), 1.0, 0.0
        for o in range(octaves):
            total += amp * self(p * (2.0 ** o) + 17.31 * o)
            norm += amp
            amp *= 0.5
        return total / norm


@dataclass
class Texture:
    """A solid texture: ``kind`` in tiles, checker, noise, stripes, blotches; two colours; a scale in metres."""

    kind: str
    color1: np.ndarray
    color2: np.ndarray
    scale: float
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    offset: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def albedo(self, p: np.ndarray, noise: ValueNoise) -> np.ndarray:
        """``[N,3]`` albedo in [0, 1] at points ``p`` (``[N,3]``, texture space = object space)."""
        q = _mm(p - self.offset, self.rot.T) / self.scale
        if self.kind == "tiles":  # 2-D soft checker in the x-z plane (floors)
            m = 0.5 + 0.5 * np.tanh(EDGE * np.sin(np.pi * q[:, 0]) * np.sin(np.pi * q[:, 2]))
        elif self.kind == "checker":  # 3-D soft checker (works on any face orientation)
            m = 0.5 + 0.5 * np.tanh(1.5 * EDGE * np.sin(np.pi * q[:, 0]) * np.sin(np.pi * q[:, 1]) * np.sin(np.pi * q[:, 2]))
        elif self.kind == "stripes":  # wavy stripes (marble-like)
            m = 0.5 + 0.5 * np.sin(2.0 * np.pi * q[:, 0] + 4.0 * noise.fbm(0.5 * q, 2))
        elif self.kind == "blotches":
            n = noise.fbm(q, 2)
            m = np.clip((n - 0.42) / 0.16, 0.0, 1.0)
            m = m * m * (3.0 - 2.0 * m)
        else:  # "noise"
            m = noise.fbm(q, 2)
        col = self.color1[None, :] + (self.color2 - self.color1)[None, :] * m[:, None]
        # fine grain everywhere, so that no surface is flat in intensity
        grain = 1.0 - GRAIN_AMP + 2.0 * GRAIN_AMP * noise(p / GRAIN_SCALE + 101.7)
        return np.clip(col * grain[:, None], 0.0, 1.0)


@dataclass
class Motion:
    """Rigid motion of a dynamic shape: oscillation along ``direction`` plus a spin about world y."""

    base: np.ndarray
    direction: np.ndarray
    amplitude: float
    period: float
    phase: float
    spin: float  # rad/s

    def transform(self, t: float) -> np.ndarray:
        T = np.eye(4)
        a = self.spin * t
        c, s = np.cos(a), np.sin(a)
        T[:3, :3] = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
        T[:3, 3] = self.base + self.direction * self.amplitude * np.sin(2.0 * np.pi * t / self.period + self.phase)
        return T


@dataclass
class Shape:
    """One textured surface. Static shapes hold world vertices; dynamic ones object-space vertices + motion."""

    name: str
    kind: str  # wall, box, sphere, plane
    vertices: np.ndarray  # [V,3] float64
    triangles: np.ndarray  # [T,3] int32
    texture: Texture
    sphere_radius: float = 0.0  # spheres: analytic normals about the object-space origin / centre
    sphere_center: Optional[np.ndarray] = None
    motion: Optional[Motion] = None
    frame: Optional[np.ndarray] = None  # static shapes: [4,4] texture-to-world; None = textured in world coords

    @property
    def dynamic(self) -> bool:
        return self.motion is not None

    def world_vertices(self, t: float = 0.0) -> np.ndarray:
        if self.motion is None:
            return self.vertices
        T = self.motion.transform(t)
        return _mm(self.vertices, T[:3, :3].T) + T[:3, 3]


# ----------------------------------------------------------------------------- mesh primitives
def _quad(corner: np.ndarray, e1: np.ndarray, e2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.array([corner, corner + e1, corner + e1 + e2, corner + e2], dtype=np.float64)
    return v, np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int32)


def _box(size: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """A closed box centred at the origin, outward-facing triangles."""
    sx, sy, sz = (float(s) / 2 for s in size)
    v = np.array([[x, y, z] for x in (-sx, sx) for y in (-sy, sy) for z in (-sz, sz)], dtype=np.float64)
    # vertex index = 4*ix + 2*iy + iz
    faces = [
        (0, 1, 3, 2),  # x-
        (4, 6, 7, 5),  # x+
        (0, 4, 5, 1),  # y-
        (2, 3, 7, 6),  # y+
        (0, 2, 6, 4),  # z-
        (1, 5, 7, 3),  # z+
    ]
    tris = []
    for a, b, c, d in faces:
        tris += [[a, b, c], [a, c, d]]
    return v, np.array(tris, dtype=np.int32)


def _sphere(radius: float, resolution: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """A UV sphere centred at the origin, outward-facing triangles."""
    n_lat, n_lon = resolution, 2 * resolution
    verts = [[0.0, radius, 0.0]]
    for i in range(1, n_lat):
        th = np.pi * i / n_lat
        for j in range(n_lon):
            ph = 2.0 * np.pi * j / n_lon
            verts.append([radius * np.sin(th) * np.cos(ph), radius * np.cos(th), radius * np.sin(th) * np.sin(ph)])
    verts.append([0.0, -radius, 0.0])
    v = np.array(verts, dtype=np.float64)
    tris = []
    ring = lambda i, j: 1 + (i - 1) * n_lon + (j % n_lon)  # noqa: E731
    for j in range(n_lon):
        tris.append([0, ring(1, j + 1), ring(1, j)])
    for i in range(1, n_lat - 1):
        for j in range(n_lon):
            a, b, c, d = ring(i, j), ring(i, j + 1), ring(i + 1, j + 1), ring(i + 1, j)
            tris += [[a, b, c], [a, c, d]]
    last = len(v) - 1
    for j in range(n_lon):
        tris.append([last, ring(n_lat - 1, j), ring(n_lat - 1, j + 1)])
    return v, np.array(tris, dtype=np.int32)


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    x, y, z, w = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


# ----------------------------------------------------------------------------- scene
class SyntheticScene:
    """A seeded procedural room with boxes, spheres and panels (and moving objects if ``dynamic``).

    Args:
        seed: everything (room size, objects, textures, camera loop) follows from it.
        dynamic: add 2 moving objects (a sphere and a box) that cross the view.
        furnished: also furnish the near half of the room (cabinets, shelves, a ball and posters along the
            near and side walls), where the lap path (:meth:`lap_path`) turns to look; drawn from a separate
            seeded stream, so everything else is the same room as without.

    Attributes:
        size: room extent ``(W, H, D)`` in metres.
        shapes: the :class:`Shape` list (walls first).
        light: point light position (world).
    """

    kind = "room"

    def __init__(self, seed: int = 0, dynamic: bool = False, furnished: bool = False) -> None:
        self.seed = int(seed)
        self.dynamic = bool(dynamic)
        self.furnished = bool(furnished)
        rng = np.random.default_rng([self.seed, 0x5EED])
        self.noise = ValueNoise(rng)
        W, H, D = rng.uniform(4.0, 5.5), rng.uniform(2.5, 3.0), rng.uniform(4.5, 6.0)
        self.size = (float(W), float(H), float(D))
        self.light = np.array([W / 2.0, H - 0.3, D / 2.0])
        self.shapes: list[Shape] = []
        self._build_room(rng)
        self._build_objects(rng)
        if self.dynamic:
            self._build_movers(rng)
        self._path = self._make_path(rng)
        if self.furnished:
            self._build_wall_furniture(np.random.default_rng([self.seed, 0xF0F0]))
        self._static_scene = None
        self._static_ids: list[int] = []

    # ------------------------------------------------------------------ generation
    @staticmethod
    def _color(rng: np.random.Generator, s: tuple[float, float] = (0.3, 0.8),
               v: tuple[float, float] = (0.35, 0.95)) -> np.ndarray:
        return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(*s), rng.uniform(*v)))

    def _texture(self, rng: np.random.Generator, kind: Optional[str] = None, scale: Optional[float] = None,
                 light: bool = False) -> Texture:
        kind = kind or str(rng.choice(["checker", "noise", "stripes", "blotches"]))
        scale = scale if scale is not None else {"checker": rng.uniform(0.15, 0.35), "stripes": rng.uniform(0.2, 0.5),
                                                 "noise": rng.uniform(0.2, 0.6), "blotches": rng.uniform(0.25, 0.6),
                                                 "tiles": rng.uniform(0.3, 0.5)}[kind]
        v = (0.6, 0.95) if light else (0.3, 0.95)
        c1 = self._color(rng, v=v)
        c2 = self._color(rng, v=v)
        if np.abs(c1 - c2).sum() < 0.6:  # keep enough contrast for gradients
            c2 = np.clip(1.0 - c1 * 0.8, 0.05, 0.95)
        rot = _rot_y(rng.uniform(0, np.pi)) if kind == "tiles" else _random_rotation(rng)
        return Texture(kind, c1, c2, float(scale), rot, rng.uniform(-5, 5, size=3))

    def _add(self, name: str, kind: str, vt: tuple[np.ndarray, np.ndarray], texture: Texture, **kw: Any) -> Shape:
        s = Shape(name, kind, vt[0], vt[1], texture, **kw)
        self.shapes.append(s)
        return s

    def _build_room(self, rng: np.random.Generator) -> None:
        W, H, D = self.size
        o = np.zeros(3)
        ex, ey, ez = np.array([W, 0.0, 0.0]), np.array([0.0, H, 0.0]), np.array([0.0, 0.0, D])
        self._add("floor", "wall", _quad(o, ez, ex), self._texture(rng, "tiles"))
        self._add("ceiling", "wall", _quad(o + ey, ex, ez), self._texture(rng, "noise", light=True))
        self._add("wall_x0", "wall", _quad(o, ey, ez), self._texture(rng))
        self._add("wall_x1", "wall", _quad(o + ex, ez, ey), self._texture(rng))
        self._add("wall_z0", "wall", _quad(o, ex, ey), self._texture(rng))
        self._add("wall_z1", "wall", _quad(o + ez, ey, ex), self._texture(rng))

    def _place(self, rng: np.random.Generator, radius: float, taken: list[tuple[float, float, float]]) -> Optional[np.ndarray]:
        W, _, D = self.size
        for _ in range(200):
            x = rng.uniform(0.3 + radius, W - 0.3 - radius)
            z = rng.uniform(0.45 * D + radius, D - 0.3 - radius)
            if all((x - a) ** 2 + (z - b) ** 2 > (radius + r + 0.1) ** 2 for a, b, r in taken):
                taken.append((x, z, radius))
                return np.array([x, 0.0, z])
        return None

    def _build_objects(self, rng: np.random.Generator) -> None:
        W, H, D = self.size
        taken: list[tuple[float, float, float]] = []
        for k in range(int(rng.integers(3, 6))):
            size = np.array([rng.uniform(0.3, 0.9), rng.uniform(0.3, 1.0), rng.uniform(0.3, 0.9)])
            c = self._place(rng, 0.5 * float(np.hypot(size[0], size[2])), taken)
            if c is None:
                continue
            v, t = _box(size)
            v = _mm(v, _rot_y(rng.uniform(0, np.pi / 2)).T) + c + np.array([0.0, size[1] / 2, 0.0])
            self._add(f"box{k}", "box", (v, t), self._texture(rng))
        for k in range(int(rng.integers(2, 4))):
            r = rng.uniform(0.15, 0.4)
            c = self._place(rng, r, taken)
            if c is None:
                continue
            c[1] = r if (self.dynamic or rng.random() < 0.5) else rng.uniform(r + 0.2, 1.6)
            v, t = _sphere(r)
            self._add(f"sphere{k}", "sphere", (v + c, t), self._texture(rng), sphere_radius=r, sphere_center=c)
        for k in range(int(rng.integers(1, 3))):  # free-standing slanted panels (double-sided)
            w, h = rng.uniform(0.6, 1.2), rng.uniform(0.6, 1.3)
            c = self._place(rng, w / 2, taken)
            if c is None:
                continue
            R = _rot_y(rng.uniform(0, np.pi)) @ _rot_x(rng.uniform(-0.35, 0.35))
            v, t = _quad(np.array([-w / 2, 0.0, 0.0]), np.array([w, 0.0, 0.0]), np.array([0.0, h, 0.0]))
            v = _mm(v, R.T) + c
            v[:, 1] -= v[:, 1].min()  # bottom edge on the floor
            self._add(f"panel{k}", "plane", (v, t), self._texture(rng))
        for k in range(int(rng.integers(2, 4))):  # posters 1 cm in front of the far and side walls
            w, h = rng.uniform(0.4, 1.0), rng.uniform(0.4, 0.9)
            y0 = rng.uniform(0.9, H - h - 0.2)
            wall = int(rng.integers(0, 3))
            if wall == 0:
                x0 = rng.uniform(0.2, W - w - 0.2)
                vt = _quad(np.array([x0, y0, D - 0.01]), np.array([w, 0.0, 0.0]), np.array([0.0, h, 0.0]))
            else:
                z0 = rng.uniform(0.45 * D, D - w - 0.2)
                x = 0.01 if wall == 1 else W - 0.01
                vt = _quad(np.array([x, y0, z0]), np.array([0.0, 0.0, w]), np.array([0.0, h, 0.0]))
            self._add(f"poster{k}", "plane", vt, self._texture(rng))

    def _build_movers(self, rng: np.random.Generator) -> None:
        W, H, D = self.size
        r = rng.uniform(0.2, 0.3)
        v, t = _sphere(r)
        self._add("mover_sphere", "sphere", (v, t), self._texture(rng, "checker"), sphere_radius=r,
                  sphere_center=np.zeros(3),
                  motion=Motion(np.array([W / 2, rng.uniform(1.2, 1.6), rng.uniform(0.5, 0.6) * D]),
                                np.array([1.0, 0.0, 0.0]), rng.uniform(0.8, 1.1), rng.uniform(3.0, 4.0),
                                rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.5)))
        s = rng.uniform(0.3, 0.45)
        v, t = _box([s, s, s])
        d = np.array([rng.uniform(-0.5, 0.5), 0.0, 1.0])
        self._add("mover_box", "box", (v, t), self._texture(rng, "stripes"),
                  motion=Motion(np.array([W / 2 + rng.uniform(-0.8, 0.8), s / 2 + rng.uniform(0.0, 0.3),
                                          0.7 * D]), d / np.linalg.norm(d), rng.uniform(0.4, 0.7),
                                rng.uniform(2.5, 3.5), rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.0)))

    def _build_wall_furniture(self, rng: np.random.Generator) -> None:
        """Cabinets and posters along the near wall (z = 0) and the near half of the side walls, a ball on a
        cabinet: 3-D structure wherever the lap path looks, kept >= 0.3 m from it."""
        W, H, D = self.size
        x, k = 0.2, 0
        while True:  # cabinets along the near wall, 0.25-0.35 m deep, with gaps
            w = rng.uniform(0.5, 1.1)
            if x + w > W - 0.2:
                break
            h, d = rng.uniform(0.5, 1.3), rng.uniform(0.25, 0.35)
            v, t = _box([w, h, d])
            self._add(f"cabinet{k}", "box", (v + np.array([x + w / 2, h / 2, d / 2]), t), self._texture(rng))
            if k == 1:  # a ball on the second cabinet
                r = rng.uniform(0.12, 0.2)
                c = np.array([x + w / 2, h + r, d / 2])
                vs, ts = _sphere(r)
                self._add("ball", "sphere", (vs + c, ts), self._texture(rng), sphere_radius=r, sphere_center=c)
            x += w + rng.uniform(0.15, 0.6)
            k += 1
        for j in range(int(rng.integers(1, 3))):  # posters on the near wall, above the cabinets
            w, h = rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.6)
            x0, y0 = rng.uniform(0.2, W - w - 0.2), rng.uniform(1.4, H - h - 0.15)
            self._add(f"near_poster{j}", "plane", _quad(np.array([x0 + w, y0, 0.01]), np.array([-w, 0.0, 0.0]),
                                                         np.array([0.0, h, 0.0])), self._texture(rng))
        for side, _xw in ((0, 0.0), (1, W)):  # a shelf and a poster on each side wall, near half
            depth, length, h = rng.uniform(0.25, 0.35), rng.uniform(0.5, 0.9), rng.uniform(0.7, 1.6)
            z0 = rng.uniform(0.5, max(0.55, 0.45 * D - length - 0.2))
            xc = depth / 2 if side == 0 else W - depth / 2
            v, t = _box([depth, h, length])
            self._add(f"shelf{side}", "box", (v + np.array([xc, h / 2, z0 + length / 2]), t), self._texture(rng))
            w, ph = rng.uniform(0.4, 0.8), rng.uniform(0.4, 0.7)
            zp, yp = rng.uniform(0.3, max(0.35, 0.45 * D - w - 0.1)), rng.uniform(1.0, H - ph - 0.2)
            xp = 0.01 if side == 0 else W - 0.01
            self._add(f"side_poster{side}", "plane", _quad(np.array([xp, yp, zp]), np.array([0.0, 0.0, w]),
                                                            np.array([0.0, ph, 0.0])), self._texture(rng))

    def _make_path(self, rng: np.random.Generator) -> dict[str, float]:
        W, H, D = self.size
        return {
            "cx": W / 2 + rng.uniform(-0.3, 0.3), "cy": rng.uniform(1.3, 1.6), "cz": 0.25 * D,
            "rx": rng.uniform(0.35, 0.6), "ry": rng.uniform(0.04, 0.1), "rz": rng.uniform(0.2, 0.35),
            "theta0": rng.uniform(0, 2 * np.pi), "tx_amp": rng.uniform(0.4, 0.8), "ty": rng.uniform(0.7, 1.0),
            "tz": 0.8 * D, "phase": rng.uniform(0, 2 * np.pi),
        }

    # ------------------------------------------------------------------ camera
    def lap_path(self) -> LoopPath:
        """The closed path that ``laps`` sequences go round: a circle of radius 0.68 m in the near half.

        The camera walks round the circle (1.35 m high, 4.3 m a lap, centred at x = W/2 and 1.48 m from the
        near wall, closer in short rooms) looking across its centre, so its heading turns once a lap: it
        faces the objects and the far wall from the near side of the circle, the near wall from the far side
        and the side walls in between (furnish them: ``furnished=True``, as ``laps`` sequences do); pitch
        (-10 +- 6 deg), heading (+- 4 deg), roll (+- 3 deg) and height (+- 4 cm) wobble smoothly. The wobble
        phases and the start of the lap follow from the seed (a stream separate from the room's). The path
        keeps >= 0.3 m from every surface.
        """
        W, _, D = self.size
        rng = np.random.default_rng([self.seed, 0x1A95])
        r = LAP_RADIUS
        zc = min(0.8 + r, 0.45 * D - 0.05 - r)
        ph = rng.uniform(0.0, 2.0 * np.pi, size=4)
        return LoopPath(center=(W / 2.0, zc), radius_x=r, radius_z=r, height=1.35, heading="inward",
                        pitch=np.radians(-10.0), bob=Wobble(0.04, 2, float(ph[0])),
                        heading_wobble=Wobble(np.radians(4.0), 2, float(ph[1])),
                        pitch_wobble=Wobble(np.radians(6.0), 1, float(ph[2])),
                        roll_wobble=Wobble(np.radians(3.0), 2, float(ph[3])), theta0=float(rng.uniform(0, 2 * np.pi)))

    def camera_pose(self, i: float, speed: float = DEFAULT_SPEED) -> np.ndarray:
        """Camera-to-world pose at frame ``i`` of the scene's smooth camera loop (``speed`` m/frame)."""
        p = self._path
        omega = speed / (0.5 * (p["rx"] + p["rz"]))
        th = p["theta0"] + omega * float(i)
        eye = np.array([p["cx"] + p["rx"] * np.cos(th), p["cy"] + p["ry"] * np.sin(2 * th), p["cz"] + p["rz"] * np.sin(th)])
        target = np.array([self.size[0] / 2 + p["tx_amp"] * np.sin(0.7 * th + p["phase"]),
                           p["ty"] + 0.15 * np.sin(1.3 * th), p["tz"]])
        return look_at(eye, target)

    # ------------------------------------------------------------------ geometry access
    def _shapes(self, time: Optional[float], include_dynamic: bool) -> list[tuple[Shape, np.ndarray]]:
        out = []
        for s in self.shapes:
            if s.dynamic:
                if include_dynamic:
                    out.append((s, s.world_vertices(0.0 if time is None else time)))
            else:
                out.append((s, s.vertices))
        return out

    def mesh(self, time: Optional[float] = None, include_dynamic: bool = False, colors: bool = True):
        """The true surfaces as one ``open3d.geometry.TriangleMesh`` (world frame, metres).

        Static shapes only by default; ``include_dynamic=True`` adds the moving ones at ``time`` (seconds).
        With ``colors``, vertices carry each shape's mean albedo.
        """
        import open3d as o3d

        verts, tris, cols = [], [], []
        n = 0
        for s, v in self._shapes(time, include_dynamic):
            verts.append(v)
            tris.append(s.triangles + n)
            cols.append(np.repeat(((s.texture.color1 + s.texture.color2) / 2)[None], len(v), axis=0))
            n += len(v)
        m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.concatenate(verts)),
                                      o3d.utility.Vector3iVector(np.concatenate(tris)))
        if colors:
            m.vertex_colors = o3d.utility.Vector3dVector(np.concatenate(cols))
        m.compute_triangle_normals()
        return m

    def _raycasting_scene(self, shapes: list[tuple[Shape, np.ndarray]]):
        import open3d as o3d

        scene = o3d.t.geometry.RaycastingScene()
        ids = []
        for s, v in shapes:
            ids.append(scene.add_triangles(o3d.core.Tensor(v.astype(np.float32)),
                                           o3d.core.Tensor(s.triangles.astype(np.uint32))))
        return scene, ids

    def _static(self):
        """The static shapes' RaycastingScene and a geometry-id -> shape-index lookup table."""
        built = self._static_scene  # (scene, lut), assigned at once: safe to build from two threads
        if built is None:
            static = [k for k, s in enumerate(self.shapes) if not s.dynamic]
            scene, ids = self._raycasting_scene([(self.shapes[k], self.shapes[k].vertices) for k in static])
            lut = np.full(max(ids) + 1, -1, dtype=np.int64)
            lut[np.asarray(ids)] = static
            built = self._static_scene = (scene, lut)
        return built

    def distance_to_surface(self, points: np.ndarray, time: Optional[float] = None,
                            include_dynamic: bool = False) -> np.ndarray:
        """Unsigned distance (metres) from each of ``points`` (``[N,3]`` world) to the nearest true surface."""
        import open3d as o3d

        pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        if include_dynamic and any(s.dynamic for s in self.shapes):
            scene, _ = self._raycasting_scene(self._shapes(time, True))
        else:
            scene, _ = self._static()
        return scene.compute_distance(o3d.core.Tensor(pts)).numpy().astype(np.float64)

    # ------------------------------------------------------------------ rendering
    def render(self, c2w: np.ndarray, K: np.ndarray, width: int, height: int, time: float = 0.0,
               nthreads: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Render one view.

        Args:
            c2w: ``[4,4]`` camera-to-world pose (OpenCV axes).
            K: ``[3,3]`` intrinsics; pixel ``(u, v)`` integer coordinates are pixel centres.
            width, height: image size.
            time: seconds, for the moving objects.
            nthreads: Embree threads (0: all cores). The result does not depend on it.

        Returns:
            ``(rgb uint8 [H,W,3], depth float32 [H,W])``: z-depth in metres, 0 where a ray hits nothing.
        """
        rgb8, depth, _ = self.render_with_normals(c2w, K, width, height, time=time, nthreads=nthreads)
        return rgb8, depth

    def render_with_normals(self, c2w: np.ndarray, K: np.ndarray, width: int, height: int, time: float = 0.0,
                            nthreads: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`render` plus ``normals`` float32 ``[H,W,3]``: unit world-frame surface normals facing the
        camera (0 where a ray hits nothing); the sensor noise model needs the incidence angles."""
        import open3d as o3d

        c2w = np.asarray(c2w, dtype=np.float64)
        d_world = _mm(self._camera_rays(np.asarray(K, dtype=np.float64), int(width), int(height)), c2w[:3, :3].T)
        # the camera-z component of every direction is 1, so t_hit is the z-depth
        origin = c2w[:3, 3]
        rays = np.empty((len(d_world), 6), dtype=np.float32)
        rays[:, :3] = origin
        rays[:, 3:] = d_world
        rays_t = o3d.core.Tensor.from_numpy(rays)

        scene, lut = self._static()
        hit = scene.cast_rays(rays_t, nthreads=nthreads)
        t = hit["t_hit"].numpy().astype(np.float64)
        gid = hit["geometry_ids"].numpy().astype(np.int64)
        normals = hit["primitive_normals"].numpy().astype(np.float64)
        finite = np.isfinite(t)
        owner = np.where(finite, lut[np.where(finite, gid, 0)], -1)

        movers = [k for k, s in enumerate(self.shapes) if s.dynamic]
        if movers:
            dscene, _ = self._raycasting_scene([(self.shapes[k], self.shapes[k].world_vertices(time)) for k in movers])
            dh = dscene.cast_rays(rays_t, nthreads=nthreads)
            dt = dh["t_hit"].numpy().astype(np.float64)
            closer = np.isfinite(dt) & (dt < np.where(finite, t, np.inf))
            if closer.any():
                t = np.where(closer, dt, t)
                normals[closer] = dh["primitive_normals"].numpy()[closer]
                owner[closer] = np.asarray(movers)[dh["geometry_ids"].numpy().astype(np.int64)[closer]]

        valid = owner >= 0
        p = origin[None, :] + d_world * np.where(valid, t, 0.0)[:, None]
        color = np.zeros((len(t), 3))
        order = np.argsort(owner, kind="stable")
        bounds = np.searchsorted(owner[order], np.arange(len(self.shapes) + 1))
        for k, s in enumerate(self.shapes):
            m = order[bounds[k]:bounds[k + 1]]
            if len(m) == 0:
                continue
            pts = p[m]
            if s.dynamic:
                T = s.motion.transform(time)  # type: ignore[union-attr]
                local = _mm(pts - T[:3, 3], T[:3, :3])  # inverse rigid transform: the texture moves with the object
            elif s.frame is not None:  # textured in its own frame: identical copies look identical
                T, local = None, _mm(pts - s.frame[:3, 3], s.frame[:3, :3])
            else:
                T, local = None, pts
            if s.kind == "sphere":  # analytic normals: smooth shading of the faceted sphere
                c = s.sphere_center if s.sphere_center is not None else np.zeros(3)
                n = (local if T is not None else pts) - c  # (the centre of a static sphere is in world coords)
                if T is not None:
                    n = _mm(n, T[:3, :3].T)
                normals[m] = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
            color[m] = s.texture.albedo(local, self.noise)
        # Lambert shading from the point light, normals turned towards the camera
        flip = np.einsum("ij,ij->i", normals, d_world) > 0
        normals[flip] *= -1.0
        to_light = self._to_light(p, owner)
        to_light /= np.maximum(np.linalg.norm(to_light, axis=1, keepdims=True), 1e-9)
        shade = 0.3 + 0.7 * np.clip(np.einsum("ij,ij->i", normals, to_light), 0.0, 1.0)
        rgb = np.clip(color * shade[:, None], 0.0, 1.0)
        rgb[~valid] = 0.0
        rgb8 = np.rint(rgb * 255.0).astype(np.uint8).reshape(height, width, 3)
        depth = np.where(valid, t, 0.0).astype(np.float32).reshape(height, width)
        normals[~valid] = 0.0
        return rgb8, depth, normals.astype(np.float32).reshape(height, width, 3)

    def _to_light(self, p: np.ndarray, owner: np.ndarray) -> np.ndarray:
        """``[N,3]`` vectors from surface points ``p`` (world) to the light that shades them (``owner``: the
        index of the shape each point lies on, -1 for none)."""
        return self.light[None, :] - p

    def _camera_rays(self, K: np.ndarray, width: int, height: int) -> np.ndarray:
        """``[H*W, 3]`` camera-frame ray directions ``((u-cx)/fx, (v-cy)/fy, 1)``, cached per camera."""
        key = (width, height, K.tobytes())
        cache = self.__dict__.setdefault("_ray_cache", {})
        rays = cache.get(key)  # (a source's prefetch thread and a truth oracle may render different sizes)
        if rays is None:
            u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
            rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=-1).reshape(-1, 3)
            if len(cache) >= 4:
                cache.clear()
            cache[key] = rays
        return rays

    def describe(self) -> dict[str, Any]:
        d = {
            "seed": self.seed,
            "dynamic": self.dynamic,
            "room_size_m": list(self.size),
            "light": self.light.tolist(),
            "shapes": [{"name": s.name, "kind": s.kind, "texture": s.texture.kind, "dynamic": s.dynamic,
                        "triangles": int(len(s.triangles))} for s in self.shapes],
        }
        if self.furnished:
            d["furnished"] = True
        return d
