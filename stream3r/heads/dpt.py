"""DPT dense head (Vision Transformers for Dense Prediction, Ranftl et al. 2021).

Input: four aggregator layer outputs ``[B, S, P, C]`` (``C = 2 * embed_dim``; the patch tokens
start at ``patch_start_idx``).  Each goes through LayerNorm -> 1x1 conv projection -> UV
sinusoidal position embedding -> resampling to 4x, 2x, 1x and 1/2x the ``h x w`` patch grid
(transposed convs, identity, stride-2 conv).  RefineNet-style fusion blocks merge them from the
coarsest up, each upsampling bilinearly (align_corners=True) to the next map's size, the last
one by 2 (8x the patch grid); then an output conv, bilinear upsampling to the image size, the
UV embedding again, and a final conv stack.

Output: ``(values [B, S, H, W, output_dim - 1], confidence [B, S, H, W])`` after the
``activation`` ("inv_log" for world points, "exp" for depth) and ``conf_activation`` ("expp1").

Note: the residual conv units apply ReLU to their input *before* the skip connection, so a unit
computes ``conv2(relu(conv1(relu(x)))) + relu(x)`` (the released model's in-place ReLU).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import triton_fused as _tf
from ..layers.block import norm_to
from ..layers.half_cpu import Conv2d, ConvTranspose2d
from .activations import activate


def resize_bilinear(x: Tensor, size, add: Optional[Tensor] = None) -> Tensor:
    """``F.interpolate(x, size, bilinear, align_corners=True)`` (+ ``add`` ``[C, OH, OW]``); one Triton
    kernel for channels_last CUDA maps (see :mod:`stream3r.layers.triton_fused`)."""
    if _tf.upsample_ok(x, add):
        return _tf.upsample_bilinear_nhwc(x, size, add)
    out = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    return out if add is None else out + add.to(out.dtype)


def uv_sincos_embedding(channels: int, height: int, width: int, aspect: float, device=None,
                        omega_0: float = 100.0) -> Tensor:
    """Sinusoidal embedding of a normalised UV grid: ``[channels, height, width]`` float32.

    The grid spans ``x`` in ``+-(aspect / d) * (width - 1) / width`` and ``y`` in
    ``+-(1 / d) * (height - 1) / height`` with ``d = sqrt(aspect**2 + 1)`` (``aspect = W / H`` of the
    image).  The first half of the channels encodes x, the second y, each as
    ``[sin(p * w_k), cos(p * w_k)]`` with ``w_k = omega_0 ** (-k / (channels / 4))``, computed in
    float64 and rounded to float32.
    """
    diag = (aspect**2 + 1.0) ** 0.5
    span_x, span_y = aspect / diag, 1.0 / diag
    xs = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, steps=width,
                        dtype=torch.float32, device=device)
    ys = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, steps=height,
                        dtype=torch.float32, device=device)
    uu, vv = torch.meshgrid(xs, ys, indexing="xy")  # [height, width]
    half = channels // 2
    omega = torch.arange(half // 2, dtype=torch.float64, device=device)
    omega /= half / 2.0
    omega = 1.0 / omega_0**omega

    def sincos(p: Tensor) -> Tensor:
        ang = torch.outer(p.reshape(-1).double(), omega)
        return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1).float()

    emb = torch.cat([sincos(uu), sincos(vv)], dim=-1).view(height, width, channels)
    return emb.permute(2, 0, 1).contiguous()


class ResidualConvUnit(nn.Module):
    """``conv2(relu(conv1(relu(x)))) + relu(x)`` (3x3 convs with bias)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = Conv2d(features, features, 3, padding=1)
        self.conv2 = Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(x)
        return self.conv2(F.relu(self.conv1(a))) + a


