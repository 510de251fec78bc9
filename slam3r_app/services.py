"""What plugins share during a run: typed services on ``context.services`` (not keys in ``context.state``).

One :class:`SharedServices` per run. Each field has one writer (named below); any plugin may read
it. A plugin's private state stays its own object (``context.state["_fusion_state"]`` and the
like are private to the plugin that made them: no other plugin reads them).

Poses, the world's scale and keyframe payloads are not here: they are the core's stores
(``context.trajectory``, ``context.keyframes``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

#: ``() -> (vertices [N, 3] float32, faces [M, 3] int32, colours [N, 3] uint8 or None)`` or None
MeshFn = Callable[[], Optional[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]]
#: ``() -> (xyz [M, 3] float64, rgb [M, 3] float64 in 0..1)``
PointsFn = Callable[[], tuple[np.ndarray, np.ndarray]]


@dataclass
class SharedServices:
    """The run's shared services (``context.services``).

    Attributes:
        mesh: the current TSDF mesh in the store's (frontend's) units, so that it lines up
            with ``context.trajectory`` poses; set by the ``fusion`` plugin while it is on
            (one marching-cubes pass a call). None: no mesh is offered.
        map_version: bumped by ``fusion`` each time the map is replaced whole (a rebuild at
            corrected poses): a reader that caches the mesh re-reads it when this changes.
        points: the point map at the current (corrected) poses, in metres where the world's
            scale is known; set by the ``pointcloud`` plugin while it is on.
        viewer_url: the live viewer's address; set by the ``viewer`` plugin.
        fps: frames per second of the frame loop (smoothed); set by the core each frame.
        dropped: frames a live source threw away so far; set by the core each frame.
        after_outputs: callables the frame loop runs once every output is written, in its own
            thread (the viewer kept open after the run); a signal ends them.
    """

    mesh: Optional[MeshFn] = None
    map_version: int = 0
    points: Optional[PointsFn] = None
    viewer_url: Optional[str] = None
    fps: float = 0.0
    dropped: int = 0
    after_outputs: list[Callable[[], Any]] = field(default_factory=list)
