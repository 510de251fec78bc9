"""stream3r: a faithful, checkpoint-compatible STream3R (causal 3D reconstruction transformer)
with a lean KV-cached streaming session.

Quick start::

    import torch
    from stream3r import STream3R, StreamSession, preprocess_image, frame_predictions_to_source

    model = STream3R.from_pretrained("yslan/STream3R").eval()      # or a local model.safetensors
    stream3r.precision.prepare(model, "cuda")   # mixed float16 (default on CUDA); float32 on "cpu"
    session = StreamSession(model, mode="causal")
    for rgb in frames:                                               # uint8 [H, W, 3]
        image, geom = preprocess_image(rgb)                          # [3, 392, 518] for 640x480
        # (mode="eval": upstream's evaluation loader, [3, 378, 518])
        pred = session.forward_stream(image)                         # this frame's predictions
        out = frame_predictions_to_source(pred, geom)                # pose, K, depth at source res
"""
from . import precision, synthetic  # noqa: E402  (recipes and their measurement; synthetic weights)
from .checkpoint import CheckpointError, load_pretrained, read_state_dict, save_pretrained
from .config import STream3RConfig
from .geometry import (
                       depth_to_cam_points,
                       depth_to_world_points,
                       extri_intri_to_pose_encoding,
                       frame_predictions_to_source,
                       pose_encoding_to_cam_to_world,
                       pose_encoding_to_extri_intri,
                       quat_to_rotmat,
                       rotmat_to_quat,
                       se3_inverse,
)
from .layers.attention import attention_backend, flash_attn_available, get_attention_backend, set_attention_backend
from .masks import batch_mask, frame_visibility
from .model import HEADS, OUTPUT_KEYS, STream3R, check_images, set_compile
from .preprocess import ImageGeometry, load_and_preprocess_images, preprocess_image
from .session import KVStore, StreamSession

__all__ = [
    "precision", "synthetic",
    "STream3R", "STream3RConfig", "StreamSession", "KVStore", "HEADS", "OUTPUT_KEYS", "check_images",
    "CheckpointError", "load_pretrained", "read_state_dict", "save_pretrained",
    "ImageGeometry", "preprocess_image", "load_and_preprocess_images",
    "pose_encoding_to_extri_intri", "extri_intri_to_pose_encoding", "pose_encoding_to_cam_to_world",
    "quat_to_rotmat", "rotmat_to_quat", "se3_inverse", "depth_to_cam_points", "depth_to_world_points",
    "frame_predictions_to_source", "batch_mask", "frame_visibility",
    "set_compile", "set_attention_backend", "get_attention_backend", "attention_backend", "flash_attn_available",
]
__version__ = "0.1.0"
