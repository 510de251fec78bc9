"""STream3R: DINOv2 patch tokens -> alternating frame/global attention -> camera + DPT heads.

``STream3R()`` is the released architecture (1.19 B parameters; the official checkpoint loads
with ``strict=True``); smaller models come from constructor arguments (see
:class:`~stream3r.config.STream3RConfig`).

Outputs (dict), for images ``[B, S, 3, H, W]`` in [0, 1]:

* ``pose_enc``          ``[B, S, 9]``: translation, quaternion (xyzw), fov_h, fov_w of the
  world-to-camera transform (OpenCV axes; the first frame is the world frame);
* ``depth``             ``[B, S, H, W, 1]`` (up to scale), ``depth_conf`` ``[B, S, H, W]``;
* ``world_points``      ``[B, S, H, W, 3]`` in the first frame's camera frame,
  ``world_points_conf`` ``[B, S, H, W]``.
"""
from __future__ import annotations

import contextlib
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .aggregator import Aggregator
from .config import STream3RConfig
from .heads.camera import CameraHead
from .heads.dpt import DPTHead
from .layers.attention import attention
from .masks import batch_mask, check_mode

HEADS = ("camera", "depth", "point")


def set_compile(mode: Optional[str] = "default") -> None:
    """Compile the static-shape parts of every STream3R (transformer blocks around their attention
    call, DPT heads) with ``torch.compile`` (``mode``: "default", "max-autotune-no-cudagraphs", ...);
    ``None`` goes back to eager.  Process-wide; the first frames of each resolution compile."""
    from .heads.dpt import set_dpt_compile
    from .layers.block import set_block_compile

    set_block_compile(mode)
    set_dpt_compile(mode)
OUTPUT_KEYS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")


def check_images(images: Any, patch_size: int = 14, check_values: bool = True, what: str = "images") -> Tensor:
    """Validate an image tensor and return it as ``[B, S, 3, H, W]``.

    Accepts ``[S, 3, H, W]`` (one sequence) or ``[B, S, 3, H, W]``; float dtype, values in
    [0, 1] (checked when ``check_values``: this reads the tensor, a host sync on GPU), H and W
    multiples of ``patch_size``.  Raises ValueError naming the problem.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() == 4:
        images = images.unsqueeze(0)
    elif images.dim() != 5:
        raise ValueError(f"{what} must have shape [S, 3, H, W] or [B, S, 3, H, W], got {tuple(images.shape)} "
                         f"(rank {images.dim()})")
    if images.shape[2] != 3:
        raise ValueError(f"{what} must have 3 channels (RGB) in dim -3, got shape {tuple(images.shape)}")
    if not images.dtype.is_floating_point:
        raise ValueError(f"{what} have integer dtype {images.dtype}; pass floats in [0, 1] "
                         "(e.g. x.float() / 255, or use stream3r.preprocess_image)")
    H, W = images.shape[-2:]
    if H % patch_size or W % patch_size or H < patch_size or W < patch_size:
        raise ValueError(f"{what}: height {H} and width {W} must be positive multiples of the patch size "
                         f"{patch_size} (use stream3r.preprocess_image)")
    if images.shape[0] == 0 or images.shape[1] == 0:
        raise ValueError(f"{what}: empty batch or sequence, shape {tuple(images.shape)}")
    if check_values:
        lo, hi = torch.aminmax(images.detach())
        lo, hi = float(lo), float(hi)
        if not (lo >= -1e-4 and hi <= 1 + 1e-4):  # also catches NaN
            raise ValueError(f"{what} values must lie in [0, 1], got min {lo:.4g} max {hi:.4g} "
                             "(0-255 images: divide by 255)")
    return images


def _check_heads(heads: Optional[Iterable[str]]) -> Tuple[str, ...]:
    if heads is None:
        return HEADS
    heads = tuple(heads)
    bad = [h for h in heads if h not in HEADS]
    if bad:
        raise ValueError(f"unknown heads {bad}; choose from {HEADS}")
    return heads


def _move_cast(module: nn.Module, device: Union[str, torch.device, None], dtype: Optional[torch.dtype],
               keep: Sequence[Any] = ()) -> None:
    """Move ``module``'s parameters and buffers to ``device`` and cast the floating ones to ``dtype``,
    one tensor at a time; those in or under ``keep`` (modules or parameters) are moved and cast to
    float32 instead.  ``None`` leaves the device / dtype as it is."""
    kept = set()
    for k in keep:
        kept |= {id(t) for t in (k.parameters() if isinstance(k, nn.Module) else [k])}
        if isinstance(k, nn.Module):
            kept |= {id(t) for t in k.buffers()}

    def convert(t: Tensor, float32: bool) -> Tensor:
        want = torch.float32 if float32 else dtype
        kw: Dict[str, Any] = {}
        if device is not None:
            kw["device"] = device
        if want is not None and t.is_floating_point():
            kw["dtype"] = want
        return t.to(**kw) if kw else t

    for m in module.modules():
        for p in m.parameters(recurse=False):
            p.data = convert(p.data, id(p) in kept)  # (as nn.Module._apply does)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = convert(b, id(b) in kept)


def _heads_outside_autocast(device: torch.device):
    """``torch.autocast(enabled=False)`` when autocast is on for ``device`` (else a no-op context)."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


