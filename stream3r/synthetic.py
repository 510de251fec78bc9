"""Seeded synthetic STream3R weights with a tame initialisation, and a matching image stream.

For precision and speed checks without the real checkpoint (it cannot be downloaded here): the
default configuration gives exactly the official checkpoint's 1403 keys and shapes
(``tests/fixtures/stream3r/checkpoint_keys.tsv``), so every kernel, cast and cache runs at the
released model's size.

"Tame" means the activations behave like a trained network's instead of like PyTorch's default
initialisation (where LayerScale 0.01 and 1e-6 special tokens make most blocks near-identities
and the outputs nearly constant): every layer keeps its input scale, attention logits are O(1),
the residual updates are a sizeable fraction of the stream, and the heads' outputs vary
across pixels and frames.  Rules, by parameter (``fan_in`` = inputs per output):

* Linear / Conv2d weights: ``N(0, 1 / fan_in)`` (ConvTranspose2d with kernel = stride:
  ``fan_in`` = input channels); biases ``N(0, 0.02^2)``;
* LayerNorm weights ``1 + N(0, 0.1^2)``, biases ``N(0, 0.05^2)``;
* LayerScale gammas ``|N(0.2, 0.05^2)|`` in the aggregator and camera trunk, ``|N(0.5, 0.1^2)|``
  in the DINOv2 encoder (trained DINOv2 gammas are larger than the aggregator's);
* camera / register / cls tokens ``N(0, 1)``, positional embedding ``N(0, 0.1^2)``, empty pose
  tokens ``N(0, 0.5^2)``; the unused ``mask_token`` zeros;
* the heads' last layers (DPT ``output_conv2.2``, camera ``pose_branch.fc2``) get ``0.5 / sqrt(fan_in)``
  so that depth = exp(x) and the quaternions stay in a moderate range.

Values are drawn on the CPU from one ``torch.Generator`` per parameter, seeded from ``seed``
and the parameter's name, so the same seed gives bit-identical weights in any process (the
upstream comparison on the GPU loads the same tensors) and in any order.
"""
from __future__ import annotations

import math
import zlib
from typing import TYPE_CHECKING, Any, Dict, Iterator, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .config import STream3RConfig
    from .model import STream3R

ConfigLike = Union["STream3RConfig", Mapping[str, Any], None]

_CONV_TRANSPOSE = ("resize_layers.0.weight", "resize_layers.1.weight")
_LAST_LAYERS = ("scratch.output_conv2.2.weight", "pose_branch.fc2.weight")


def _std_for(name: str, shape: Tuple[int, ...]) -> Tuple[str, float, float]:
    """(kind, mean, std) of the normal distribution that fills parameter ``name``."""
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("mask_token"):
        return "zeros", 0.0, 0.0
    if leaf == "gamma":
        return ("abs", 0.5, 0.1) if ".patch_embed.blocks." in name else ("abs", 0.2, 0.05)
    if name.endswith(("camera_token", "register_token", "register_tokens", "cls_token")):
        return "normal", 0.0, 1.0
    if name.endswith("pos_embed"):
        return "normal", 0.0, 0.1
    if name.endswith("empty_pose_tokens"):
        return "normal", 0.0, 0.5
    is_norm = "norm" in name.rsplit(".", 2)[-2] if name.count(".") >= 1 else False
    if len(shape) == 1:
        if is_norm:
            return ("normal", 1.0, 0.1) if leaf == "weight" else ("normal", 0.0, 0.05)
        return "normal", 0.0, 0.02  # biases
    if name.endswith(_CONV_TRANSPOSE):
        fan_in = shape[0]
    else:
        fan_in = int(math.prod(shape[1:]))
    gain = 0.5 if name.endswith(_LAST_LAYERS) else 1.0
    return "normal", 0.0, gain / math.sqrt(fan_in)


def _seed_for(seed: int, name: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


def synthetic_tensor(name: str, shape: Tuple[int, ...], seed: int = 0) -> Tensor:
    """The float32 CPU tensor that parameter ``name`` gets (see the module docstring)."""
    kind, mean, std = _std_for(name, tuple(shape))
    if kind == "zeros":
        return torch.zeros(shape)
    g = torch.Generator().manual_seed(_seed_for(seed, name))
    t = torch.empty(shape).normal_(mean, std, generator=g)
    return t.abs_() if kind == "abs" else t


def synthetic_shapes(config: ConfigLike = None, **overrides: Any) -> Dict[str, Tuple[int, ...]]:
    """``{name: shape}`` of ``STream3R(config, **overrides).state_dict()`` (built on the meta device)."""
    from .model import STream3R

    with torch.device("meta"):
        model = STream3R(config, **overrides)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def iter_synthetic_state_dict(config: ConfigLike = None, seed: int = 0, **overrides: Any) -> Iterator[Tuple[str, Tensor]]:
    """``(name, float32 tensor)`` pairs in ``state_dict`` order, one tensor at a time."""
    for name, shape in synthetic_shapes(config, **overrides).items():
        yield name, synthetic_tensor(name, shape, seed)


def synthetic_state_dict(config: ConfigLike = None, seed: int = 0, **overrides: Any) -> Dict[str, Tensor]:
    """The whole state dict (float32, CPU; 4.8 GB for the released size)."""
    return dict(iter_synthetic_state_dict(config, seed, **overrides))


def synthetic_model(config: ConfigLike = None, seed: int = 0, **overrides: Any) -> "STream3R":
    """A float32 CPU :class:`~stream3r.model.STream3R` in eval mode holding the synthetic weights
    (built on the meta device and filled tensor by tensor: no default initialisation is run)."""
    from .model import STream3R

    with torch.device("meta"):
        model = STream3R(config, **overrides)
    model.load_state_dict(synthetic_state_dict(model.config, seed), strict=True, assign=True)
    model.aggregator.reset_buffers(device="cpu")
    return model.eval()


def synthetic_frames(n: int, height: int, width: int, seed: int = 0, device: Optional[Any] = None) -> Tensor:
    """A smooth moving image stream ``[n, 3, height, width]`` in [0, 1] (float32).

    Each frame is a sum of a few coloured sinusoidal gratings whose phases drift from frame to
    frame (a camera panning over a textured scene), plus a little seeded noise: consecutive
    frames are related, as in a video, and no pixel is saturated.
    """
    g = torch.Generator().manual_seed(int(seed))
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    waves = 6
    freq = torch.rand(waves, 2, generator=g) * 6 + 1
    phase = torch.rand(waves, generator=g) * 2 * math.pi
    speed = (torch.rand(waves, generator=g) - 0.5) * 0.6
    colour = torch.rand(waves, 3, generator=g) * 0.5 + 0.25
    frames = torch.zeros(n, 3, height, width)
    for i in range(n):
        img = torch.zeros(3, height, width)
        for w in range(waves):
            arg = 2 * math.pi * (freq[w, 0] * xx + freq[w, 1] * yy) + phase[w] + speed[w] * i
            img += colour[w][:, None, None] * torch.sin(arg)[None]
        frames[i] = img
    frames = 0.5 + frames / (2 * waves * 0.75)  # |sum| <= waves * 0.75: inside (0, 1)
    frames = frames + 0.02 * torch.randn(frames.shape, generator=g)
    frames = frames.clamp(0.02, 0.98)
    return frames if device is None else frames.to(device)
