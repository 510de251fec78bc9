"""Run-time context handed to every hook."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Protocol

from pydantic import BaseModel

from .errors import ConfigError
from .keyframe_store import KeyframeStore
from .place_hints import PlaceHints
from .services import SharedServices
from .trajectory_store import TrajectoryStore

if TYPE_CHECKING:  # pragma: no cover
    from .config import LoadedConfig
    from .frontend import Frontend
    from .run_folder import RunFolder


class HookCaller(Protocol):
    """What the run context exposes of the plugin host (:class:`slam3r_app.plugin_host.PluginHost`)."""

    def call(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call a hook on every plugin that implements it: ``[(plugin name, result), ...]``."""
        ...


class RunControl:
    """Requests from outside the loop (viewer buttons, keyboard, signals); thread-safe.

    The loop checks these between frames: ``stop`` ends the run (outputs are
    written), ``pause`` holds the loop, ``reset`` clears the frontend and the map,
    ``save`` writes all outputs now and goes on. While paused, the loop still
    honours ``reset``, ``save`` and ``stop`` at once: :meth:`wait_while_paused`
    returns as soon as one of them (or ``resume``) is asked for.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._reset = threading.Event()
        self._save = threading.Event()
        self._wake = threading.Event()  # something for a paused loop to do
        self.stop_reason = ""

    def request_stop(self, reason: str = "stop requested") -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
        self._stop.set()
        self._running.set()  # a paused loop must wake up to stop
        self._wake.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()
        self._wake.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def wait_while_paused(self, timeout: Optional[float] = None) -> None:
        """Block while paused, at most ``timeout`` s; returns early on resume, stop, reset or save.

        The caller then looks at the requests (``take_reset`` / ``take_save`` / ``stop_requested``).
        """
        if self.paused and self._wake.wait(timeout):
            self._wake.clear()  # before the caller takes the requests: none is missed

    def request_reset(self) -> None:
        self._reset.set()
        self._wake.set()

    def take_reset(self) -> bool:
        if self._reset.is_set():
            self._reset.clear()
            return True
        return False

    def request_save(self) -> None:
        self._save.set()
        self._wake.set()

    def take_save(self) -> bool:
        if self._save.is_set():
            self._save.clear()
            return True
        return False


@dataclass
class RunContext:
    """Everything a plugin may need during a run.

    Attributes:
        config: the loaded config (``config.run`` core sections, ``config.where(key)``
            for messages).
        out: the run folder.
        host: the plugin host (call other hooks, list plugins).
        frontend: the frontend, once created.
        source_info: the source's ``info()`` dict.
        state: a plugin's private scratch space (``state["_fusion_state"]`` ...); what plugins share
            goes through typed services (the stores, hooks), not keys here.
        control: stop / pause / reset / save requests.
        saving_now: True while export hooks run for a mid-run "save now".
        trajectory: the app-owned trajectory (every frame's current, corrected pose).
        keyframes: the app-owned keyframe store (bounded per-keyframe payloads).
        services: what plugins share (the live mesh and its version, the point map, the viewer's
            address, the loop's fps and drops): :class:`slam3r_app.services.SharedServices`.
        places: the newest place retrieval (keyframes that look like the current place), published
            by place recognition, read by the frontend's KV-cache policy.
    """

    config: "LoadedConfig"
    out: "RunFolder"
    host: HookCaller
    frontend: Optional["Frontend"] = None
    source_info: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    control: RunControl = field(default_factory=RunControl)
    saving_now: bool = False
    trajectory: TrajectoryStore = field(default_factory=TrajectoryStore)
    keyframes: KeyframeStore = field(default_factory=KeyframeStore)
    services: SharedServices = field(default_factory=SharedServices)
    places: PlaceHints = field(default_factory=PlaceHints)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("slam3r"))

    def options(self, section: str) -> BaseModel:
        """The validated options of a plugin section (``context.options("fusion")``)."""
        try:
            return self.config.plugin_options[section]
        except KeyError:
            raise ConfigError(
                f"no options registered for section '{section}' (does its plugin implement slam3r_config_sections?)"
            ) from None
