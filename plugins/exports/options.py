"""``exports:`` options, shared by the in-run plugin and the offline ``export`` command."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .scene import FORMATS

#: The optional library each format needs (``slam3r[export]`` installs both).
LIBRARIES = {"colmap": "pycolmap", "glb": "trimesh"}


def missing_library(fmt: str) -> str:
    """"" when ``fmt`` can be written here, else the message saying which package to install."""
    import importlib.util

    mod = LIBRARIES.get(fmt)
    if mod and importlib.util.find_spec(mod) is None:
        return f"the {fmt} export needs the '{mod}' package: pip install 'slam3r[export]' (scripts/setup.sh installs it)"
    return ""


class ExportOptions(BaseModel):
    """``exports:`` COLMAP / nerfstudio / GLB / per-frame depth written at the end of the run (see README "Exports")."""

    model_config = ConfigDict(extra="forbid")

    formats: list[Literal["colmap", "nerfstudio", "glb", "depth"]] = Field(
        default_factory=list, description="formats written at the end of the run into the exports folder "
                                          "(colmap, nerfstudio, glb, depth); [] = none, only cameras.json")
    folder: str = Field("exports", description="export folder, relative to the run folder")
    frames: Literal["all", "keyframes"] = Field("all", description="export every frame or keyframes only")
    image_format: Literal["png", "jpg"] = Field("png", description="colour images under images/ (png: lossless)")
    points: Literal["auto", "fusion", "pointcloud", "depth", "none"] = Field(
        "auto", description="3D points: points.ply (fusion), pointcloud.ply, unprojected depth; auto: the first there")
    max_points: int = Field(200_000, ge=1, description="at most this many points (seeded random subset)")
    tracks: bool = Field(True, description="COLMAP tracks from the keyframes' depth (which frames see each point)")
    glb_geometry: Literal["points", "mesh", "both"] = Field("points", description="GLB: the points, mesh.ply, or both")
    glb_max_cameras: int = Field(200, ge=0, description="GLB: at most this many camera frustums")
    cameras_json: bool = Field(True, description="write cameras.json (intrinsics per frame) into the run folder")

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        v = list(dict.fromkeys(v))
        for fmt in v:
            msg = missing_library(fmt)
            if msg:
                raise ValueError(msg)
        return [f for f in FORMATS if f in v]
