"""Output activations of the heads."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def inverse_log(y: Tensor) -> Tensor:
    """``sign(y) * (exp(|y|) - 1)``: the inverse of ``sign(x) * log(1 + |x|)``."""
    return torch.sign(y) * torch.expm1(torch.abs(y))


def activate(x: Tensor, kind: str) -> Tensor:
    if kind == "linear":
        return x
    if kind == "inv_log":
        return inverse_log(x)
    if kind == "exp":
        return torch.exp(x)
    if kind == "relu":
        return F.relu(x)
    if kind == "expp1":
        return 1 + torch.exp(x)
    raise ValueError(f"unknown activation {kind!r}")


def activate_pose(raw: Tensor, trans_act: str = "linear", quat_act: str = "linear", fov_act: str = "relu") -> Tensor:
    """``[..., 9]`` raw pose -> [translation (3), quaternion xyzw (4), fov_h, fov_w] activations."""
    return torch.cat(
        [activate(raw[..., :3], trans_act), activate(raw[..., 3:7], quat_act), activate(raw[..., 7:], fov_act)], dim=-1
    )