_MATMUL_MODULES = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def _non_matmul_tensors(module: nn.Module) -> list:
    """Parameters and buffers of ``module`` that do not belong to a linear / convolution layer
    (norms, LayerScale gammas, tokens, embeddings): what stays float32 in the mixed recipe."""
    out: list = []
    for m in module.modules():
        if isinstance(m, _MATMUL_MODULES):
            continue
        out += list(m.parameters(recurse=False))
        out += [b for b in m.buffers(recurse=False) if b is not None]
    return out


class STream3R(nn.Module):
    """The STream3R network.  ``STream3R(config=None, **overrides)``.

    Args:
        config: a :class:`STream3RConfig` or a dict; None = the released architecture.
        **overrides: config fields (``embed_dim=64, depth=2, patch_embed="conv", ...``).
    """

    def __init__(self, config: Union[STream3RConfig, Mapping[str, Any], None] = None, **overrides: Any) -> None:
        super().__init__()
        if config is None:
            cfg = STream3RConfig(**overrides)
        elif isinstance(config, STream3RConfig):
            cfg = STream3RConfig.from_dict(config.to_dict(), overrides) if overrides else config
        else:
            cfg = STream3RConfig.from_dict(config, overrides)
        self.config = cfg
        dino_depth, dino_heads = cfg.dinov2_sizes()
        self.aggregator = Aggregator(
            img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
            num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, num_register_tokens=cfg.num_register_tokens,
            patch_embed="conv" if cfg.patch_embed == "conv" else "dinov2", dinov2_depth=dino_depth,
            dinov2_num_heads=dino_heads, rope_freq=cfg.rope_freq,
        )
        dim2 = 2 * cfg.embed_dim
        self.camera_head = CameraHead(dim2, cfg.camera_trunk_depth, cfg.camera_num_heads, cfg.camera_mlp_ratio,
                                      iterations=cfg.camera_iterations)
        dpt = dict(patch_size=cfg.patch_size, features=cfg.dpt_features, out_channels=cfg.dpt_out_channels,
                   intermediate_layer_idx=cfg.dpt_intermediate_layers)
        self.point_head = DPTHead(dim2, output_dim=4, activation="inv_log", conf_activation="expp1", **dpt)
        self.depth_head = DPTHead(dim2, output_dim=2, activation="exp", conf_activation="expp1", **dpt)

    # ------------------------------------------------------------------ properties
    @property
    def image_size(self) -> int:
        return self.config.img_size

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    # ------------------------------------------------------------------ precision
    def to_inference(self, device: Union[str, torch.device, None] = None, dtype: Optional[torch.dtype] = None,
                     heads_dtype: Union[str, torch.dtype, Mapping[str, torch.dtype], None] = "auto",
                     mixed: bool = True) -> "STream3R":
        """Move to ``device`` and set the precision recipe; puts the model in eval mode.

        Args:
            device: target device (None: stay).
            dtype: the aggregator's compute dtype (None: leave it).  ``torch.float32`` is the
                exact reference.  A half dtype (``torch.float16``: the app's accelerator default;
                ``torch.bfloat16``) with ``mixed=True`` gives the mixed-precision recipe below.
            heads_dtype: ``"auto"`` (default): the camera head in ``dtype`` (mixed like the
                aggregator; its output layers float32); the two DPT heads in ``dtype`` when it is
                float16 (mixed: float32 norm and last 1x1 convolution), in float32 otherwise
                (bfloat16's 7 mantissa bits in the DPT convolutions alone exceed autocast's depth
                error; upstream runs its heads in a float32 autocast region, i.e. TF32
                convolutions under torch's default ``cudnn.allow_tf32``).  A dtype sets all three
                heads; a mapping ``{"camera": ..., "depth": ..., "point": ...}`` each head
                (missing ones: float32); None leaves them as they are.
            mixed: with a half dtype, keep everything but the linear / convolution weights in
                float32 (see below); False casts every tensor of the part (the earlier fast path).

        The mixed recipe (``mixed=True``, half ``dtype``): only the weights and biases of the
        linear and convolution layers are half.  Norms, LayerScale gammas, special tokens, the
        positional embedding and the ImageNet normalisation stay float32, and so does the
        residual stream that flows through them: each norm is computed in float32 and rounded
        once into the next matmul's half input; matmuls and attention run on half inputs with
        float32 accumulation; the layers whose output is added to the stream (attention ``proj``,
        MLP ``fc2``) write float32; the KV cache holds half keys / values.  This is what autocast
        does to float32 weights (upstream's half-precision recipe), without casting weights at
        every call.  With float16 (10 mantissa bits against bfloat16's 7) the error against
        float32 is 0.11x (pose) / 0.19x (depth) upstream's bf16 autocast on synthetic full-size
        weights (H200; ``tests/test_stream3r_precision.py``, ``benchmarks/precision_bench.py``); float16's
        range ends at 65504 (the residual stream, norms and DPT heads, where large values live,
        are float32); bfloat16 has float32's range and autocast's accuracy.

        ``mixed=False`` with a half dtype casts the whole part (residual stream and norms too):
        2.5-4x the error of autocast, ~1 ms a frame faster (the previous default).  Half heads keep float32 output layers either
        way (camera: token norms, pose modulation, pose branch and the pose accumulation; DPT:
        the last 1x1 convolution and the activations), so every output is float32.

        On CUDA the DPT heads use the channels_last memory format (faster cuDNN kernels).  Each
        tensor is moved and cast in one step (``tensor.to(device, dtype)``), so the device never
        holds a float32 copy of a half part (peak = the final size plus one tensor), and float32
        tensors are never rounded through the half dtype."""
        def half(dt: Optional[torch.dtype]) -> bool:
            return dt is not None and dt != torch.float32

        if isinstance(heads_dtype, str):
            if heads_dtype != "auto":
                raise ValueError(f"heads_dtype must be a dtype, a mapping, None or 'auto', got {heads_dtype!r}")
            cdt = dtype if dtype is not None else self.compute_dtype
            # the DPT heads need >= 10 mantissa bits (float16; TF32 convolutions in float32) to stay
            # at autocast's depth error: with bfloat16 they run in float32
            dpt = cdt if cdt == torch.float16 else torch.float32
            heads_dtype = {"camera": cdt, "depth": dpt, "point": dpt}
        if isinstance(heads_dtype, Mapping):
            bad = sorted(set(heads_dtype) - set(HEADS))
            if bad:
                raise ValueError(f"heads_dtype: unknown heads {bad}; choose from {HEADS}")
            per_head = {h: heads_dtype.get(h, torch.float32) for h in HEADS}
        else:
            per_head = {h: heads_dtype for h in HEADS}
        _move_cast(self.aggregator, device, dtype,
                   keep=_non_matmul_tensors(self.aggregator) if mixed and half(dtype) else ())
        for name, head in (("camera", self.camera_head), ("point", self.point_head), ("depth", self.depth_head)):
            hdt = per_head[name]
            keep: list = []
            if half(hdt):
                keep = self.camera_head.output_layers() if name == "camera" else [head.scratch.output_conv2[2]]
                if mixed:
                    keep = keep + _non_matmul_tensors(head)
            _move_cast(head, device, hdt, keep=keep)
        _move_cast(self, device, None)  # anything left outside the three parts
        dev = self.aggregator.camera_token.device
        fmt = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
        for head in (self.point_head, self.depth_head):
            head.to(memory_format=fmt)
        return self.eval()

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype of the aggregator's matmuls, attention and KV cache (its linear weights')."""
        return self.aggregator.frame_blocks[0].attn.qkv.weight.dtype

    @property
    def precision(self) -> str:
        """The recipe the weights are in: "float32"; "mixed-float16" / "mixed-bfloat16" (half linear
        weights, float32 norms and residual stream); "float16" / "bfloat16" (everything half in the
        aggregator); see :meth:`to_inference`."""
        mm = self.compute_dtype
        name = str(mm).replace("torch.", "")
        return name if mm == self.aggregator.camera_token.dtype else f"mixed-{name}"

    def _head_dtype(self) -> torch.dtype:
        """Input dtype of the heads (their weights' dtype; output layers may be float32)."""
        return self.depth_head.norm.weight.dtype

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor, mode: str = "causal", window_size: int = 5,
                heads: Optional[Sequence[str]] = None, check_values: bool = True) -> Dict[str, Tensor]:
        """Batch inference over whole sequences.

        Args:
            images: ``[S, 3, H, W]`` or ``[B, S, 3, H, W]`` floats in [0, 1]; H, W multiples of 14.
            mode: "full" (bidirectional), "causal" (frame i attends 0..i) or "window" (frame i
                attends frame 0 and frames max(1, i - window_size + 1) .. i).
            window_size: window length for mode "window" (>= 1).
            heads: subset of ("camera", "depth", "point") to run (default all).
            check_values: verify the [0, 1] range (reads the tensor).
        Returns:
            dict with ``pose_enc, depth, depth_conf, world_points, world_points_conf`` (those of
            the requested heads); see the module docstring for shapes.
        """
        check_mode(mode, window_size)
        heads = _check_heads(heads)
        x = check_images(images, self.patch_size, check_values)
        B, S, _, H, W = x.shape
        P = self.aggregator.tokens_per_frame(H, W)
        agg_mask = batch_mask(S, P, mode, window_size, device=x.device)
        cam_mask = batch_mask(S, 1, mode, window_size, device=x.device)
        agg_attend = None if agg_mask is None else (lambda i: partial(attention, mask=agg_mask))
        cam_attend = None if cam_mask is None else (lambda it, i: partial(attention, mask=cam_mask))
        return self.predict(x, starts_stream=True, aggregator_attend=agg_attend, camera_attend=cam_attend, heads=heads)

    def predict(
        self,
        images: Tensor,
        starts_stream: bool,
        aggregator_attend: Optional[Callable] = None,
        camera_attend: Optional[Callable] = None,
        heads: Sequence[str] = HEADS,
    ) -> Dict[str, Tensor]:
        """Low-level forward used by :meth:`forward` and :class:`~stream3r.session.StreamSession`.

        ``images`` ``[B, S, 3, H, W]`` (validated); ``aggregator_attend(layer)`` and
        ``camera_attend(iteration, layer)`` supply the cross-frame attention (masks or caches;
        None = full attention among these frames).
        """
        B, S, _, H, W = images.shape
        cfg = self.config
        keep = set()
        if "depth" in heads or "point" in heads:
            keep |= set(cfg.dpt_intermediate_layers)
        if "camera" in heads:
            keep.add(cfg.depth - 1)
        feats = self.aggregator(images, starts_stream=starts_stream, global_attend=aggregator_attend, keep_layers=keep)
        out: Dict[str, Tensor] = {}
        hdt = self._head_dtype()
        # Under a caller's autocast (upstream's half-precision recipe) the heads run outside it, in
        # their own dtypes, as upstream's heads do inside their float32 autocast region.
        with _heads_outside_autocast(images.device):
            if "camera" in heads:
                cam_tokens = feats[cfg.depth - 1][:, :, 0]
                out["pose_enc"] = self.camera_head(cam_tokens, attend=camera_attend)
            need_dense = "depth" in heads or "point" in heads
            dense = {i: feats[i].to(hdt) for i in cfg.dpt_intermediate_layers} if need_dense else {}
            psi = self.aggregator.patch_start_idx
            if "depth" in heads:
                out["depth"], out["depth_conf"] = self.depth_head(dense, psi, H, W)
            if "point" in heads:
                out["world_points"], out["world_points_conf"] = self.point_head(dense, psi, H, W)
        return out

    # ------------------------------------------------------------------ io
    def save_pretrained(self, directory: Union[str, Path]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (float32 unless the model is not) to ``directory``."""
        from .checkpoint import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, name_or_path: Union[str, Path] = "yslan/STream3R",
                        config_overrides: Optional[Mapping[str, Any]] = None,
                        device: Union[str, torch.device, None] = None, dtype: Optional[torch.dtype] = None,
                        **kwargs: Any) -> "STream3R":
        """Load weights (and config.json when present); see :func:`stream3r.checkpoint.load_pretrained`."""
        from .checkpoint import load_pretrained

        return load_pretrained(cls, name_or_path, config_overrides=config_overrides, device=device, dtype=dtype, **kwargs)
