"""Typed, validated run configuration loaded from YAML.

* ``load_config("tum.yaml")`` resolves a bare name against ``configs/`` (the copy
  installed with the package when run outside the checkout).
* A config may ``extends: base.yaml`` (a path relative to itself, or a bare name).
* ``--set key.sub=value`` overrides are parsed as YAML scalars (``5``, ``true``,
  ``null``, ``[1, 2]``) and applied last.
* Every leaf remembers the file (or ``--set``) it came from, so every error names
  the key and the file.
* Top-level sections not defined here belong to plugins (hook
  ``slam3r_config_sections``) and are validated by their models.
"""
from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

CORE_KEYS = ("extends", "name", "source", "frontend", "model", "plugins", "disable", "output", "progress", "log_level",
             "seed", "plugin_timeout_s", "plugin_frame_timeout_s", "plugin_refine_timeout_s", "stop_grace_s",
             "keyframe_store")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(Strict):
    """``source:`` where frames come from. Type-specific keys are ignored by other types."""

    type: str = Field("synthetic", description="tum, bonn, sintel, folder, video, camera, synthetic, rosbag (or a plugin's)")
    path: Optional[str] = Field(None, description="dataset folder / video file / ROS bag; 'sample:NAME' for shipped samples")
    first: int = Field(0, ge=0, description="index of the first frame used")
    max_frames: Optional[int] = Field(None, ge=1, description="stop after this many frames")
    stride: int = Field(1, ge=1, description="use every stride-th frame")
    on_bad_frame: Literal["skip", "stop"] = Field("stop", description="an unreadable frame is skipped or stops the run")
    max_image_pixels: int = Field(50_000_000, ge=1, description="largest image (width x height) a reader "
                                  "decodes; read from the image's header (PNG, JPEG, ROS messages) before decoding: "
                                  "a larger frame is a bad frame (see on_bad_frame)")
    prefetch: int = Field(2, ge=0, le=64, description="frames read and preprocessed ahead in a background thread "
                          "(file sources; 0 = off; live cameras never)")
    intrinsics: Optional[list[float]] = Field(None, min_length=4, max_length=4, description="fx fy cx cy override")
    depth_scale: Optional[float] = Field(None, gt=0, description="raw depth units per metre (TUM/Bonn: 5000; "
                                         "ROS 16UC1: 1000)")
    distortion: Union[Literal["auto", "none"], list[float]] = Field(
        "auto", description="lens distortion of the colour camera, OpenCV order k1 k2 p1 p2 [k3 ...]; frames are "
                            "undistorted once in the reader (colour bilinear, depth nearest) and keep their "
                            "intrinsics. auto: the dataset's own calibration (TUM freiburg1/2, Bonn, a ROS bag's "
                            "CameraInfo) where the intrinsics are the dataset's too, else none; none: pinhole")
    depth_camera: Optional["DepthCameraConfig"] = Field(
        None, description="depth not registered to colour (7-Scenes, a raw Kinect): the depth camera's intrinsics, "
                          "distortion and T_color_depth; the reader registers depth to the colour image")
    max_time_diff: float = Field(0.02, gt=0, description="rgb/depth/GT timestamp association tolerance, seconds")
    sintel_pass: Literal["final", "clean"] = "final"
    camera: Union[int, str, None] = Field(None, description="camera: OpenCV device index or stream URL")
    width: Optional[int] = Field(None, ge=1)
    height: Optional[int] = Field(None, ge=1)
    fps: Optional[float] = Field(None, gt=0)
    pace: Literal["realtime", "fast"] = Field("fast", description="video files: play at their own rate or as fast as possible")
    seed: int = Field(0, description="synthetic: scene seed (also seeds the sensor noise)")
    synthetic_frames: Optional[int] = Field(None, ge=2, description="synthetic: number of frames rendered (default "
                                            "60, or synthetic_laps x the frames of one lap)")
    synthetic_dynamic: bool = Field(False, description="synthetic: add moving objects")
    synthetic_scene: Literal["room", "aliasing"] = Field(
        "room", description="synthetic: room (a room with objects) or aliasing (a row of identical office bays)")
    synthetic_laps: Optional[int] = Field(None, ge=1, description="synthetic: go this many times round the scene's "
                                          "closed loop path (identical poses every lap); null: the room's short sweep")
    synthetic_noise: Union[str, dict[str, Any]] = Field(
        "none", description="synthetic: sensor noise, 'none' or 'kinect' (structured-light depth noise, "
                            "quantisation, dropouts; colour noise), or {preset: kinect, <parameter>: value, ...}")
    synthetic_speed: Optional[float] = Field(None, gt=0, description="synthetic: camera speed, metres per frame (default "
                                             "0.012 on the short sweep, 0.014 on the room laps, 0.02 in the aliasing hall)")
    rosbag_rgb_topic: Optional[str] = Field(None, description="rosbag: colour image topic (Image or CompressedImage); "
                                            "None: the bag's only non-depth image topic")
    rosbag_depth_topic: Optional[str] = Field(None, description="rosbag: depth image topic (16UC1 mm, 32FC1 m); "
                                              "None: colour only")
    rosbag_camera_info_topic: Optional[str] = Field(None, description="rosbag: CameraInfo topic for the intrinsics; "
                                                    "None: <colour topic namespace>/camera_info")


