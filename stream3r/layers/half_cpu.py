"""Linear and convolution layers whose float16 path on the CPU widens to float32.

CPU float16 matmuls and convolutions are slow or unoptimised on most processors (a 3x3 float16
convolution took seconds where float32 takes milliseconds), while the CUDA kernels the float16
recipe is made for multiply float16 inputs exactly and accumulate in float32.  On the CPU these
layers compute exactly that: the float16 input and weights widened to float32 (exact), a float32
GEMM / convolution (float32 accumulation), the result rounded to float16.  Precision tests of the
float16 recipe can so run on a CPU at float32 speed.  Everywhere else (CUDA, any other dtype)
they are the torch layers.  Same parameters and checkpoint names as ``nn.Linear`` / ``nn.Conv2d``
/ ``nn.ConvTranspose2d``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _widen(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float16


_scratch: dict = {}


def _wide_weight(w: Tensor) -> Tensor:
    """``w.float()`` written into one reused float32 buffer (a fresh 4-byte copy of every weight at
    every call costs more in page faults than the GEMM itself).  Valid until the next call: the
    layers use it at once.  Single-threaded use (one model call at a time per process)."""
    n = w.numel()
    key = torch.is_inference_mode_enabled()  # an inference-mode buffer cannot be written outside it
    buf = _scratch.get(key)
    if buf is None or buf.numel() < n:
        buf = _scratch[key] = torch.empty(n, dtype=torch.float32)
    out = buf[:n].view(w.shape)
    out.copy_(w)
    return out


def _wide_bias(layer: nn.Module):
    return None if layer.bias is None else layer.bias.float()


class Linear(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        if _widen(x):
            return F.linear(x.float(), _wide_weight(self.weight), _wide_bias(self)).to(x.dtype)
        return super().forward(x)


class Conv2d(nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        if _widen(x):
            return self._conv_forward(x.float(), _wide_weight(self.weight), _wide_bias(self)).to(x.dtype)
        return super().forward(x)


class ConvTranspose2d(nn.ConvTranspose2d):
    def forward(self, x: Tensor, output_size=None) -> Tensor:
        if _widen(x) and output_size is None:
            return F.conv_transpose2d(x.float(), _wide_weight(self.weight), _wide_bias(self), self.stride, self.padding,
                                      self.output_padding, self.groups, self.dilation).to(x.dtype)
        return super().forward(x, output_size)
