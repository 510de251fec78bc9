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
                     heads_dtype: Optional[torch.dtype] = torch.float32) -> "STream3R":
        """Move to ``device``; aggregator in ``dtype`` (e.g. bfloat16); heads in ``heads_dtype``.

        ``heads_dtype`` float32 (default) runs the heads in float32, as the reference does.  A
        half dtype (e.g. ``heads_dtype=dtype``: the fast path, ~7 ms less per frame on an H100)
        runs the camera trunk and the DPT bodies in it, while their output layers stay float32
        (camera: token norms, pose modulation, pose branch and the pose accumulation; DPT: the
        last 1x1 convolution and the activations), so every output is float32 and no
        coordinate is rounded to 8 mantissa bits.  ``None`` leaves the heads as they are.
        On CUDA the DPT heads use the channels_last memory format (faster cuDNN kernels).
        Puts the model in eval mode.

        Each tensor is moved and cast in one step (``tensor.to(device, dtype)``), so the device
        never holds a float32 copy of a half part (peak = the final size plus one tensor), and the
        float32 output layers are never rounded through the half dtype."""
        keep32: list = []
        if heads_dtype is not None and heads_dtype != torch.float32:
            keep32 = self.camera_head.output_layers() + [h.scratch.output_conv2[2] for h in (self.point_head,
                                                                                           self.depth_head)]
        _move_cast(self.aggregator, device, dtype)
        for head in (self.camera_head, self.point_head, self.depth_head):
            _move_cast(head, device, heads_dtype, keep=keep32)
        _move_cast(self, device, None)  # anything left outside the three parts
        dev = self.aggregator.camera_token.device
        fmt = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
        for head in (self.point_head, self.depth_head):
            head.to(memory_format=fmt)
        return self.eval()

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
    def from_pretrained(cls, name_or_path: Union[str, Path] = "yslan/STream3R", config_overrides: Optional[Mapping[str, Any]] = None,
                        device: Union[str, torch.device, None] = None, dtype: Optional[torch.dtype] = None,
                        **kwargs: Any) -> "STream3R":
        """Load weights (and config.json when present); see :func:`stream3r.checkpoint.load_pretrained`."""
        from .checkpoint import load_pretrained

        return load_pretrained(cls, name_or_path, config_overrides=config_overrides, device=device, dtype=dtype, **kwargs)
