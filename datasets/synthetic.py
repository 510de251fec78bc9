"""Procedural, seeded RGB-D sequences with exact ground truth, rendered on the CPU.

A scene is a closed room (floor, ceiling, four walls) with boxes, spheres and
flat panels in it, every surface carrying a procedural solid texture (soft
checkers, tiles, stripes, fractal noise, plus fine noise everywhere) so that
photometric tracking has gradients. ``dynamic=True`` adds objects that move
while the camera records (the ground-truth poses are still the camera's).

Rendering casts one ray per pixel through Open3D's ``RaycastingScene``
(Embree): depth is the exact z-depth of the hit (metres), colour is the
texture's albedo times Lambert shading from a point light under the ceiling
(view-independent, so brightness constancy holds). The camera moves along a
smooth closed loop in the near half of the room, looking into it, about 1.2 cm
and well under a degree per frame.

Loop-closure test scenes (the modules next to this one):

* ``laps=N``: N times round the scene's closed :meth:`SyntheticScene.lap_path`
  (:mod:`.synthetic_paths`), revisiting bit-identical poses every lap; the room is
  then ``furnished`` along its near and side walls.
* ``noise="kinect"``: structured-light depth noise, quantisation and dropouts, colour
  noise (:mod:`.synthetic_noise`); ``render_exact`` still gives the exact frame.
* ``scene="aliasing"``: a hall of identical office bays (:mod:`.synthetic_aliasing`).
* :mod:`.synthetic_truth`: which frames really see the same place (view overlap).

World frame: y up, floor at y = 0, the room spans ``[0, W] x [0, H] x [0, D]``.
Poses are camera-to-world in OpenCV camera axes (x right, y down, z forward).

Typical use::

    seq = SyntheticSequence(seed=3, frames=60)
    seq = SyntheticSequence(seed=3, laps=2, noise="kinect")   # 2 x 306 frames, noisy depth
    rgb, depth = seq.render(0)                 # uint8 [H,W,3], float32 [H,W] metres (0 = no depth)
    seq.pose(0), seq.K                         # exact GT
    seq.write("out/synth", format="tum")       # or format="sintel"
    seq.scene.mesh()                           # the true surfaces (open3d TriangleMesh)
    seq.scene.distance_to_surface(points)      # unsigned distance to them, metres

Everything is a pure function of the seed and the arguments: the same seed
gives identical arrays and identical files.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from slam3r_app.errors import BadFrameError, SourceError
from slam3r_app.sources import FrameSource
from slam3r_app.trajectory import format_tum
from slam3r_app.types import Frame

from .common import PathLike, as_intrinsics, format_intrinsics, select_frames
from .synthetic_aliasing import AliasingScene
from .synthetic_noise import SensorNoise, apply_noise, frame_rng, resolve_noise
from .synthetic_paths import LoopPath, Wobble, look_at  # noqa: F401 - look_at, Wobble: re-exported
from .synthetic_room import (  # noqa: F401 - re-exported: the room is part of this module's API
    DEFAULT_SPEED,
    LAP_RADIUS,
    LAP_SPEED,
    Motion,
    Shape,
    SyntheticScene,
    Texture,
    ValueNoise,
    default_intrinsics,
)

log = logging.getLogger("slam3r.synthetic")

DEFAULT_WIDTH, DEFAULT_HEIGHT = 320, 240
DEFAULT_FPS = 30.0
SCENES = ("room", "aliasing")
TUM_DEPTH_SCALE = 5000.0
FORMATS = ("tum", "sintel")


# ----------------------------------------------------------------------------- sequences
def make_scene(kind: str = "room", seed: int = 0, dynamic: bool = False, furnished: bool = False) -> "SyntheticScene":
    """A scene by name: ``room`` (:class:`SyntheticScene`; ``furnished`` as there) or ``aliasing``
    (:class:`~.synthetic_aliasing.AliasingScene`)."""
    name = str(kind).strip().lower()
    if name == "room":
        return SyntheticScene(seed, dynamic, furnished=furnished)
    if name == "aliasing":
        if dynamic:
            raise SourceError("synthetic: dynamic objects exist only in the 'room' scene (scene 'aliasing' given)")
        return AliasingScene(seed)
    raise SourceError(f"synthetic: unknown scene {kind!r}; choose one of {', '.join(SCENES)}")


class SyntheticSequence:
    """A camera path through a synthetic scene, with intrinsics, timestamps, rendering and sensor noise.

    Args:
        seed: the scene seed (ignored when ``scene`` is a scene object); also seeds the noise.
        frames: number of frames; default 60, or ``laps * frames_per_lap`` when ``laps`` is given (an explicit
            ``frames`` then wins, e.g. to stop mid-lap or go on past the last lap).
        width, height: image size (default 320x240).
        dynamic: moving objects in the scene (room only).
        fps: frame rate (timestamps are ``i / fps`` seconds).
        speed: camera speed along its path, metres per frame (default 0.012 on the room's original sweep,
            0.014 on the room's lap path, 0.02 in the aliasing hall).
        intrinsics: ``[fx, fy, cx, cy]`` or 3x3 (default :func:`default_intrinsics`).
        scene: ``"room"`` (default), ``"aliasing"``, or an existing scene object.
        laps: go round the scene's closed :meth:`~SyntheticScene.lap_path` this many times: frame ``i`` and
            frame ``i + frames_per_lap`` have the identical pose. ``None`` (default): the room's original short
            sweep (``camera_pose``; the aliasing scene always uses its lap path). A room built here for laps
            is ``furnished`` (see :class:`SyntheticScene`).
        noise: sensor noise: ``None`` / ``"none"`` (exact depth, default), ``"kinect"``, a mapping of
            overrides or a :class:`~.synthetic_noise.SensorNoise`.
        noise_seed: seeds the per-frame noise (default: ``seed``); frame ``i``'s noise depends only on
            ``(noise_seed, i)``.
    """

    def __init__(self, seed: int = 0, frames: Optional[int] = None, width: int = DEFAULT_WIDTH,
                 height: int = DEFAULT_HEIGHT, dynamic: bool = False, fps: float = DEFAULT_FPS,
                 speed: Optional[float] = None, intrinsics: Optional[Union[Sequence[float], np.ndarray]] = None,
                 scene: Union[None, str, "SyntheticScene"] = None, laps: Optional[int] = None,
                 noise: Union[None, str, dict, SensorNoise] = None, noise_seed: Optional[int] = None) -> None:
        if laps is not None and (isinstance(laps, bool) or int(laps) != laps or laps < 1):
            raise SourceError(f"synthetic: laps must be an integer >= 1, got {laps!r}")
        if frames is not None and frames < 1:
            raise SourceError(f"synthetic: frames must be >= 1, got {frames}")
        if width < 8 or height < 8:
            raise SourceError(f"synthetic: image size must be at least 8x8, got {width}x{height}")
        if fps <= 0:
            raise SourceError(f"synthetic: fps must be > 0, got {fps}")
        if speed is not None and not speed > 0:
            raise SourceError(f"synthetic: speed must be > 0 metres per frame, got {speed}")
        if scene is None or isinstance(scene, str):  # laps in the room: furnished, so every view has structure
            self.scene = make_scene(scene or "room", seed, dynamic, furnished=laps is not None)
        else:
            self.scene = scene
        self.laps = None if laps is None else int(laps)
        use_lap_path = self.laps is not None or self.scene.kind != "room"
        self.path: Optional[LoopPath] = self.scene.lap_path() if use_lap_path else None
        lap_speed = float(getattr(self.scene, "lap_speed", LAP_SPEED))
        self.speed = float(speed) if speed is not None else (lap_speed if self.path is not None else DEFAULT_SPEED)
        self.frames_per_lap: Optional[int] = self.path.frames_per_lap(self.speed) if self.path is not None else None
        if frames is None:
            frames = self.laps * self.frames_per_lap if self.laps is not None else 60  # type: ignore[operator]
        self.frames = int(frames)
        self.width, self.height = int(width), int(height)
        self.fps = float(fps)
        K = as_intrinsics(intrinsics, what="synthetic intrinsics")
        self.K = K if K is not None else default_intrinsics(self.width, self.height)
        self.noise = resolve_noise(noise, key="synthetic noise")
        self.noise_seed = int(self.scene.seed if noise_seed is None else noise_seed)

    def __len__(self) -> int:
        return self.frames

    def timestamp(self, i: int) -> float:
        return i / self.fps

    def timestamps(self) -> np.ndarray:
        return np.arange(self.frames, dtype=np.float64) / self.fps

    def pose(self, i: int) -> np.ndarray:
        """Exact camera-to-world pose of frame ``i``."""
        if self.path is not None:
            return self.path.pose(i, self.speed)
        return self.scene.camera_pose(i, self.speed)

    def poses(self) -> np.ndarray:
        return np.stack([self.pose(i) for i in range(self.frames)])

    def lap_of(self, i: int) -> int:
        """0-based lap of frame ``i`` (0 without laps)."""
        return 0 if self.frames_per_lap is None else int(i) // self.frames_per_lap

    def render(self, i: int, nthreads: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(rgb uint8 [H,W,3], depth float32 [H,W] metres)`` of frame ``i`` as the sensor gives them
        (with the sequence's noise, if any; 0 = no depth)."""
        if self.noise is None:
            return self.render_exact(i, nthreads)
        rgb, depth, normals = self.scene.render_with_normals(self.pose(i), self.K, self.width, self.height,
                                                             time=self.timestamp(i), nthreads=nthreads)
        return apply_noise(self.noise, rgb, depth, normals, self.K, frame_rng(self.noise_seed, i),
                           c2w_rot=self.pose(i)[:3, :3])

    def render_exact(self, i: int, nthreads: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Frame ``i`` without sensor noise: exact colour and exact z-depth (metres)."""
        return self.scene.render(self.pose(i), self.K, self.width, self.height, time=self.timestamp(i),
                                 nthreads=nthreads)

    def frame(self, i: int, index: Optional[int] = None) -> Frame:
        rgb, depth = self.render(i)
        return Frame(index=i if index is None else index, timestamp=self.timestamp(i), rgb=rgb, depth=depth,
                     intrinsics=self.K.copy(), gt_pose=self.pose(i), name=f"synthetic#{i:04d}")

    def describe(self) -> dict[str, Any]:
        d = self.scene.describe()
        d.update({"frames": self.frames, "width": self.width, "height": self.height, "fps": self.fps,
                  "speed_m_per_frame": self.speed, "intrinsics": format_intrinsics(self.K)})
        if self.path is not None:
            d.update({"laps": self.laps, "frames_per_lap": self.frames_per_lap, "path": self.path.describe()})
        if self.noise is not None:
            d.update({"noise": self.noise.describe(), "noise_seed": self.noise_seed})
        return d

    # ------------------------------------------------------------------ writers
    def write(self, out: PathLike, format: str = "tum", name: str = "synthetic", progress: bool = False) -> Path:
        """Render every frame to disk.

        ``format="tum"``: ``out/rgb/<t>.png``, ``out/depth/<t>.png`` (16-bit, 5000 per metre),
        ``rgb.txt``, ``depth.txt``, ``groundtruth.txt`` (camera-to-world), ``intrinsics.txt``
        and ``synthetic.json``; returns ``out`` (a :class:`~slam3r_datasets.TumSource` path).

        ``format="sintel"``: ``out/training/final/<name>/frame_0001.png``,
        ``out/training/camdata_left/<name>/frame_0001.cam``, ``out/training/depth/<name>/frame_0001.dpt``
        (float32 z-depth); returns the image folder (a :class:`~slam3r_datasets.SintelSource` path).
        """
        if format not in FORMATS:
            raise SourceError(f"synthetic: format must be one of {', '.join(FORMATS)}, got {format!r}")
        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SourceError(f"cannot create output folder {out}: {e.strerror or e}") from None
        return self._write_tum(out, progress) if format == "tum" else self._write_sintel(out, name, progress)

    def _frames_iter(self, progress: bool) -> Iterator[int]:
        rng = range(self.frames)
        if progress:
            try:
                from tqdm import tqdm

                return iter(tqdm(rng, unit="frame", desc="synth"))
            except ImportError:  # pragma: no cover
                pass
        return iter(rng)

    def _write_tum(self, out: Path, progress: bool) -> Path:
        import cv2

        (out / "rgb").mkdir(exist_ok=True)
        (out / "depth").mkdir(exist_ok=True)
        rgb_lines = ["# color images", f"# synthetic seed {self.scene.seed}", "# timestamp filename"]
        depth_lines = ["# depth maps", f"# synthetic seed {self.scene.seed}", "# timestamp filename"]
        stamps = []
        for i in self._frames_iter(progress):
            ts = self.timestamp(i)
            tsn = f"{ts:.6f}"
            rgb, depth = self.render(i)
            raw = np.clip(np.rint(depth.astype(np.float64) * TUM_DEPTH_SCALE), 0, 65535).astype(np.uint16)
            _imwrite(out / "rgb" / f"{tsn}.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            _imwrite(out / "depth" / f"{tsn}.png", raw)
            rgb_lines.append(f"{tsn} rgb/{tsn}.png")
            depth_lines.append(f"{tsn} depth/{tsn}.png")
            stamps.append(float(tsn))
        (out / "rgb.txt").write_text("\n".join(rgb_lines) + "\n", encoding="utf-8")
        (out / "depth.txt").write_text("\n".join(depth_lines) + "\n", encoding="utf-8")
        gt = ("# ground truth trajectory (camera-to-world, OpenCV camera axes)\n"
              f"# synthetic seed {self.scene.seed}\n# timestamp tx ty tz qx qy qz qw\n"
              + format_tum(stamps, self.poses()))
        (out / "groundtruth.txt").write_text(gt, encoding="utf-8")
        fx, fy, cx, cy = format_intrinsics(self.K)  # type: ignore[misc]
        (out / "intrinsics.txt").write_text(f"# fx fy cx cy (pixels)\n{fx!r} {fy!r} {cx!r} {cy!r}\n", encoding="utf-8")
        (out / "synthetic.json").write_text(json.dumps(self.describe(), indent=2) + "\n", encoding="utf-8")
        return out

    def _write_sintel(self, out: Path, name: str, progress: bool) -> Path:
        import cv2

        from .sintel import c2w_to_extrinsics, write_cam, write_dpt

        img_dir = out / "training" / "final" / name
        cam_dir = out / "training" / "camdata_left" / name
        dpt_dir = out / "training" / "depth" / name
        for d in (img_dir, cam_dir, dpt_dir):
            d.mkdir(parents=True, exist_ok=True)
        for i in self._frames_iter(progress):
            stem = f"frame_{i + 1:04d}"
            rgb, depth = self.render(i)
            _imwrite(img_dir / f"{stem}.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            write_cam(cam_dir / f"{stem}.cam", self.K, c2w_to_extrinsics(self.pose(i)))
            write_dpt(dpt_dir / f"{stem}.dpt", depth)
        (out / f"synthetic_{name}.json").write_text(json.dumps(self.describe(), indent=2) + "\n", encoding="utf-8")
        return img_dir


def _imwrite(path: Path, img: np.ndarray) -> None:
    import cv2

    ok, buf = cv2.imencode(path.suffix, img)
    if not ok:  # pragma: no cover
        raise SourceError(f"cannot encode {path}")
    path.write_bytes(buf.tobytes())


def write_sequence(out: PathLike, format: str = "tum", seed: int = 0, frames: Optional[int] = None, dynamic: bool = False,
                   width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT, name: str = "synthetic",
                   progress: bool = False, **kwargs: Any) -> Path:
    """Render a synthetic sequence to ``out`` (see :meth:`SyntheticSequence.write`); returns the path to read."""
    seq = SyntheticSequence(seed=seed, frames=frames, width=width, height=height, dynamic=dynamic, **kwargs)
    return seq.write(out, format=format, name=name, progress=progress)


# ----------------------------------------------------------------------------- source
class SyntheticSource(FrameSource):
    """Renders a :class:`SyntheticSequence` on the fly: float depth (exact, or with sensor noise), exact GT
    poses and intrinsics.

    Args:
        seed, frames, dynamic, width, height, intrinsics, fps, speed, scene, laps, noise: as
            :class:`SyntheticSequence`.
        first, stride, max_frames: frame selection over the ``frames`` rendered positions.
    """

    kind = "synthetic"
    has_depth = True
    has_gt = True

    def __init__(self, seed: int = 0, frames: Optional[int] = None, dynamic: bool = False, width: int = DEFAULT_WIDTH,
                 height: int = DEFAULT_HEIGHT, intrinsics: Optional[Union[Sequence[float], np.ndarray]] = None,
                 first: int = 0, stride: int = 1, max_frames: Optional[int] = None, fps: float = DEFAULT_FPS,
                 speed: Optional[float] = None, scene: Union[None, str, SyntheticScene] = None,
                 laps: Optional[int] = None, noise: Union[None, str, dict, SensorNoise] = None) -> None:
        super().__init__()
        self.sequence = SyntheticSequence(seed=seed, frames=frames, width=width, height=height, dynamic=dynamic,
                                          fps=fps, speed=speed, intrinsics=intrinsics, scene=scene, laps=laps,
                                          noise=noise)
        seq = self.sequence
        extra = "" if seq.scene.kind == "room" else f"-{seq.scene.kind}"
        extra += f"-{seq.laps}laps" if seq.laps is not None else ""
        extra += f"-{seq.noise.name}" if seq.noise is not None else ""
        self.name = f"synthetic:seed{seq.scene.seed}{'-dynamic' if dynamic else ''}{extra}"
        self.idx = select_frames(seq.frames, first, stride, max_frames, "synthetic",
                                 f"only {seq.frames} frame(s) are rendered")

    @property
    def scene(self) -> SyntheticScene:
        return self.sequence.scene

    def __len__(self) -> int:
        return len(self.idx)

    def _iter_raw(self) -> Iterator[Union[Frame, BadFrameError]]:
        for k, i in enumerate(self.idx):
            yield self.sequence.frame(i, index=k)

    def info(self) -> dict[str, Any]:
        d = super().info()
        desc = self.sequence.describe()
        desc.pop("shapes", None)
        desc["frames_rendered"] = desc.pop("frames")
        d.update({"type": self.kind, **desc})
        return d
