"""Sensor noise for the synthetic RGB-D frames: a structured-light (Kinect v1-like) depth model.

The renderer gives exact z-depth; :func:`apply_noise` turns it into what a
structured-light sensor delivers, in this order (every random draw comes from one
generator seeded by ``(seed, frame index)``, so the same seed gives the same arrays):

1. **Lateral noise** (Nguyen, Izadi & Lovell 2012, "Modeling Kinect sensor noise for
   improved 3D reconstruction and tracking", 3DIMPVT): each pixel takes the depth of a
   neighbour displaced by ``N(0, sigma_L)`` pixels, ``sigma_L = 0.8 + 0.035 theta / (pi/2 - theta)``
   pixels of the native 640x480 sensor (``theta``: angle between the surface normal and the
   viewing ray), scaled to the rendered resolution (``K``'s focal length / ``focal_px``). It
   only matters at depth edges.
2. **Axial noise** (same paper): total standard deviation
   ``sigma_z(z, theta) = 0.0012 + 0.0019 (z - 0.4)^2 + 0.0001 / sqrt(z) * theta^2 / (pi/2 - theta)^2``
   metres (``theta`` clamped at ``max_noise_angle_deg``). Nguyen et al. measured the total
   spread of the sensor's output, which already includes the disparity quantisation of
   step 3, so the Gaussian part drawn here is ``sqrt(sigma_z^2 - step^2 / 12)`` (the
   quantisation adds the ``step^2 / 12`` back): the std of the random part of ``noisy - exact``
   then follows the formula (the fixed distortion below adds ~10 % over a whole frame).
   ``correlation_px`` > 0 blurs the Gaussian field (std ``correlation_px`` native pixels,
   renormalised to unit variance), mimicking block matching over a correlation window
   (neighbouring pixels share their error).
   **Depth distortion**: an uncalibrated Kinect also has a smooth, fixed-pattern disparity
   error over the image (a "bowl" plus low-frequency waves; Smisek, Jancosek & Pajdla 2011,
   "3D with Kinect", ICCV workshops; Herrera, Kannala & Heikkilä 2012, "Joint depth and color
   camera calibration with distortion correction", TPAMI 34(10)). It is added here as a disparity
   offset of at most ``distortion_px`` = 0.1 native pixels (:meth:`SensorNoise.distortion_pattern`:
   up to ~0.9 cm at 2 m, ~2 cm at 3 m, in the corners), the same in every frame. Unlike the
   random noise, it does not average out over pixels and frames: it biases every registration a
   little, so odometry drifts even when it registers to sparse keyframes.
3. **Disparity quantisation** (Khoshelham & Elberink 2012, "Accuracy and resolution of Kinect
   depth data for indoor mapping applications", Sensors 12(2)): the sensor measures
   disparity ``d = f b / z`` in steps of ``disparity_step`` = 1/8 pixel (focal ``f =
   focal_px`` = 580 px, baseline ``b`` = 7.5 cm), so depth comes in steps of about
   ``z^2 * q / (f b)``: 2.9 mm at 1 m, 2.6 cm at 3 m.
4. **Dropouts** (pixels set to 0, "no depth", as the sensor reports them):
   * outside ``[min_range, max_range]`` (Kinect v1: about 0.45-4.5 m usable);
   * projector shadow: the IR projector sits ``baseline`` along the camera's +x axis, so
     background surface right behind a foreground edge is not lit; a pixel is dropped when
     a pixel to its right on the same row occludes it from the projector (the band is
     ``f b (1/z_fg - 1/z_bg)`` pixels wide, on the left of foreground objects);
   * grazing angles: dropped with a probability rising linearly from 0 at
     ``grazing_deg[0]`` to 1 at ``grazing_deg[1]`` (no speckle comes back);
   * depth discontinuities: a pixel whose depth differs from a 4-neighbour's by more than
     ``edge_jump`` (relative) is dropped with probability ``edge_dropout`` (block matching
     fails across the edge);
   * a ``random_dropout`` fraction anywhere (specularities, absorbing materials).
5. **Colour noise**: Gaussian, ``color_sigma`` 8-bit levels, rounded and clipped.

Units: depth in metres, float32 ``[H,W]``, 0 = invalid; colour uint8 ``[H,W,3]``; normals
``[H,W,3]`` world (or camera) frame, unit length, the same frame as the rays.

Presets: ``none`` (exact depth, the default) and ``kinect`` (the values above; ``correlation_px`` 0);
:func:`resolve_noise` also takes a mapping ``{"preset": "kinect", "random_dropout": 0.01}``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import numpy as np

from slam3r_app.errors import SourceError

NOISE_PRESETS = ("none", "kinect")
_SALT = 0x5E0501  # separates the noise stream from every other seeded stream


@dataclass(frozen=True)
class SensorNoise:
    """Parameters of the structured-light depth + colour noise model (see the module docstring).

    Lengths in metres, angles in degrees, ``*_px`` in pixels of the native 640x480 sensor.
    """

    name: str = "kinect"
    min_range: float = 0.45
    max_range: float = 4.5
    axial_a: float = 0.0012
    axial_b: float = 0.0019
    axial_z0: float = 0.4
    axial_angle: float = 0.0001
    max_noise_angle_deg: float = 80.0
    correlation_px: float = 0.0
    distortion_px: float = 0.1
    distortion_seed: int = 0
    focal_px: float = 580.0
    baseline: float = 0.075
    disparity_step: float = 0.125
    lateral_px: float = 0.8
    lateral_angle_px: float = 0.035
    shadow: bool = True
    grazing_deg: tuple[float, float] = (75.0, 88.0)
    edge_jump: float = 0.05
    edge_dropout: float = 0.5
    random_dropout: float = 0.005
    color_sigma: float = 2.0

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> None:
            raise SourceError(f"synthetic noise: {key} {why}, got {getattr(self, key)!r}")

        if not 0 <= self.min_range < self.max_range:
            bad("min_range", "must be >= 0 and below max_range")
        for key in ("axial_a", "axial_b", "axial_angle", "correlation_px", "distortion_px", "lateral_px", "lateral_angle_px",
                    "color_sigma", "disparity_step"):
            if not getattr(self, key) >= 0:
                bad(key, "must be >= 0")
        for key in ("focal_px", "baseline"):
            if not getattr(self, key) > 0:
                bad(key, "must be > 0")
        for key in ("edge_dropout", "random_dropout"):
            if not 0 <= getattr(self, key) <= 1:
                bad(key, "must be in [0, 1]")
        g0, g1 = self.grazing_deg
        if not 0 < g0 < g1 <= 90:
            bad("grazing_deg", "must be two angles 0 < a < b <= 90")
        if not 0 < self.max_noise_angle_deg < 90:
            bad("max_noise_angle_deg", "must be in (0, 90)")

    # ------------------------------------------------------------------ the model, as formulas
    def axial_sigma(self, z: np.ndarray, theta: Union[np.ndarray, float] = 0.0) -> np.ndarray:
        """Total axial standard deviation (metres) at depth ``z`` (m) and incidence ``theta`` (radians)."""
        z = np.asarray(z, dtype=np.float64)
        th = np.minimum(np.asarray(theta, dtype=np.float64), np.radians(self.max_noise_angle_deg))
        ang = self.axial_angle / np.sqrt(np.maximum(z, 1e-6)) * th ** 2 / (0.5 * np.pi - th) ** 2
        return self.axial_a + self.axial_b * (z - self.axial_z0) ** 2 + ang

    def depth_step(self, z: np.ndarray) -> np.ndarray:
        """Depth quantisation step (metres) at depth ``z``: ``z^2 q / (f b)``."""
        z = np.asarray(z, dtype=np.float64)
        return z * z * self.disparity_step / (self.focal_px * self.baseline)

    def quantise(self, z: np.ndarray) -> np.ndarray:
        """Depth rounded to the nearest representable disparity (metres; 0 stays 0)."""
        z = np.asarray(z, dtype=np.float64)
        if self.disparity_step == 0:
            return z
        fb = self.focal_px * self.baseline
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.rint(fb / z / self.disparity_step) * self.disparity_step
            out = np.where((z > 0) & (d > 0), fb / d, 0.0)
        return out

    def distortion_pattern(self, K: np.ndarray, width: int, height: int) -> np.ndarray:
        """``[H,W]`` the sensor's fixed disparity offset (pixels of disparity, native), the same every frame.

        A smooth pattern in viewing-ray coordinates ``(x, y) = ((u - cx) / fx, (v - cy) / fy)`` (so it
        does not depend on the rendered resolution): 60 % a radial bowl, zero-mean over the native
        field of view, 40 % three low-frequency waves with phases from ``distortion_seed``, scaled so
        that its largest magnitude over the native 640x480 view is ``distortion_px``.
        """
        if self.distortion_px == 0:
            return np.zeros((height, width))
        x, y = self._ray_grid(K, width, height)
        xs, ys = self._ray_grid(np.array([[self.focal_px, 0, 319.5], [0, self.focal_px, 239.5], [0, 0, 1.0]]), 64, 48,
                                native=True)
        return self.distortion_px * self._pattern(x, y) / np.abs(self._pattern(xs, ys)).max()

    @staticmethod
    def _ray_grid(K: np.ndarray, width: int, height: int, native: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if native:  # a coarse grid over the native view (for the normalisation)
            u, v = np.meshgrid(np.linspace(0, 639, width), np.linspace(0, 479, height))
        else:
            u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
        return (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]

    def _pattern(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([int(self.distortion_seed) & 0xFFFFFFFF, 0xD157])
        r2_mean = (0.55 ** 2 + 0.41 ** 2) / 3.0  # mean of x^2 + y^2 over the native view (|x|<0.55, |y|<0.41)
        bowl = (x * x + y * y - r2_mean) / r2_mean
        waves = np.zeros_like(x)
        for _ in range(3):
            freq, angle, phase = rng.uniform(2.0, 6.0), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
            waves += np.cos(freq * (np.cos(angle) * x + np.sin(angle) * y) + phase)
        return 0.6 * bowl / 1.3 + 0.4 * waves / 3.0

    def describe(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["grazing_deg"] = list(self.grazing_deg)
        return d


#: Named presets (``none`` = no noise).
PRESETS: dict[str, Optional[SensorNoise]] = {"none": None, "kinect": SensorNoise()}


def resolve_noise(value: Union[None, str, Mapping[str, Any], SensorNoise], key: str = "noise") -> Optional[SensorNoise]:
    """``None`` / ``"none"`` -> None; ``"kinect"`` -> the preset; a mapping -> a preset with overrides.

    Raises:
        SourceError: an unknown preset or parameter, naming ``key``.
    """
    if value is None or isinstance(value, SensorNoise):
        return value
    if isinstance(value, str):
        name = value.strip().lower()
        if name not in PRESETS:
            raise SourceError(f"{key}: unknown noise preset {value!r}; choose one of {', '.join(NOISE_PRESETS)}")
        return PRESETS[name]
    if isinstance(value, Mapping):
        params = dict(value)
        preset = str(params.pop("preset", "kinect")).strip().lower()
        if preset not in PRESETS:
            raise SourceError(f"{key}.preset: unknown noise preset {preset!r}; choose one of {', '.join(NOISE_PRESETS)}")
        base = PRESETS[preset] or SensorNoise(name="none")
        names = {f.name for f in dataclasses.fields(SensorNoise)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise SourceError(f"{key}: unknown noise parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        if "grazing_deg" in params:
            params["grazing_deg"] = tuple(float(a) for a in params["grazing_deg"])
        try:
            return dataclasses.replace(base, name=str(params.pop("name", f"{preset}+custom")), **params)
        except TypeError as e:  # pragma: no cover - a wrong value type
            raise SourceError(f"{key}: {e}") from None
    raise SourceError(f"{key}: expected a preset name ({', '.join(NOISE_PRESETS)}) or a mapping, got {value!r}")


# ----------------------------------------------------------------------------- applying the model
def frame_rng(seed: int, frame: int) -> np.random.Generator:
    """The generator of frame ``frame``'s noise: a pure function of ``(seed, frame)``."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(frame), _SALT])