class FeatureFusionBlock(nn.Module):
    """``out_conv(upsample(rcu2(x + rcu1(skip))))``; ``refinenet4`` has no ``resConfUnit1``."""

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        self.out_conv = Conv2d(features, features, 1)
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.has_residual = has_residual
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: Tensor, skip: Optional[Tensor] = None, size: Optional[Tuple[int, int]] = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            size = (int(x.shape[-2] * 2), int(x.shape[-1] * 2))
        x = resize_bilinear(x, size)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """See module docstring.  Checkpoint names: ``norm``, ``projects.0-3``,
    ``resize_layers.{0,1,3}``, ``scratch.layer{1-4}_rn``, ``scratch.refinenet{1-4}``,
    ``scratch.output_conv1``, ``scratch.output_conv2.{0,2}``."""

    def __init__(
        self,
        dim_in: int,
        patch_size: int = 14,
        output_dim: int = 4,
        activation: str = "inv_log",
        conf_activation: str = "expp1",
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        intermediate_layer_idx: Sequence[int] = (4, 11, 17, 23),
        frames_chunk_size: int = 8,
    ) -> None:
        super().__init__()
        oc = list(out_channels)
        if len(oc) != 4 or len(intermediate_layer_idx) != 4:
            raise ValueError("DPT head needs exactly 4 out_channels and 4 intermediate layers")
        self.patch_size = patch_size
        self.activation = activation
        self.conf_activation = conf_activation
        self.intermediate_layer_idx = list(intermediate_layer_idx)
        self.frames_chunk_size = frames_chunk_size
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList([Conv2d(dim_in, c, 1) for c in oc])
        self.resize_layers = nn.ModuleList(
            [
                ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),
                ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),
                nn.Identity(),
                Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        scratch = nn.Module()
        for i, c in enumerate(oc):
            setattr(scratch, f"layer{i + 1}_rn", Conv2d(c, features, 3, padding=1, bias=False))
        scratch.refinenet1 = FeatureFusionBlock(features)
        scratch.refinenet2 = FeatureFusionBlock(features)
        scratch.refinenet3 = FeatureFusionBlock(features)
        scratch.refinenet4 = FeatureFusionBlock(features, has_residual=False)
        scratch.output_conv1 = Conv2d(features, features // 2, 3, padding=1)
        scratch.output_conv2 = nn.Sequential(
            Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(inplace=True), Conv2d(32, output_dim, 1)
        )
        self.scratch = scratch
        self._embed_cache: Dict[Tuple, Tensor] = {}

    def _uv_embed(self, channels: int, h: int, w: int, aspect: float, device, dtype=torch.float32) -> Tensor:
        """Cached ``0.1 * uv_sincos_embedding`` ``[channels, h, w]`` (computed in float32, stored in
        ``dtype``, channels innermost in memory like the channels_last maps it is added to)."""
        key = (channels, h, w, aspect, device, dtype)
        emb = self._embed_cache.get(key)
        if emb is None:
            emb = (uv_sincos_embedding(channels, h, w, aspect, device=device) * 0.1).to(dtype)
            emb = emb.permute(1, 2, 0).contiguous().permute(2, 0, 1)
            if len(self._embed_cache) > 32:
                self._embed_cache.clear()
            self._embed_cache[key] = emb
        return emb

    def _embeddings(self, H: int, W: int, device) -> List[Tensor]:
        """UV embeddings for the four projections and for the full-resolution output (each in
        the dtype of the layer that adds it)."""
        ph, pw = H // self.patch_size, W // self.patch_size
        aspect = W / H
        embs = [self._uv_embed(p.out_channels, ph, pw, aspect, device, p.weight.dtype) for p in self.projects]
        embs.append(self._uv_embed(self.scratch.output_conv1.out_channels, ph * self.patch_size,
                                   pw * self.patch_size, aspect, device, self.scratch.output_conv2[0].weight.dtype))
        return embs

    def forward(self, layers: Dict[int, Tensor], patch_start_idx: int, height: int, width: int) -> Tuple[Tensor, Tensor]:
        """layers: ``{layer_index: [B, S, P, C]}`` (must hold ``intermediate_layer_idx``)."""
        feats = [layers[i] for i in self.intermediate_layer_idx]
        B, S = feats[0].shape[:2]
        N = B * S
        flat = [f.reshape(N, *f.shape[2:])[:, patch_start_idx:] for f in feats]
        embs = self._embeddings(height, width, flat[0].device)
        step = self.frames_chunk_size or N
        vals, confs = [], []
        for start in range(0, N, step):
            v, c = _DPT_IMPL["frames"](self, [f[start : start + step] for f in flat], embs, height, width)
            vals.append(v)
            confs.append(c)
        val = vals[0] if len(vals) == 1 else torch.cat(vals)
        conf = confs[0] if len(confs) == 1 else torch.cat(confs)
        return val.view(B, S, *val.shape[1:]), conf.view(B, S, *conf.shape[1:])

    def _forward_frames(self, feats: List[Tensor], embs: List[Tensor], H: int, W: int) -> Tuple[Tensor, Tensor]:
        """feats: four ``[N, h*w, C]`` patch-token maps; embs: from :meth:`_embeddings`."""
        N = feats[0].shape[0]
        ph, pw = H // self.patch_size, W // self.patch_size
        maps = []
        for j, tok in enumerate(feats):
            x = norm_to(self.norm, tok, self.projects[j].weight.dtype)  # float32 norm, rounded once for the conv
            x = x.view(N, ph, pw, x.shape[-1]).permute(0, 3, 1, 2)  # NCHW view of NHWC memory (channels_last)
            x = self.projects[j](x) + embs[j].to(x.dtype)
            maps.append(self.resize_layers[j](x))
        s = self.scratch
        l1, l2, l3, l4 = s.layer1_rn(maps[0]), s.layer2_rn(maps[1]), s.layer3_rn(maps[2]), s.layer4_rn(maps[3])
        out = s.refinenet4(l4, size=l3.shape[2:])
        out = s.refinenet3(out, l3, size=l2.shape[2:])
        out = s.refinenet2(out, l2, size=l1.shape[2:])
        out = s.refinenet1(out, l1)
        out = s.output_conv1(out)
        out = resize_bilinear(out, (ph * self.patch_size, pw * self.patch_size), embs[4].to(out.dtype))
        c2 = s.output_conv2  # conv 3x3, ReLU, conv 1x1; the last conv may be float32 (half heads: float32 outputs)
        out = c2[1](c2[0](out))
        out = c2[2](out.to(c2[2].weight.dtype))
        fmap = out.permute(0, 2, 3, 1)
        return activate(fmap[..., :-1], self.activation), activate(fmap[..., -1], self.conf_activation)


def _dpt_frames(head: DPTHead, feats: List[Tensor], embs: List[Tensor], H: int, W: int) -> Tuple[Tensor, Tensor]:
    return head._forward_frames(feats, embs, H, W)


_DPT_IMPL = {"frames": _dpt_frames}


def set_dpt_compile(mode: Optional[str] = None) -> None:
    """torch.compile the DPT heads' per-frame computation (None: eager)."""
    if mode is None:
        _DPT_IMPL["frames"] = _dpt_frames
        return
    kw = {} if mode == "default" else {"mode": mode}
    _DPT_IMPL["frames"] = torch.compile(_dpt_frames, dynamic=False, **kw)
