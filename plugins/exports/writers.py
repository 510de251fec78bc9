"""Write the requested formats of one :class:`~.scene.ExportScene` into an export folder."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from .options import ExportOptions
from .scene import ExportScene
from .tracks import TrackBuilder

log = logging.getLogger("slam3r.exports")


def write_formats(scene: ExportScene, root: Path, formats: list[str], opts: ExportOptions,
                  tracks: Optional[TrackBuilder] = None) -> dict[str, str]:
    """Write ``formats`` (in the order depth, colmap, nerfstudio, glb) into ``root``; returns ``{label: path}``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    if "depth" in formats:
        from .depth import write_depth_index

        written.update(write_depth_index(scene, root))
    if "colmap" in formats:
        from .colmap import write_colmap

        written.update(write_colmap(scene, root, tracks))
    if "nerfstudio" in formats:
        from .nerfstudio import write_nerfstudio

        written.update(write_nerfstudio(scene, root))
    if "glb" in formats:
        from .glb import write_glb

        written.update(write_glb(scene, root, opts.glb_geometry, opts.glb_max_cameras))
    n_img = sum(1 for f in scene.frames if f.image)
    n_obs = tracks.count if tracks is not None else 0
    log.info("exports (%s) in %s: %d frames (%d with images), %d points%s, %s%s", ", ".join(formats), root,
             len(scene.frames), n_img, 0 if scene.points is None else len(scene.points),
             f" from {scene.points_from}" if scene.points_from else "", scene.units,
             f", {n_obs} track observations" if "colmap" in formats else "")
    return written
