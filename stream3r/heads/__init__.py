"""Prediction heads: camera (pose encoding) and DPT (dense depth / world points)."""
from .activations import activate, activate_pose, inverse_log
from .camera import CameraHead
from .dpt import DPTHead, uv_sincos_embedding

__all__ = ["activate", "activate_pose", "inverse_log", "CameraHead", "DPTHead", "uv_sincos_embedding"]
