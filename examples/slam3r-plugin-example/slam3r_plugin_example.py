"""A complete minimal slam3r plugin (see README, "Writing a plugin").

Installed as its own distribution, it is found through the ``slam3r.plugins``
entry point and adds:

* a config section ``path_length`` with one option (validated by pydantic),
* per-frame processing (accumulates the camera path length),
* an export (``path_length.json`` in the run folder) and a metric.
"""
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slam3r_app import hookimpl


class PathLengthOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_step: float = Field(0.0, ge=0, description="ignore camera steps shorter than this (metres)")


_state = {"length": 0.0, "last": None, "frames": 0}


@hookimpl
def slam3r_config_sections():
    return {"path_length": PathLengthOptions}


@hookimpl
def slam3r_run_start(context):
    _state.update(length=0.0, last=None, frames=0)


@hookimpl
def slam3r_process_frame(frame, estimate, context):
    opts = context.options("path_length")
    position = estimate.pose[:3, 3]
    if _state["last"] is not None:
        step = float(np.linalg.norm(position - _state["last"]))
        if step >= opts.min_step:
            _state["length"] += step
    _state["last"] = position.copy()
    _state["frames"] += 1


@hookimpl
def slam3r_export(result, context):
    path = context.out.write_json("path_length.json", {"path_length": _state["length"], "frames": _state["frames"]})
    return {"path_length": str(path)}


@hookimpl
def slam3r_evaluate(result, context):
    return {"path_length": _state["length"]}
