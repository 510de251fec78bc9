"""A complete minimal slam3r plugin (see README, "Writing a plugin").

Installed as its own distribution, it is found through the ``slam3r.plugins``
entry point and adds:

* a config section ``path_length`` with one option (validated by pydantic),
* an export (``path_length.json`` in the run folder) and a metric: the camera's path length.

It keeps no copy of any pose: the path is measured on the core's trajectory store
(``context.trajectory``), which holds every frame's *current* pose -- after a loop closure or a
relocalisation moved past frames -- in metres where the world's scale is known.
"""
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slam3r_app import hookimpl


class PathLengthOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_step: float = Field(0.0, ge=0, description="ignore camera steps shorter than this (metres)")


def path_length(context) -> tuple[float, int]:
    """``(length, frames)``: the path through the tracked frames' current poses (lost frames left out)."""
    traj = context.trajectory
    tracked = np.array([status != "lost" for status in traj.statuses()], dtype=bool)
    positions = traj.metric_poses()[tracked, :3, 3]  # [N, 3], corrected, metres where the scale is known
    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    min_step = context.options("path_length").min_step
    return float(steps[steps >= min_step].sum()), int(len(traj))


@hookimpl
def slam3r_config_sections():
    return {"path_length": PathLengthOptions}


@hookimpl
def slam3r_export(result, context):
    length, frames = path_length(context)
    path = context.out.write_json("path_length.json", {"path_length": length, "frames": frames})
    return {"path_length": str(path)}


@hookimpl
def slam3r_evaluate(result, context):
    return {"path_length": path_length(context)[0]}