def incidence_angle(normals: np.ndarray, K: np.ndarray, c2w_rot: Optional[np.ndarray] = None) -> np.ndarray:
    """``[H,W]`` angle (radians) between each pixel's viewing ray and its surface normal.

    ``normals`` is ``[H,W,3]`` in the world frame when ``c2w_rot`` (the pose's ``[3,3]``
    rotation) is given, else in the camera frame. Pixels without a normal get pi/2.
    """
    H, W = normals.shape[:2]
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=-1)
    if c2w_rot is not None:
        rays = rays @ np.asarray(c2w_rot, dtype=np.float64).T
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    n = np.asarray(normals, dtype=np.float64)
    norm = np.linalg.norm(n, axis=-1)
    cos = np.abs(np.einsum("hwi,hwi->hw", n, rays)) / np.maximum(norm, 1e-12)
    return np.where(norm > 0.5, np.arccos(np.clip(cos, 0.0, 1.0)), 0.5 * np.pi)


def _unit_field(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian field of unit variance, correlated over ``sigma_px`` pixels (white when < 0.3)."""
    g = rng.standard_normal(shape)
    if sigma_px < 0.3:
        return g
    import cv2

    k = cv2.getGaussianKernel(2 * int(np.ceil(3 * sigma_px)) + 1, sigma_px, cv2.CV_64F)[:, 0]
    out = cv2.sepFilter2D(g, cv2.CV_64F, k, k, borderType=cv2.BORDER_REFLECT)
    return out / float(np.sum(k * k))  # variance of the filtered white noise: (sum k^2)^2 -> std sum k^2


def projector_shadow(depth: np.ndarray, focal: float, baseline: float) -> np.ndarray:
    """``[H,W]`` bool: pixels the projector (``baseline`` metres along camera +x) cannot light.

    A point seen at column ``u`` with disparity ``d = focal * baseline / z`` is lit by the projector
    column ``u - d``; it is in shadow when a pixel to its right maps to a projector column at or left
    of it (that nearer surface blocks the projector's ray). Invalid pixels (0) never occlude.
    """
    H, W = depth.shape
    z = np.asarray(depth, dtype=np.float64)
    with np.errstate(divide="ignore"):
        g = np.where(z > 0, np.arange(W)[None, :] - focal * baseline / z, np.inf)
    # running minimum of g over the pixels strictly to the right
    right_min = np.minimum.accumulate(g[:, ::-1], axis=1)[:, ::-1]
    right_min = np.concatenate([right_min[:, 1:], np.full((H, 1), np.inf)], axis=1)
    return (z > 0) & (right_min < g - 1e-6)


def apply_noise(model: SensorNoise, rgb: np.ndarray, depth: np.ndarray, normals: np.ndarray, K: np.ndarray,
                rng: np.random.Generator, c2w_rot: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Noisy ``(rgb uint8 [H,W,3], depth float32 [H,W])`` from exact ones (see the module docstring).

    Args:
        model: the noise parameters.
        rgb: exact colour, uint8 ``[H,W,3]``.
        depth: exact z-depth, metres, ``[H,W]`` (0 = no surface).
        normals: ``[H,W,3]`` unit surface normals (world frame with ``c2w_rot``, else camera frame).
        K: ``[3,3]`` intrinsics of the rendered image.
        rng: the frame's generator (:func:`frame_rng`).
        c2w_rot: ``[3,3]`` camera-to-world rotation when ``normals`` are in the world frame.
    """
    H, W = depth.shape
    z0 = np.asarray(depth, dtype=np.float64)
    theta = incidence_angle(normals, K, c2w_rot)
    scale = float(K[0, 0]) / model.focal_px  # native pixels -> rendered pixels
    # 1. lateral: take a neighbour's depth (nearest), sigma from Nguyen et al. (native px -> rendered px)
    z, th = z0, theta
    if model.lateral_px > 0 or model.lateral_angle_px > 0:
        th_c = np.minimum(theta, np.radians(model.max_noise_angle_deg))
        sig = (model.lateral_px + model.lateral_angle_px * th_c / (0.5 * np.pi - th_c)) * scale
        du = np.rint(rng.standard_normal((H, W)) * sig).astype(np.int64)
        dv = np.rint(rng.standard_normal((H, W)) * sig).astype(np.int64)
        vv, uu = np.mgrid[0:H, 0:W]
        src_v, src_u = np.clip(vv + dv, 0, H - 1), np.clip(uu + du, 0, W - 1)
        z, th = z0[src_v, src_u], theta[src_v, src_u]
    valid = z > 0
    # 2. axial: the Gaussian part of Nguyen's total sigma (quantisation adds step^2/12 back)
    sigma = model.axial_sigma(z, th)
    step = model.depth_step(z)
    gauss = np.sqrt(np.maximum(sigma ** 2 - step ** 2 / 12.0, 0.0))
    field = _unit_field(rng, (H, W), model.correlation_px * scale)
    zn = np.where(valid, z + gauss * field, 0.0)
    if model.distortion_px > 0:  # the sensor's fixed disparity distortion (native disparity pixels)
        fb = model.focal_px * model.baseline
        with np.errstate(divide="ignore", invalid="ignore"):
            disp = np.where(zn > 0, fb / zn, 0.0) + model.distortion_pattern(K, W, H)
            zn = np.where((zn > 0) & (disp > 0), fb / disp, 0.0)
    # 3. disparity quantisation
    zn = model.quantise(np.where(zn > 0, zn, 0.0))
    # 4. dropouts
    drop = ~valid | (zn < model.min_range) | (zn > model.max_range)
    if model.shadow:
        drop |= projector_shadow(z0, float(K[0, 0]), model.baseline)
    g0, g1 = np.radians(model.grazing_deg[0]), np.radians(model.grazing_deg[1])
    p_graze = np.clip((theta - g0) / (g1 - g0), 0.0, 1.0)
    drop |= rng.random((H, W)) < p_graze
    if model.edge_dropout > 0:
        edge = np.zeros((H, W), dtype=bool)
        zz = np.where(z0 > 0, z0, np.inf)
        for a, b in (((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                     ((slice(1, None), slice(None)), (slice(None, -1), slice(None)))):
            with np.errstate(invalid="ignore"):
                jump = np.abs(zz[a] - zz[b]) > model.edge_jump * np.minimum(zz[a], zz[b])
            edge[a] |= jump
            edge[b] |= jump
        drop |= edge & (rng.random((H, W)) < model.edge_dropout)
    else:
        rng.random((H, W))  # keep the stream aligned whatever the options
    if model.random_dropout > 0:
        drop |= rng.random((H, W)) < model.random_dropout
    depth_out = np.where(drop, 0.0, zn).astype(np.float32)
    # 5. colour
    if model.color_sigma > 0:
        c = np.asarray(rgb, dtype=np.float64) + rng.standard_normal(rgb.shape) * model.color_sigma
        rgb_out = np.clip(np.rint(c), 0, 255).astype(np.uint8)
    else:
        rgb_out = np.array(rgb, dtype=np.uint8, copy=True)
    return rgb_out, depth_out