class DepthCameraConfig(Strict):
    """``source.depth_camera:`` a depth camera apart from the colour camera (depth not registered)."""

    intrinsics: list[float] = Field(..., min_length=4, max_length=4, description="fx fy cx cy of the depth camera")
    distortion: Optional[list[float]] = Field(None, description="its distortion, OpenCV order k1 k2 p1 p2 [k3 ...]")
    T_color_depth: Optional[list[list[float]]] = Field(
        None, description="4x4 (or 3x4) rows: depth-camera coordinates -> colour-camera coordinates, metres; "
                          "default identity")


SourceConfig.model_rebuild()


class ModelConfig(Strict):
    """``model:`` the STream3R network used by the stream3r frontend."""

    checkpoint: Optional[str] = Field("yslan/STream3R", description="local file/folder or Hugging Face repo id")
    random_weights: bool = Field(False, description="skip loading (tests, benchmarks): random initialisation")
    arch: dict[str, Any] = Field(default_factory=dict, description="STream3R constructor overrides (small test models)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float16 on CUDA (mixed precision: half matmuls / convolutions / attention / "
        "KV cache, float32 residual stream and norms; error a fraction of upstream's bf16 autocast), float32 on "
        "CPU; bfloat16: the same recipe in bfloat16, DPT heads float32 (autocast's accuracy, float32's range); "
        "float32: exact")
    mode: Literal["causal", "window"] = "causal"
    window_size: int = Field(5, ge=1)
    preprocess: Literal["crop", "pad", "eval"] = Field(
        "crop", description="crop: width image_size, centre crop (VGGT's demo loader, bicubic); pad: longest side, "
        "white padding; eval: upstream's evaluation loader (long side image_size with LANCZOS, then resized, "
        "not cropped, to multiples of 14: 640x480 -> 518x378; what the paper's numbers use)")
    image_size: int = Field(518, ge=14, multiple_of=14,
                            description="model input width (crop) / longest side (pad, eval)")
    tf32: Optional[bool] = Field(
        None, description="CUDA TF32 for float32 matmuls and convolutions (process-wide): null leaves torch's "
        "defaults (matmuls off, cuDNN on); true as upstream's evaluation runs float32; false: exact float32")
    max_frames: Optional[int] = Field(None, ge=1, description="KV cache capacity hint (frames)")
    grow_frames: int = Field(8, ge=1, description="causal KV cache growth step (frames) past max_frames; "
                             "larger = fewer reallocations, more memory held ahead")
    cache_frames: Union[Literal["auto"], int, None] = Field(
        "auto", description="KV-cache budget: the most frames the cache holds, the current one included (>= 2), in "
        "every mode; when full, frame 0, the most recent keyframes and the keyframes retrieved for the current place "
        "stay (docs/kv_cache.md). auto: what fits in half the device's free memory after the first frame, at most "
        "32; null: no bound (the cache grows with every kept frame)")
    cache_relevant: int = Field(
        4, ge=0, description="KV-cache budget: at most this many slots go to keyframes retrieved for the current "
        "place (the loop-closure plugin's place recognition); the rest to the most recent keyframes")
    cache_inputs_mb: float = Field(
        64.0, ge=0, le=65536, description="KV-cache budget: memory for the JPEG-compressed model inputs of kept "
        "frames, so that an evicted keyframe can be fed again when its place comes back (0: never re-admit)")

    @field_validator("cache_frames")
    @classmethod
    def _cache_frames_ok(cls, v: Any) -> Any:
        if isinstance(v, bool) or (isinstance(v, int) and v < 2):
            raise ValueError(f"must be 'auto', null or an integer >= 2 (the anchor frame and the current one), "
                             f"got {v!r}")
        return v


