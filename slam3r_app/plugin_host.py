"""Plugin discovery and fault-isolated hook calls.

Plugins come from three places, in this order:

1. built-ins: the ``slam3r.plugins`` entry points of the slam3r distribution itself
   (``slam3r_plugins.*`` backends and ``slam3r_datasets.plugin``); from a checkout
   that is not installed, the same modules by name;
2. installed distributions that declare ``[project.entry-points."slam3r.plugins"]``;
3. modules or ``.py`` files listed under ``plugins:`` in the config.

A plugin is known by its name (entry-point name, or module / file stem). Any of them
can be switched off with ``disable: [name, ...]``. An entry point that fails to
import is skipped with a warning; a plugin listed in the config that fails to
import is a :class:`ConfigError`.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as md
import importlib.util
import logging
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import pluggy

from . import hookspecs
from .errors import ConfigError

log = logging.getLogger("slam3r.plugins")

OWN_DISTRIBUTION = "slam3r"

# Used only when the slam3r distribution is not installed (a bare checkout on sys.path).
FALLBACK_BUILTINS = {
    "datasets": "slam3r_datasets.plugin",
}
FALLBACK_BUILTIN_PACKAGE = "slam3r_plugins"  # exposes BUILTIN_PLUGINS = {name: module}


@dataclass
class PluginInfo:
    name: str
    origin: str  # "built-in", "entry point (dist 1.0)", "config: path"
    module: str
    hooks: list[str] = field(default_factory=list)
    disabled: bool = False
    error: str = ""


class PluginHost:
    """Owns the pluggy manager and calls hooks so that one failing plugin cannot sink a run.

    Args:
        disable: plugin names not to register.
        extra: modules (``pkg.mod``) or files (``path/to/plugin.py``) from the config.
        builtins: load the built-in plugins.
        entry_points: load installed third-party plugins.
        config_file: for messages about ``extra`` (where ``plugins:`` was set).
    """

    def __init__(
        self,
        disable: Iterable[str] = (),
        extra: Iterable[str] = (),
        builtins: bool = True,
        entry_points: bool = True,
        config_file: str = "config",
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.errors: dict[str, str] = {}
        self._impl_seconds: Optional[dict[str, float]] = None  # see timed_calls
        self.disabled = set(disable)
        for name in self.disabled:
            self.pm.set_blocked(name)
        if builtins:
            self._load_builtins()
        if entry_points:
            self._load_entry_points()
        for spec in extra:
            self.load_extra(spec, config_file)
        unknown = self.disabled - set(self.infos)
        if unknown:
            log.warning("disable: no plugin named %s (known: %s)", ", ".join(sorted(unknown)), ", ".join(sorted(self.infos)))

    # ------------------------------------------------------------------ discovery
    def _load_builtins(self) -> None:
        eps = [ep for ep in _entry_points() if _dist_name(ep) == OWN_DISTRIBUTION]
        if eps:
            for ep in eps:
                self._register_entry_point(ep, origin="built-in")
            return
        modules = dict(FALLBACK_BUILTINS)
        try:
            pkg = importlib.import_module(FALLBACK_BUILTIN_PACKAGE)
            modules = {**getattr(pkg, "BUILTIN_PLUGINS", {}), **modules}
        except ImportError as e:  # pragma: no cover - broken checkout
            log.warning("built-in plugins unavailable: %s", e)
        for name, modname in modules.items():
            self._register_module(name, modname, origin="built-in", strict=False)

    def _load_entry_points(self) -> None:
        for ep in _entry_points():
            if _dist_name(ep) == OWN_DISTRIBUTION:
                continue
            dist = _dist_name(ep)
            version = getattr(getattr(ep, "dist", None), "version", "")
            self._register_entry_point(ep, origin=f"entry point ({dist} {version})".replace(" )", ")"))

    def _register_entry_point(self, ep: Any, origin: str) -> None:
        if ep.name in self.disabled:
            self.infos[ep.name] = PluginInfo(ep.name, origin, ep.value, disabled=True)
            return
        if self.pm.has_plugin(ep.name):
            return
        try:
            obj = ep.load()
        except Exception as e:  # a broken third-party plugin must not stop the app
            msg = f"{type(e).__name__}: {e}"
            log.warning("plugin '%s' (%s) could not be loaded and is skipped: %s", ep.name, ep.value, msg)
            self.infos[ep.name] = PluginInfo(ep.name, origin, ep.value, error=msg)
            return
        self._register(ep.name, obj, origin, ep.value)

    def _register_module(self, name: str, modname: str, origin: str, strict: bool) -> None:
        if name in self.disabled:
            self.infos[name] = PluginInfo(name, origin, modname, disabled=True)
            return
        try:
            mod = importlib.import_module(modname)
        except Exception as e:
            if strict:
                raise
            log.warning("plugin '%s' (%s) could not be loaded and is skipped: %s", name, modname, e)
            self.infos[name] = PluginInfo(name, origin, modname, error=str(e))
            return
        self._register(name, mod, origin, modname)

    def load_extra(self, spec: str, config_file: str = "config") -> str:
        """Register a plugin given as ``pkg.module`` or ``path/to/file.py``; returns its name."""
        path = Path(spec)
        if spec.endswith(".py"):
            if not path.is_file():
                raise ConfigError(f"{config_file}: plugins: file not found: {spec}")
            name = path.stem
            if name in self.disabled:
                self.infos[name] = PluginInfo(name, f"config: {spec}", str(path), disabled=True)
                return name
            modname = f"slam3r_user_plugin_{name}"
            try:
                loader_spec = importlib.util.spec_from_file_location(modname, path)
                assert loader_spec is not None and loader_spec.loader is not None
                mod = importlib.util.module_from_spec(loader_spec)
                sys.modules[modname] = mod
                loader_spec.loader.exec_module(mod)
            except Exception as e:
                raise ConfigError(f"{config_file}: plugins: {spec} failed to import: {type(e).__name__}: {e}") from None
            self._register(name, mod, f"config: {spec}", str(path))
            return name
        name = spec.rsplit(".", 1)[-1]
        try:
            self._register_module(name, spec, f"config: {spec}", strict=True)
        except Exception as e:
            raise ConfigError(f"{config_file}: plugins: module {spec!r} failed to import: {type(e).__name__}: {e}") from None
        return name

    def _register(self, name: str, obj: Any, origin: str, module: str) -> None:
        if self.pm.has_plugin(name) or name in self.infos and not self.infos[name].error:
            raise ConfigError(f"two plugins are named '{name}' ({self.infos[name].origin} and {origin}); disable one")
        try:
            self.pm.register(obj, name=name)
        except pluggy.PluginValidationError as e:
            log.warning("plugin '%s' (%s) is invalid and is skipped: %s", name, origin, e)
            self.infos[name] = PluginInfo(name, origin, module, error=str(e))
            return
        hooks = sorted(h.name for h in (self.pm.get_hookcallers(obj) or []))
        self.infos[name] = PluginInfo(name, origin, module, hooks=hooks)

    def register(self, obj: Any, name: str, origin: str = "api") -> None:
        """Register an object or module as a plugin (API use and tests)."""
        self._register(name, obj, origin, getattr(obj, "__name__", type(obj).__name__))

    # ------------------------------------------------------------------ calls
    def _impls(self, hook_name: str) -> list[Any]:
        caller = getattr(self.pm.hook, hook_name)
        return list(reversed(caller.get_hookimpls()))  # pluggy's call order

    def call(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation; returns ``[(plugin_name, result), ...]`` for non-None results.

        An implementation that raises is logged with its plugin's name, recorded in
        :attr:`errors`, and its plugin is switched off for the rest of the run.
        """
        out = []
        for impl in self._impls(hook_name):
            ok, res = self._call_impl(impl, hook_name, kwargs)
            if ok and res is not None:
                out.append((impl.plugin_name, res))
        return out

    def call_first(self, hook_name: str, **kwargs: Any) -> Optional[Any]:
        """Call implementations in order until one returns non-None (for firstresult hooks)."""
        for impl in self._impls(hook_name):
            ok, res = self._call_impl(impl, hook_name, kwargs)
            if ok and res is not None:
                return res
        return None

    def call_first_strict(self, hook_name: str, **kwargs: Any) -> Optional[Any]:
        """Like :meth:`call_first` but errors propagate (factories: a bad source must stop the run)."""
        for impl in self._impls(hook_name):
            res = impl.function(*[kwargs[a] for a in impl.argnames])
            if res is not None:
                return res
        return None

    @contextlib.contextmanager
    def timed_calls(self) -> Iterator[dict[str, float]]:
        """Within the block, every implementation called through :meth:`call` / :meth:`call_first`
        adds its wall time (seconds) to the yielded dict under its plugin's name."""
        self._impl_seconds = seconds = {}
        try:
            yield seconds
        finally:
            self._impl_seconds = None

    def _call_impl(self, impl: Any, hook_name: str, kwargs: dict[str, Any]) -> tuple[bool, Any]:
        t0 = time.perf_counter()
        try:
            return True, impl.function(*[kwargs[a] for a in impl.argnames])
        except KeyboardInterrupt:
            raise
        except Exception as e:
            name = impl.plugin_name
            msg = f"{hook_name}: {type(e).__name__}: {e}"
            log.error("plugin '%s' failed in %s and is switched off for the rest of the run: %s: %s",
                      name, hook_name, type(e).__name__, e)
            log.debug("traceback of plugin '%s':\n%s", name, traceback.format_exc())
            self.errors[name] = msg
            plugin = self.pm.get_plugin(name)
            if plugin is not None:
                self.pm.unregister(plugin)
            if name in self.infos:
                self.infos[name].error = msg
            return False, None
        finally:
            if self._impl_seconds is not None:
                name = impl.plugin_name
                self._impl_seconds[name] = self._impl_seconds.get(name, 0.0) + time.perf_counter() - t0

    # ------------------------------------------------------------------ introspection
    def config_sections(self) -> dict[str, Any]:
        """``{section: OptionsModel}`` from every plugin's ``slam3r_config_sections``."""
        sections: dict[str, Any] = {}
        for impl in self._impls("slam3r_config_sections"):
            res = impl.function()
            for key, model in (res or {}).items():
                if key in sections and sections[key] is not model:
                    raise ConfigError(f"config section '{key}' is claimed by two plugins")
                sections[key] = model
        return sections

    def describe(self) -> list[PluginInfo]:
        return sorted(self.infos.values(), key=lambda i: (i.origin != "built-in", i.name))


def _entry_points() -> list[Any]:
    try:
        return list(md.entry_points(group=hookspecs.ENTRY_POINT_GROUP))
    except TypeError:  # pragma: no cover - Python < 3.10
        return list(md.entry_points().get(hookspecs.ENTRY_POINT_GROUP, []))


def _dist_name(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) or (dist.metadata["Name"] if dist is not None else "")
    return (name or "").lower().replace("_", "-")
