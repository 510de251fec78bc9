"""The STream3R frontend (``frontend: stream3r``): a causal transformer, one frame at a time.

Each frame is preprocessed as upstream does (``model.preprocess``: ``crop``, the demo loader:
width ``model.image_size``, height a multiple of 14, centre crop; ``pad``; or ``eval``, the
evaluation loader of the paper's numbers: 640x480 -> 518x378, LANCZOS, no crop), fed to a
:class:`stream3r.StreamSession` (KV cache, causal or window attention), and the
predictions are mapped back to the source image: camera-to-world pose (OpenCV axes,
the first frame is the world origin), intrinsics in source pixels, depth,
confidence and world points resized to the source resolution. Everything leaves
the GPU at once; no history is kept on the device.

STream3R's depth and translation are up to an unknown scale
(``depth_is_metric=False``); the fusion backend estimates the metric scale from
sensor depth when the source has it.

Fast path (the default): on CUDA the model runs in mixed float16 (``model.dtype: auto``,
:func:`stream3r.precision.prepare`): float16 matmuls, convolutions, attention and KV cache with
float32 accumulation, a float32 residual stream and norms, float32 output layers (its error
against float32 is a fraction of upstream's bf16 autocast; ``model.dtype: bfloat16`` gives the
same recipe in bfloat16 with float32 DPT heads, at autocast's accuracy with float32's range;
``float32`` is exact).  The session replays CUDA graphs, and only the camera and depth heads
run: the world
points are the depth unprojected with the predicted camera (on the GPU, before the
copy to the host), with the depth confidence as their confidence.  This skips the
point-map head (~2 ms a frame on an H100); VGGT-style models' depth + camera
unprojection is at least as accurate as their point-map head.  The dense maps are
resampled to the source grid on the GPU (a gather) and copied into fresh pinned host
buffers with one synchronisation a frame; with ``source.prefetch`` the next frames are
decoded and preprocessed (into pinned memory) in a background thread while the GPU works.
The CUDA caching allocator is started with ``expandable_segments:True`` unless
``PYTORCH_CUDA_ALLOC_CONF`` is set (the growing KV cache fragments it otherwise).

KV-cache budget (``model.cache_frames``, docs/kv_cache.md): the session never holds more frames
than the budget (``auto``: what fits in half the free device memory after the first frame, at most
:data:`AUTO_CACHE_FRAMES_MAX`; logged at the first frame).  When full, frame 0, the most recent kept
frames and up to ``model.cache_relevant`` keyframes that place recognition retrieved for the current
place (``context.places``) stay; an evicted keyframe whose place comes back is fed again from its
JPEG-compressed model input (the best-ranked missing one, one extra model step per retrieval).  ``stats()`` reports the
budget, the current and largest cache size, evictions and re-admissions (``summary.json`` ->
``frontend_stats``).
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from typing import Any, Optional

from slam3r_app.config import ModelConfig
from slam3r_app.errors import FrontendError
from slam3r_app.frontend import Frontend
from slam3r_app.hookspecs import hookimpl
from slam3r_app.types import Estimate, Frame

log = logging.getLogger("slam3r.stream3r")
#: ``model.cache_frames: auto`` never exceeds this: the step's time grows by ~0.3 ms per cached frame
#: on an H100 (benchmarks/NOTES.md), so 32 frames keep the model step inside a 30 FPS frame
AUTO_CACHE_FRAMES_MAX = 32
#: ``auto``: the share of the free device memory (after the model and the first frame) the cache may take
AUTO_CACHE_MEMORY_FRACTION = 0.5
JPEG_QUALITY = 95
#: frontend names this plugin makes (the config check reports any other name before the run)
FRONTENDS = ("stream3r",)

NO_CHECKPOINT_HELP = (
    "The STream3R weights (about 5 GB, Hugging Face repo 'yslan/STream3R', file model.safetensors) "
    "could not be loaded from '{ckpt}': {reason}\n"
    "What to do:\n"
    "  * online: let it download once (unset HF_HUB_OFFLINE);\n"
    "  * offline: on a machine with internet access run `hf download yslan/STream3R model.safetensors "
    "config.json --local-dir STream3R`, copy the folder here and pass it with "
    "--set model.checkpoint=/path/to/STream3R (or the model.safetensors file itself);\n"
    "  * without weights: --set frontend=rgbd (classical RGB-D tracking, needs depth), "
    "or --set model.random_weights=true (random network, for testing only)."
)


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; checks that an explicit CUDA device exists."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FrontendError(f"model.device is '{name}' but CUDA is not available (use model.device: cpu or auto)")
    return name


def resolve_dtype(name: str, device: str) -> "Any":
    """``auto`` -> float16 on CUDA (the mixed-precision fast path, see :func:`prepare_model`),
    float32 elsewhere."""
    import torch

    if name == "auto":
        from stream3r.precision import default_dtype

        return default_dtype("cuda" if device.startswith("cuda") else "cpu")
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if dt != torch.float32 and not device.startswith("cuda"):
        raise FrontendError(f"model.dtype '{name}' needs a CUDA device (model.device is '{device}'); use float32")
    return dt


def apply_tf32(on: bool) -> None:
    """``model.tf32``: TF32 for CUDA float32 matmuls and cuDNN convolutions, process-wide (upstream's
    evaluation sets ``torch.backends.cuda.matmul.allow_tf32 = True``; cuDNN's is on by default)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = bool(on)
    torch.backends.cudnn.allow_tf32 = bool(on)
    log.info("TF32 for float32 matmuls and convolutions: %s", "on" if on else "off")


def prepare_cuda_allocator(device: str) -> None:
    """Use expandable segments in the CUDA caching allocator (the growing causal KV cache
    fragments the default one: reserved memory far above allocated), unless the user set
    ``PYTORCH_CUDA_ALLOC_CONF`` or CUDA is already initialised (then it is too late)."""
    import torch

    if not device.startswith("cuda") or "PYTORCH_CUDA_ALLOC_CONF" in os.environ:
        return
    if torch.cuda.is_initialized():
        return
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"


def load_model(cfg: ModelConfig, device: str, dtype: Any) -> Any:
    """Build STream3R from ``model.checkpoint`` (or random weights) on ``device`` in ``dtype``
    (``to_inference``: heads in ``dtype`` too, with float32 output layers)."""
    import torch

    from stream3r import STream3R

    if cfg.random_weights:
        torch.manual_seed(0)
        try:
            model = STream3R(**cfg.arch)
        except TypeError as e:
            raise FrontendError(f"model.arch: {e}") from None
        log.warning("STream3R with RANDOM weights (model.random_weights: true): outputs are meaningless")
    else:
        if not cfg.checkpoint:
            raise FrontendError(NO_CHECKPOINT_HELP.format(ckpt=cfg.checkpoint, reason="model.checkpoint is empty"))
        try:
            model = STream3R.from_pretrained(cfg.checkpoint, **({"config_overrides": cfg.arch} if cfg.arch else {}))
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            reason = getattr(e, "reason", None) or str(e)  # WeightsUnavailable: the cause; the help says what to do
            raise FrontendError(NO_CHECKPOINT_HELP.format(ckpt=cfg.checkpoint, reason=reason)) from None
    return prepare_model(model, device, dtype)


def prepare_model(model: Any, device: str, dtype: Any) -> Any:
    """Move ``model`` to ``device`` in the precision recipe of ``dtype``
    (:func:`stream3r.precision.prepare`: float32 exact, a half dtype the mixed recipe)."""
    if hasattr(model, "to_inference"):
        from stream3r.precision import prepare

        return prepare(model, device, dtype)
    return model.to(device=device, dtype=dtype).eval()  # pragma: no cover - foreign model objects


class Stream3rFrontend(Frontend):
    """STream3R behind the :class:`~slam3r_app.frontend.Frontend` interface.

    Args:
        cfg: the ``model:`` config section.
        model: an already built model (API / tests); else built from ``cfg``.
    """

    name = "stream3r"
    needs_depth = False
    metric = False

    def __init__(self, cfg: ModelConfig, model: Optional[Any] = None, places: Optional[Any] = None) -> None:
        import torch

        from stream3r import StreamSession

        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self._cuda = self.device.startswith("cuda")
        prepare_cuda_allocator(self.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        if self._cuda and cfg.tf32 is not None:
            apply_tf32(cfg.tf32)
        self.model = model if model is not None else load_model(cfg, self.device, self.dtype)
        # camera + depth only: world points are unprojected from them (see the module docstring)
        budget = cfg.cache_frames if isinstance(cfg.cache_frames, int) else None
        self.session = StreamSession(self.model, mode=cfg.mode, window_size=cfg.window_size,
                                     max_frames=cfg.max_frames, grow_frames=cfg.grow_frames,
                                     heads=("camera", "depth"), cache_frames=budget)
        self.places = places  # PlaceHints (context.places) or None
        self._budget_source = ("config" if budget is not None else
                               "auto (set at the first frame)" if cfg.cache_frames == "auto" else "none (unbounded)")
        if budget is not None:
            log.info("KV-cache budget: %d frames (model.cache_frames)", budget)
        elif cfg.cache_frames is None:
            log.info("KV-cache budget: none (model.cache_frames: null): the cache grows with every kept frame")
        self._init_cache_state()
        self._torch = torch
        self._frames = 0
        self._last_geometry: Optional[Any] = None
        self._prepared: dict[int, tuple[Any, Any]] = {}  # frame index -> (image, geometry), from prepare()
        self._prepared_lock = threading.Lock()

    def _init_cache_state(self) -> None:
        self._sid: dict[int, int] = {}  # frame index -> the session's stream position, for kept frames
        self._inputs: "OrderedDict[int, bytes]" = OrderedDict()  # frame index -> JPEG of its model input
        self._inputs_bytes = 0
        self._inputs_dropped = 0
        self._pending: Optional[tuple[int, int, Any]] = None  # (index, stream position, image) until kept
        self._cache_max = 0
        self._readmitted = 0
        self._readmit_seen: tuple[int, set[int]] = (-1, set())  # (hint revision, indices fed for it)
        self._auto_pending = self.cfg.cache_frames == "auto"

    # ------------------------------------------------------------------ KV-cache budget
    def _resolve_auto_budget(self) -> None:
        """``model.cache_frames: auto``: once the first frame sized the cache, the frames that fit in
        :data:`AUTO_CACHE_MEMORY_FRACTION` of the free memory, at most :data:`AUTO_CACHE_FRAMES_MAX`."""
        self._auto_pending = False
        s = self.session
        per = s._agg.bytes_per_frame() + s._cam.bytes_per_frame()
        if per <= 0:
            return
        torch = self._torch
        if self._cuda:
            free, _ = torch.cuda.mem_get_info(torch.device(self.device))
            where = f"free on {torch.cuda.get_device_name(torch.device(self.device))}"
        else:
            free = _host_available_bytes()
            where = "available host memory"
        free += s.cache_bytes  # what the cache already holds is the budget's too
        n = max(2, min(AUTO_CACHE_FRAMES_MAX, int(AUTO_CACHE_MEMORY_FRACTION * free // per)))
        if s.mode == "window" and n >= 1 + s.window_size:
            n = max(n, 1 + s.window_size)
        try:
            s.set_cache_frames(n)
        except ValueError as e:  # window ring already holding frames: leave it
            log.warning("KV-cache budget: %s", e)
            return
        self._budget_source = (f"auto: {per / 2**20:.3g} MB a frame, {free / 2**30:.1f} GB {where}, "
                               f"{AUTO_CACHE_MEMORY_FRACTION:g} of it, at most {AUTO_CACHE_FRAMES_MAX}")
        log.info("KV-cache budget: %d frames (%s)", n, self._budget_source)

    def _settle_pending(self) -> None:
        """The previous frame was not forgotten: it stays in the cache (remember where, and its input)."""
        if self._pending is None:
            return
        index, sid, image = self._pending
        self._pending = None
        self._sid[index] = sid
        if self.session.cache_frames is None or self.session.mode != "causal" or self.cfg.cache_inputs_mb <= 0:
            return
        import cv2
        import numpy as np

        hwc = (image.clamp(0, 1).mul(255).round().to(self._torch.uint8).permute(1, 2, 0).contiguous().numpy())
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(hwc[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:  # pragma: no cover
            return
        data = buf.tobytes()
        self._inputs[index] = data
        self._inputs_bytes += len(data)
        cap = self.cfg.cache_inputs_mb * 2**20
        while self._inputs_bytes > cap and len(self._inputs) > 1:
            for k in list(self._inputs)[:-1][::2]:  # every second one, oldest first (as the keyframe store)
                self._inputs_bytes -= len(self._inputs.pop(k))
                self._inputs_dropped += 1

    def _decode_input(self, index: int) -> Any:
        import cv2
        import numpy as np

        bgr = cv2.imdecode(np.frombuffer(self._inputs[index], np.uint8), cv2.IMREAD_COLOR)
        return self._torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).permute(2, 0, 1).float().div(255)

    def _apply_cache_policy(self, frame_index: int) -> None:
        """Before a step: keep the retrieved keyframes of the current place (``context.places``) and
        feed one evicted one again (see the module docstring)."""
        s = self.session
        budget = s.cache_frames
        if budget is None or s.mode != "causal" or self.places is None:
            return
        hint = self.places.latest()
        share = min(self.cfg.cache_relevant, budget - 2)
        if share <= 0 or not hint.keyframes:
            s.retain([])
            return
        cached = set(s.cached_frame_ids)
        relevant = [k for k in hint.keyframes if k in self._sid or k in self._inputs][:share]
        retain = [self._sid[k] for k in relevant if self._sid.get(k, -1) in cached]
        if self._readmit_seen[0] != hint.revision:
            self._readmit_seen = (hint.revision, set())
        missing = [k for k in relevant if self._sid.get(k, -1) not in cached and k in self._inputs]
        if missing and s.num_frames > 0 and not self._readmit_seen[1]:  # one extra step per retrieval at most
            k = missing[0]
            self._readmit_seen[1].add(k)
            s.retain(retain)
            torch = self._torch
            with torch.inference_mode():
                x = self._decode_input(k).to(device=self.device, dtype=torch.float32)[None]
                s.forward_stream(x, heads=("camera",))
            self._sid[k] = s.num_frames - 1
            retain.append(self._sid[k])
            self._readmitted += 1
            self._cache_max = max(self._cache_max, s.num_cached_frames)
            log.debug("frame %d: keyframe %d of the current place fed again into the KV cache", frame_index, k)
        s.retain(retain)

    # ------------------------------------------------------------------ per frame
    @property
    def prepares_ahead(self) -> bool:
        """Preprocess in the prefetch thread only when the model runs on a GPU (on the CPU
        that thread would compete with the model for the same cores)."""
        return not self.device.startswith("cpu")

    def prepare(self, frame: Frame) -> None:
        """Preprocess ``frame`` ahead of :meth:`track` (called from the prefetch thread):
        resize / crop on the CPU and, on CUDA, copy into pinned memory so that the upload
        in ``track`` is asynchronous."""
        prepared = self._preprocess(frame)
        with self._prepared_lock:
            self._prepared[frame.index] = prepared
            while len(self._prepared) > 16:  # frames prepared but never tracked (skipped)
                self._prepared.pop(next(iter(self._prepared)))

    def _preprocess(self, frame: Frame) -> tuple[Any, Any]:
        from stream3r import preprocess_image

        try:
            image, geometry = preprocess_image(frame.rgb, mode=self.cfg.preprocess, size=self.cfg.image_size)
        except ValueError as e:
            raise FrontendError(f"frame {frame.index} ({frame.name}): {e}") from None
        if self._cuda:
            image = image.pin_memory()
        return image, geometry

    def track(self, frame: Frame) -> Estimate:
        import torch

        from stream3r.geometry import dense_to_source, frame_pose_to_source

        with self._prepared_lock:
            prepared = self._prepared.pop(frame.index, None)
        with self.stage("preprocess"):
            image, geometry = prepared if prepared is not None else self._preprocess(frame)
            self._last_geometry = geometry
        with self.stage("cache"):
            self._settle_pending()
            self._apply_cache_policy(frame.index)
        with self.stage("model"), torch.inference_mode():
            # float32 in [0, 1]: the model normalises in float32 and casts to its own dtype
            batch = image.to(device=self.device, dtype=torch.float32, non_blocking=True)[None]
            pred = self._with_world_points(self.session.forward_stream(batch))
            if self._cuda:
                torch.cuda.current_stream().synchronize()  # this stage is the device's time
        self._cache_max = max(self._cache_max, self.session.num_cached_frames)
        self._pending = (frame.index, self.session.num_frames - 1, image)
        if self._auto_pending:
            self._resolve_auto_budget()
        with self.stage("postprocess"):
            with torch.inference_mode():
                # resampled to the source grid on the device; only those maps cross to the host
                maps = dense_to_source(pred, geometry)
                maps["pose_enc"] = pred["pose_enc"][0, -1]
                host = self._to_host(maps)
            pose_enc = host.pop("pose_enc")
            dense = {k: v.numpy() for k, v in host.items()}
            if self.dtype == torch.float16:
                self._check_finite(frame, pose_enc.numpy(), dense["depth"])
            out = frame_pose_to_source(pose_enc, geometry)
            self._frames += 1
            return Estimate(
                index=frame.index,
                timestamp=frame.timestamp,
                pose=out["cam_to_world"],
                intrinsics=out["intrinsics"],
                depth=dense["depth"],
                confidence=dense["depth_conf"],
                points=dense["world_points"],
                depth_is_metric=False,
                extras={"world_points_conf": dense["world_points_conf"]},
            )

    @staticmethod
    def _check_finite(frame: Frame, pose_enc: Any, depth: Any) -> None:
        """float16 ends at 65504: if an activation of these weights ever overflowed, the outputs
        are not finite.  Fail loudly (never hand NaN poses to the backends)."""
        import numpy as np

        if not (np.isfinite(pose_enc).all() and np.isfinite(depth).all()):
            raise FrontendError(
                f"frame {frame.index} ({frame.name}): STream3R's outputs are not finite in float16 "
                "(an activation overflowed float16's range); run with --set model.dtype=bfloat16 "
                "(same mixed-precision recipe, float32's range) or model.dtype=float32")

    @staticmethod
    def _with_world_points(pred: dict) -> dict:
        """World points (and their confidence) from depth and camera, at model resolution."""
        from stream3r import depth_to_world_points, pose_encoding_to_extri_intri

        if "world_points" in pred or "depth" not in pred or "pose_enc" not in pred:
            return pred
        depth = pred["depth"][..., 0].float()  # [B, S, H, W]
        ext, K = pose_encoding_to_extri_intri(pred["pose_enc"].float(), tuple(depth.shape[-2:]))
        out = dict(pred)
        out["world_points"] = depth_to_world_points(depth, ext, K)
        out["world_points_conf"] = pred["depth_conf"]
        return out

    def _to_host(self, tensors: dict) -> dict:
        """Tensors to the CPU with one synchronisation. On CUDA each frame gets fresh pinned
        buffers (recycled by PyTorch's pinned-memory cache once the estimate is dropped), so an
        estimate's arrays are never overwritten by a later frame."""
        if not self._cuda:
            return dict(tensors)
        torch = self._torch
        host = {}
        for k, v in tensors.items():
            buf = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
            buf.copy_(v, non_blocking=True)
            host[k] = buf
        torch.cuda.current_stream().synchronize()
        return host

    def forget_last(self) -> None:
        self.session.drop_last(1)
        self._pending = None

    def reset(self) -> None:
        self.session.clear()
        auto = self._auto_pending
        self._init_cache_state()
        self._auto_pending = auto
        with self._prepared_lock:
            self._prepared.clear()

    def stats(self) -> dict[str, Any]:
        ses = self.session
        s: dict[str, Any] = {"cache_frames": ses.num_cached_frames,
                             "cache_frames_max": self._cache_max,
                             "cache_budget": ses.cache_frames,
                             "cache_budget_source": self._budget_source,
                             "cache_evictions": ses.evictions,
                             "cache_readmissions": self._readmitted,
                             "cache_mb_per_frame": round((ses._agg.bytes_per_frame() + ses._cam.bytes_per_frame())
                                                         / 2**20, 3),
                             "cache_inputs_mb": round(self._inputs_bytes / 2**20, 3),
                             "precision": getattr(self.model, "precision", str(self.dtype)),
                             "preprocess": self.cfg.preprocess}
        if self._last_geometry is not None:
            s["input_hw"] = list(self._last_geometry.model_hw)
        if self._cuda:
            s["gpu_mem_gb"] = self._torch.cuda.max_memory_allocated() / 1e9
        return s

    def close(self) -> None:
        self.session.clear()
        if self._cuda:
            self._torch.cuda.empty_cache()


@hookimpl
def slam3r_make_frontend(name: str, context: Any) -> Optional[Frontend]:
    if name != "stream3r":
        return None
    return Stream3rFrontend(context.config.run.model, places=getattr(context, "places", None))


def _host_available_bytes() -> int:
    """Available host memory (for ``cache_frames: auto`` on the CPU)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