class KeyframeStoreConfig(Strict):
    """``keyframe_store:`` the per-keyframe payload the core keeps (loop closure, relocalisation)."""

    max_side: int = Field(160, ge=16, le=1024, description="longest side of the stored colour / depth thumbnails, px")
    max_memory_mb: float = Field(256.0, gt=0, le=65536, description="budget for all keyframe payloads; past it the "
                                 "dense payload of every second keyframe is dropped")


class RunConfig(Strict):
    """The whole run configuration (core sections)."""

    name: str = "run"
    source: SourceConfig = Field(default_factory=SourceConfig)
    frontend: str = "stream3r"
    model: ModelConfig = Field(default_factory=ModelConfig)
    plugins: list[str] = Field(default_factory=list, description="extra plugin modules or .py files")
    disable: list[str] = Field(default_factory=list, description="plugin names to switch off")
    output: str = Field("runs/{name}-{time}", description="run folder; {name} and {time} are filled in "
                        "(the only fields; {{ and }} for literal braces)")
    progress: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    seed: int = 0
    plugin_timeout_s: Optional[float] = Field(
        60.0, gt=0, le=86400, description="longest a plugin may take in one run-start, run-end, export, "
        "evaluation or reset hook before it is switched off (null: no limit)")
    plugin_frame_timeout_s: Optional[float] = Field(
        30.0, gt=0, le=86400, description="longest a plugin may take in one per-frame hook (keyframe decision, "
        "process frame) before it is switched off (null: no limit)")
    plugin_refine_timeout_s: Optional[float] = Field(
        600.0, gt=0, le=86400, description="longest a plugin may take to refine the whole trajectory when the "
        "stream has ended (slam3r_refine_trajectory: the bundle adjustment) before it is switched off and the "
        "unrefined poses are written (null: no limit)")
    stop_grace_s: float = Field(
        5.0, gt=0, le=3600, description="after the first Ctrl-C / SIGTERM, longest the frame in progress may "
        "take before it is abandoned (a stuck plugin or frontend) and the outputs are written: keep it under "
        "a container runtime's kill delay (docker stop: 10 s)")
    keyframe_store: KeyframeStoreConfig = Field(default_factory=KeyframeStoreConfig)

    @field_validator("output")
    @classmethod
    def _output_template(cls, v: str) -> str:
        return check_template(v)


#: the fields an ``output`` template may name
OUTPUT_FIELDS = ("name", "time")


def check_template(template: str, fields: Iterable[str] = OUTPUT_FIELDS) -> str:
    """``template`` if it names only ``fields`` (``{name}``), with no attribute, index, conversion or
    format spec (``{name.__class__}``, ``{name!r}``, ``{name:>99999}`` are refused); else ValueError."""
    import string

    allowed = tuple(fields)
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"{template!r} is not a valid template ({e}; write {{{{ and }}}} for literal braces)") from None
    for _, name, spec, conv in parts:
        if name is None:
            continue
        if name not in allowed or spec or conv:
            shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"{shown} is not a field of the template: use "
                             f"{', '.join('{' + f + '}' for f in allowed)} (nothing after the name)")
    return template


def fill_template(template: str, **values: str) -> str:
    """:func:`check_template`, then the fields filled in."""
    check_template(template, values)
    return template.format(**values)


