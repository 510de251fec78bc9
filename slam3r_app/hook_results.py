"""What each hook may return: a plugin that returns something else is switched off by name.

:func:`check` returns None when a hook's result is acceptable, otherwise a short
sentence saying what came back and what was expected (the plugin host adds the
plugin's name and the hook's).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

from pydantic import BaseModel


def _type_name(value: Any) -> str:
    return type(value).__name__


def _keyframe_decision(value: Any) -> Optional[str]:
    from .types import KeyframeDecision

    if isinstance(value, KeyframeDecision):
        return None
    return f"returned a {_type_name(value)} ({value!r:.60}); expected a slam3r_app.KeyframeDecision or None"


def _export(value: Any) -> Optional[str]:
    if not isinstance(value, dict):
        return f"returned a {_type_name(value)}; expected a dict {{label: path}} of the files written, or None"
    for k, v in value.items():
        if not isinstance(k, str):
            return f"returned a dict with the key {k!r} ({_type_name(k)}); labels must be strings"
        if not isinstance(v, (str, os.PathLike)):
            return f"returned {{{k!r}: {_type_name(v)}}}; each value must be the path (str) of a file written"
    return None


def _evaluate(value: Any) -> Optional[str]:
    if not isinstance(value, dict):
        return f"returned a {_type_name(value)}; expected a dict of metrics (JSON values), or None"
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        return f"returned a dict with the key {bad[0]!r} ({_type_name(bad[0])}); metric names must be strings"
    return None


def _config_sections(value: Any) -> Optional[str]:
    if not isinstance(value, dict):
        return f"returned a {_type_name(value)}; expected a dict {{section: pydantic model class}}, or None"
    for k, v in value.items():
        if not isinstance(k, str):
            return f"returned a dict with the key {k!r}; section names must be strings"
        if not (isinstance(v, type) and issubclass(v, BaseModel)):
            return f"returned {{{k!r}: {v!r:.60}}}; each value must be a pydantic BaseModel class"
    return None


def _source(value: Any) -> Optional[str]:
    from .sources import FrameSource

    if isinstance(value, FrameSource):
        return None
    return f"returned a {_type_name(value)}; expected a slam3r_app.FrameSource or None"


def _frontend(value: Any) -> Optional[str]:
    from .frontend import Frontend

    if isinstance(value, Frontend):
        return None
    return f"returned a {_type_name(value)}; expected a slam3r_app.Frontend or None"


def _corrections(value: Any) -> Optional[str]:
    from .types import PoseUpdate

    items = value if isinstance(value, (list, tuple)) else [value]
    for u in items:
        if not isinstance(u, PoseUpdate):
            return (f"returned a {_type_name(u)} ({u!r:.60}); expected a slam3r_app.PoseUpdate, a list of them, "
                    f"or None")
    return None


CHECKS: dict[str, Callable[[Any], Optional[str]]] = {
    "slam3r_propose_corrections": _corrections,
    "slam3r_refine_trajectory": _corrections,
    "slam3r_keyframe_decision": _keyframe_decision,
    "slam3r_export": _export,
    "slam3r_evaluate": _evaluate,
    "slam3r_config_sections": _config_sections,
    "slam3r_make_source": _source,
    "slam3r_make_frontend": _frontend,
}


def check(hook_name: str, value: Any) -> Optional[str]:
    """None if ``value`` is an acceptable result of ``hook_name`` (None always is), else what is wrong."""
    if value is None:
        return None
    fn = CHECKS.get(hook_name)
    return fn(value) if fn is not None else None
