"""A plugin *file* that misbehaves on purpose, as configured under ``misbehave:`` (for subprocess tests).

    plugins: [tests/fake_plugin.py, tests/misbehaving_plugin.py]
    misbehave: {hook: export, action: hang, marker: /tmp/x/entered}

``action``: ``hang`` blocks forever, ``wait`` blocks until the file ``release`` exists (then the hook
returns normally), ``wrong_type`` returns a value of the wrong type for the hook, ``raise`` raises,
``not_json`` (evaluate) returns metrics of which one (a datetime) JSON cannot hold, ``remove_run_folder``
deletes the run folder.
``marker`` (a file) is written when the hook starts misbehaving, so that a test can wait for that
moment instead of guessing it. Per-frame hooks misbehave once, at frame ``at_frame``, or from it on
(``every_frame``).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict

from slam3r_app.hookspecs import hookimpl

WRONG = {
    "keyframe_decision": "yes, a keyframe",
    "export": ["trajectory.txt"],
    "evaluate": 0.5,
    "process_frame": None,
    "run_end": None,
    "run_start": None,
    "refine_trajectory": {"frame 3": "a pose"},
}


class MisbehaveOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hook: Literal["run_start", "keyframe_decision", "process_frame", "refine_trajectory", "run_end", "export",
                  "evaluate"] = "export"
    action: Literal["hang", "wait", "wrong_type", "raise", "not_json", "remove_run_folder", "none"] = "hang"
    marker: Optional[str] = None
    release: Optional[str] = None
    at_frame: int = 0
    every_frame: bool = True


_forever = threading.Event()


def _act(hook: str, context, frame_index: Optional[int] = None):
    opts = context.options("misbehave")
    if opts.hook != hook or opts.action == "none":
        return None
    if frame_index is not None and (frame_index < opts.at_frame or
                                    (not opts.every_frame and frame_index != opts.at_frame)):
        return None
    if opts.marker:
        Path(opts.marker).write_text(f"{hook} {frame_index}\n")
    if opts.action == "hang":
        _forever.wait()
    if opts.action == "wait":
        while not (opts.release and Path(opts.release).exists()):
            _forever.wait(0.01)
        return None
    if opts.action == "raise":
        raise RuntimeError(f"misbehaving in {hook} on purpose")
    if opts.action == "not_json":
        import datetime

        return {"misbehave_ok": 1.5, "misbehave_when": datetime.datetime(2026, 12, 1, 12, 0)}
    if opts.action == "remove_run_folder":
        import shutil

        shutil.rmtree(context.out.path)
        return None
    return WRONG[hook]


@hookimpl
def slam3r_config_sections():
    return {"misbehave": MisbehaveOptions}


@hookimpl
def slam3r_run_start(context):
    return _act("run_start", context)


@hookimpl(tryfirst=True)
def slam3r_keyframe_decision(frame, estimate, context):
    return _act("keyframe_decision", context, frame.index)


@hookimpl(tryfirst=True)
def slam3r_process_frame(frame, estimate, context):
    return _act("process_frame", context, frame.index)


@hookimpl(tryfirst=True)
def slam3r_refine_trajectory(context):
    return _act("refine_trajectory", context)


@hookimpl(tryfirst=True)
def slam3r_run_end(result, context):
    return _act("run_end", context)


@hookimpl(tryfirst=True)
def slam3r_export(result, context):
    return _act("export", context)


@hookimpl(tryfirst=True)
def slam3r_evaluate(result, context):
    return _act("evaluate", context)