@dataclass
class LoadedConfig:
    """A validated config plus where every key came from.

    Attributes:
        run: the core sections.
        sections: raw plugin sections ``{name: dict}`` (validated later by their plugins).
        plugin_options: validated plugin sections ``{name: model instance}``.
        origins: dotted key -> file (or ``--set``) that set it.
        files: the config files read, outermost first.
    """

    run: RunConfig
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    plugin_options: dict[str, BaseModel] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def origin(self, key: str) -> str:
        """The file that set ``key`` (or its nearest parent), ``"defaults"`` if none did."""
        node: Any = self.raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return "defaults"
            node = node[part]
        k = key
        while k:
            if k in self.origins:
                return self.origins[k]
            k = k.rpartition(".")[0]
        below = sorted(o for o in self.origins if o.startswith(key + "."))  # set only through its sub-keys
        if below:
            return self.origins[below[0]]
        return "defaults"

    def where(self, key: str) -> str:
        """``"source.path (set in configs/tum.yaml)"``, or what was typed (``"--set source.path=x"``):
        for error messages."""
        origin = self.origin(key)
        if origin.startswith("--set ") and origin[6:].partition("=")[0] == key:
            return origin
        return f"{key} (set in {origin})"

    def validate_sections(self, models: dict[str, type[BaseModel]], disabled: Iterable[str] = ()) -> None:
        """Validate plugin sections with their models; unknown top-level keys fail.

        Sections named after a disabled plugin are kept as they are (not validated), so that
        ``--set disable=[viewer]`` works with a config that has a ``viewer:`` section.

        Raises:
            ConfigError: listing every problem at once.
        """
        lines = self.section_errors(models, disabled)
        if lines:
            raise ConfigError(format_errors(lines))

    def section_errors(self, models: dict[str, type[BaseModel]], disabled: Iterable[str] = ()) -> list[str]:
        """Every problem of the plugin sections (one line each); valid sections are stored in
        :attr:`plugin_options`."""
        disabled = set(disabled)
        lines: list[str] = []
        known = sorted(set(CORE_KEYS) | set(models))
        for k in self.sections:
            if k in models or k in disabled:
                continue
            hint = _did_you_mean(k, known)
            lines.append(f"{self.origin(k)}: unknown config key '{k}'{hint} (known top-level keys: {', '.join(known)}; "
                         f"a plugin's section is only known while that plugin is enabled)")
        for name, model in models.items():
            data = self.sections.get(name, {}) or {}
            if not isinstance(data, dict):
                lines.append(f"{self.origin(name)}: '{name}' must be a mapping of options, got {data!r}")
                continue
            try:
                self.plugin_options[name] = model.model_validate(data)
            except ValidationError as e:
                lines += validation_lines(e, self, prefix=name, model=model)
        return lines

    def to_dict(self) -> dict[str, Any]:
        """The resolved config (core + plugin sections) as plain data, for the run folder."""
        out = self.run.model_dump(mode="json")
        for name, opts in self.plugin_options.items():
            out[name] = opts.model_dump(mode="json")
        for name, data in self.sections.items():
            out.setdefault(name, data)
        return out


# ----------------------------------------------------------------------------- locating files
def configs_dir() -> Path:
    """The folder holding the shipped configs (checkout's ``configs/`` or the installed copy)."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "configs"
    if checkout.is_dir():
        return checkout
    return Path(str(resources.files("slam3r_app.configs")))


def resolve_config_path(name: str | os.PathLike, relative_to: Optional[Path] = None) -> Path:
    """Find a config file: as given, relative to ``relative_to``, or in :func:`configs_dir`."""
    p = Path(name)
    candidates = []
    for base in ([relative_to] if relative_to else []) + [Path.cwd(), configs_dir()]:
        for cand in (base / p, base / p.with_suffix(".yaml")) if p.suffix == "" else (base / p,):
            candidates.append(cand)
    if p.is_absolute():
        candidates = [p] + ([p.with_suffix(".yaml")] if p.suffix == "" else [])
    for cand in candidates:
        if cand.is_file():
            return cand.resolve()
    shipped = sorted(x.stem for x in configs_dir().glob("*.yaml"))
    raise ConfigError(f"config file not found: {name} (looked in {', '.join(str(c.parent) for c in candidates[:3])}; "
                      f"shipped configs: {', '.join(shipped)})")


# ----------------------------------------------------------------------------- reading YAML safely
#: most values (scalars, lists, mappings) a config may hold once YAML aliases are expanded; a shipped
#: config holds about 150, a big one a few thousand. A "billion laughs" file (nested &anchor / *alias)
#: expands to billions from a few hundred bytes: it is refused before anything walks it.
MAX_YAML_VALUES = 100_000
#: deepest nesting of lists / mappings a config may have (shipped configs: 3)
MAX_YAML_DEPTH = 64
#: largest config file read (bytes)
MAX_YAML_BYTES = 4 << 20


def load_yaml(text: str, where: str, max_values: int = MAX_YAML_VALUES) -> Any:
    """``yaml.safe_load`` with bounds, for every config, ``--set`` value and run folder's config.yaml.

    The document is composed into YAML nodes first (aliases stay shared there, nothing is
    expanded), its size with every alias expanded and its depth are counted without expanding it,
    and only then is it turned into Python values.

    Raises:
        ConfigError: one line naming ``where``: not YAML, nested too deeply, too many values once
            aliases are expanded, a number too long to read.
    """
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(f"{where}: nested too deeply to read (more than {MAX_YAML_DEPTH} levels of lists "
                              f"or mappings)") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: not valid YAML: {_one_line(e)}") from None
        if node is None:
            return None
        values, depth = _expanded_size(node, max_values)
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{where}: nested too deeply ({depth} levels of lists or mappings; at most "
                              f"{MAX_YAML_DEPTH})")
        if values > max_values:
            raise ConfigError(f"{where}: too large once its YAML aliases (*name) are expanded: more than "
                              f"{max_values} values (a config holds a few hundred; an alias bomb?)")
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: not valid YAML: {_one_line(e)}") from None
        except ValueError as e:  # int("9" * 5000): Python's limit on the digits of an integer
            msg = _one_line(e)
            if "digits" in msg:
                msg = "a number is too long (" + msg.split("value has ", 1)[-1].split(";")[0] + \
                    f"; at most {sys.get_int_max_str_digits() if hasattr(sys, 'get_int_max_str_digits') else 4300})"
            raise ConfigError(f"{where}: a value cannot be read: {msg}") from None
        except RecursionError:
            raise ConfigError(f"{where}: nested too deeply to read") from None
    finally:
        loader.dispose()


def _expanded_size(root: Any, cap: int) -> tuple[int, int]:
    """``(values, depth)`` of a YAML node graph as if every alias were expanded (counted with one
    memo per node, never expanded; the count stops growing past ``cap``)."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            kids = _children(node)
            size[key] = min(cap + 1, 1 + sum(size.get(id(k), 0) for k in kids))
            depth[key] = 1 + max((depth.get(id(k), 0) for k in kids), default=0)
            continue
        if key in size or key in on_path:  # shared (an alias) or a recursive alias: counted once
            continue
        on_path.add(key)
        stack.append((node, True))
        for k in _children(node):
            if id(k) not in size:
                stack.append((k, False))
    return size.get(id(root), 0), depth.get(id(root), 0)


def _children(node: Any) -> list[Any]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    return []


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def read_config_text(path: Path) -> str:
    """A config file's text (UTF-8); one-line errors for a file too big, unreadable or not UTF-8."""
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {size} bytes is too large for a config (at most {MAX_YAML_BYTES})")
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                          f"save it as UTF-8") from None


# ----------------------------------------------------------------------------- merging
def _read_yaml(path: Path) -> dict[str, Any]:
    data = load_yaml(read_config_text(path), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys, got {type(data).__name__}")
    return data


def _merge(dst: dict, src: dict, origin: str, origins: dict[str, str], prefix: str = "") -> None:
    for k, v in src.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v, origin, origins, key + ".")
        else:
            dst[k] = copy.deepcopy(v)
            for o in [o for o in origins if o.startswith(key + ".")]:
                del origins[o]
            _mark(v, key, origin, origins)


def _mark(v: Any, key: str, origin: str, origins: dict[str, str]) -> None:
    origins[key] = origin
    if isinstance(v, dict):
        for k2, v2 in v.items():
            _mark(v2, f"{key}.{k2}", origin, origins)


def _load_chain(path: Path, origins: dict[str, str], files: list[str], seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself ({' -> '.join(map(str, seen + (path,)))})")
    data = _read_yaml(path)
    base_name = data.pop("extends", None)
    merged: dict[str, Any] = {}
    if base_name is not None:
        if not isinstance(base_name, str):
            raise ConfigError(f"{path}: extends must be a file name, got {base_name!r}")
        try:
            base_path = resolve_config_path(base_name, relative_to=path.parent)
        except ConfigError as e:
            raise ConfigError(f"{path}: extends: {e}") from None
        merged = _load_chain(base_path, origins, files, seen + (path,))
    files.append(str(path))
    _merge(merged, data, _display(path), origins)
    return merged


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"model.window_size=7"`` -> ``(["model", "window_size"], 7)`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.sub=value")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: bad key {key!r}")
    try:
        shown = text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"
        parsed = load_yaml(value, f"--set {shown!r}") if value.strip() != "" else None
    except ConfigError as e:
        if "not valid YAML" not in str(e):
            raise
        parsed = value
    return key.split("."), parsed


def apply_override(data: dict[str, Any], text: str, origins: dict[str, str]) -> None:
    keys, value = parse_override(text)
    node = data
    for i, k in enumerate(keys[:-1]):
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"--set {text!r}: '{'.'.join(keys[:i + 1])}' is not a section")
        node = nxt
    node[keys[-1]] = value
    _mark(value, ".".join(keys), f"--set {text.strip()}", origins)


def validation_lines(err: ValidationError, cfg: LoadedConfig, prefix: str = "",
                     model: Optional[type[BaseModel]] = None) -> list[str]:
    """One line per pydantic error: ``file: key: message (got value)``; for a key set with
    ``--set``: ``--set key=value: message``. Unknown keys get a "did you mean" when one is close."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        key = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = pydantic_message(e)
        if e["type"] == "extra_forbidden":
            parent, _, leaf = key.rpartition(".")
            fields = _fields_at(model or RunConfig, e["loc"][:-1])
            msg = f"unknown key '{leaf}'" + (f" in '{parent}'" if parent else "") + _did_you_mean(leaf, fields)
        got = e.get("input")
        got_s = "" if e["type"] in ("extra_forbidden", "missing") else f" (got {short_repr(got)})"
        origin = cfg.origin(key)
        if origin.startswith("--set "):
            same = isinstance(got, (str, int, float, bool)) and origin.endswith(f"={got}")
            lines.append(f"{origin}: {msg}{'' if same else got_s}")
        else:
            lines.append(f"{origin}: {key}: {msg}{got_s}")
    return lines


def short_repr(value: Any, limit: int = 120) -> str:
    """``repr`` for a message, bounded (nested and long values are elided, as ``reprlib`` does)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = limit, limit, 8, 8, 3
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def pydantic_message(err: Any) -> str:
    """pydantic's ``msg`` of one error without its ``Value error, `` / ``Assertion failed, `` prefix
    (the text a validator raised is the message meant for users)."""
    msg = str(err.get("msg", "") if isinstance(err, dict) else err)
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model at ``loc`` inside ``model`` (empty when unknown)."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        current = ann
    return list(getattr(current, "model_fields", {}))


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def format_errors(lines: list[str]) -> str:
    """The message of a :class:`ConfigError` listing every problem."""
    return "invalid config:\n  " + "\n  ".join(lines)



def merge_config(
    name: Optional[str | os.PathLike] = None,
    overrides: Optional[list[str]] = None,
    data: Optional[dict[str, Any]] = None,
) -> LoadedConfig:
    """Read and merge the config files, ``data`` and ``overrides`` without validating the core
    sections (``run`` holds the defaults); :func:`core_errors` says what is wrong with them.

    Raises:
        ConfigError: a file is missing or not YAML, ``extends`` loops, an override is malformed.
    """
    origins: dict[str, str] = {}
    files: list[str] = []
    merged: dict[str, Any] = {}
    if name is not None:
        merged = _load_chain(resolve_config_path(name), origins, files)
    if data:
        d = copy.deepcopy(data)
        d.pop("extends", None)
        _merge(merged, d, "<dict>", origins)
    for o in overrides or []:
        apply_override(merged, o, origins)
    sections = {k: v for k, v in merged.items() if k not in CORE_KEYS}
    return LoadedConfig(run=RunConfig(), sections=sections, origins=origins, files=files, raw=merged)


def core_errors(cfg: LoadedConfig) -> list[str]:
    """Validate the core sections of a merged config into ``cfg.run``; one line per problem."""
    core = {k: v for k, v in cfg.raw.items() if k in CORE_KEYS}
    try:
        cfg.run = RunConfig.model_validate(core)
    except ValidationError as e:
        return validation_lines(e, cfg)
    return []


def load_config(
    name: Optional[str | os.PathLike] = None,
    overrides: Optional[list[str]] = None,
    data: Optional[dict[str, Any]] = None,
) -> LoadedConfig:
    """Load, merge and validate the core sections of a config.

    Args:
        name: config file or bare name (``"tum"``, ``"tum.yaml"``); None for defaults.
        overrides: ``["key.sub=value", ...]`` applied last.
        data: a dict used instead of / on top of the file (for tests and the API).

    Raises:
        ConfigError: naming the file and key of every problem of the core sections at once.
        Plugin sections are validated by :meth:`LoadedConfig.validate_sections`, or together
        with the core in one message by :func:`slam3r_app.config_check.load_and_check`.
    """
    cfg = merge_config(name, overrides=overrides, data=data)
    lines = core_errors(cfg)
    if lines:
        raise ConfigError(format_errors(lines))
    return cfg
