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
import functools
import importlib
import importlib.metadata as md
import importlib.util
import logging
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import pluggy

from . import hook_results, hookspecs
from .errors import ConfigError, Slam3rError
from .io import is_write_error
from .watchdog import Overrun, Watchdog

log = logging.getLogger("slam3r.plugins")

OWN_DISTRIBUTION = "slam3r"

#: the checkout's project file: its entry-point table is the one list of built-in plugins, read
#: directly when the slam3r distribution is not installed (a bare checkout on sys.path)
CHECKOUT_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

#: hooks called once per frame: bounded by ``plugin_frame_timeout_s``; every other hook by ``plugin_timeout_s``
PER_FRAME_HOOKS = frozenset({"slam3r_keyframe_decision", "slam3r_process_frame"})
#: the end-of-stream refinement of the whole trajectory (a bundle adjustment): ``plugin_refine_timeout_s``
REFINE_HOOKS = frozenset({"slam3r_refine_trajectory"})
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_FRAME_TIMEOUT_S = 30.0
DEFAULT_REFINE_TIMEOUT_S = 600.0


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
        self.write_errors: dict[str, str] = {}  # the errors of self.errors that are failed writes (full disk)
        self._impl_seconds: Optional[dict[str, float]] = None  # see timed_calls
        self.watchdog = Watchdog()
        self._running: Optional[tuple[str, list[Any], Optional[float]]] = None  # for busy()
        self.timeout_s: Optional[float] = DEFAULT_TIMEOUT_S
        self.refine_timeout_s: Optional[float] = DEFAULT_REFINE_TIMEOUT_S
        self.frame_timeout_s: Optional[float] = DEFAULT_FRAME_TIMEOUT_S
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
        checkout = checkout_builtins() if CHECKOUT_PYPROJECT.is_file() else {}
        if eps and (not checkout or {ep.name: ep.value for ep in eps} == checkout):
            for ep in eps:
                self._register_entry_point(ep, origin="built-in")
            return
        if eps:  # an editable install whose metadata predates the checkout's pyproject.toml
            log.warning("the installed slam3r's plugin list is older than %s: using the checkout's (to update "
                        "the installed one: pip install --no-deps -e .)", CHECKOUT_PYPROJECT)
        for name, modname in checkout.items():
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
        except Exception as e:  # noqa: BLE001 - plugin code: a broken third-party plugin must not stop the app
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
            except Exception as e:  # noqa: BLE001 - plugin code: any import failure is one ConfigError
                raise ConfigError(f"{config_file}: plugins: {spec} failed to import: {type(e).__name__}: {e}") from None
            self._register(name, mod, f"config: {spec}", str(path))
            return name
        name = spec.rsplit(".", 1)[-1]
        try:
            self._register_module(name, spec, f"config: {spec}", strict=True)
        except Exception as e:  # noqa: BLE001 - plugin code: any import failure is one ConfigError
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
    def set_timeouts(self, end_of_run: Optional[float] = DEFAULT_TIMEOUT_S,
                     per_frame: Optional[float] = DEFAULT_FRAME_TIMEOUT_S,
                     refine: Optional[float] = DEFAULT_REFINE_TIMEOUT_S) -> None:
        """Limits in seconds for one implementation's call (None: no limit).

        ``per_frame`` applies to the per-frame hooks (:data:`PER_FRAME_HOOKS`), ``refine`` to the
        end-of-stream refinement (:data:`REFINE_HOOKS`), ``end_of_run`` to every other hook (run start
        and end, export, evaluation, reset). The config keys are ``plugin_frame_timeout_s``,
        ``plugin_refine_timeout_s`` and ``plugin_timeout_s``.
        """
        self.timeout_s = end_of_run
        self.frame_timeout_s = per_frame
        self.refine_timeout_s = refine

    def limit_for(self, hook_name: str) -> tuple[Optional[float], str]:
        """``(seconds or None, config key)`` that bounds one call of ``hook_name``."""
        if hook_name in PER_FRAME_HOOKS:
            return self.frame_timeout_s, "plugin_frame_timeout_s"
        if hook_name in REFINE_HOOKS:
            return self.refine_timeout_s, "plugin_refine_timeout_s"
        return self.timeout_s, "plugin_timeout_s"

    def _impls(self, hook_name: str) -> list[Any]:
        caller = getattr(self.pm.hook, hook_name)
        return list(reversed(caller.get_hookimpls()))  # pluggy's call order

    def call(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation; returns ``[(plugin_name, result), ...]`` for non-None results.

        Each implementation runs in the watchdog's worker thread under its time limit. One that
        raises, runs past its limit or returns the wrong type (:func:`hook_results.check`) is
        logged with its plugin's name, recorded in :attr:`errors`, and its plugin is switched off
        for the rest of the run; the other plugins still run.
        """
        return self._call(hook_name, kwargs, first=False)

    def call_first(self, hook_name: str, **kwargs: Any) -> Optional[Any]:
        """Call implementations in order until one returns a valid non-None result (firstresult hooks)."""
        out = self._call(hook_name, kwargs, first=True)
        return out[0][1] if out else None

    def call_first_strict(self, hook_name: str, **kwargs: Any) -> Optional[Any]:
        """Like :meth:`call_first` but in the caller's thread, and errors propagate (factories: a bad
        source or frontend must stop the run, and a model is loaded where it will run)."""
        for impl in self._impls(hook_name):
            res = impl.function(*[kwargs[a] for a in impl.argnames])
            if res is not None:
                problem = hook_results.check(hook_name, res)
                if problem:
                    raise ConfigError(f"plugin '{impl.plugin_name}': {hook_name} {problem}")
                return res
        return None

    def _call(self, hook_name: str, kwargs: dict[str, Any], first: bool) -> list[tuple[str, Any]]:
        for (name, hook), seconds in self.watchdog.settle():  # a call a "stop now" signal left running
            self._fail(name, hook, f"still running {seconds:.1f} s after the run was told to stop now")
        impls = self._impls(hook_name)
        limit, key = self.limit_for(hook_name)
        out: list[tuple[str, Any]] = []
        while impls:
            self._running = (hook_name, impls, limit)
            calls = [functools.partial(impl.function, *[kwargs[a] for a in impl.argnames]) for impl in impls]
            overrun: Optional[Overrun] = None
            try:
                outcomes = self.watchdog.run(calls, [limit] * len(calls),
                                             stop_when=(lambda v: v is not None) if first else None,
                                             labels=[(impl.plugin_name, hook_name) for impl in impls])
            except Overrun as e:
                outcomes, overrun = e.outcomes, e
            for o in outcomes:
                impl = impls[o.index]
                self._account(impl.plugin_name, o.seconds)
                if not o.ok:
                    e = o.error
                    self._fail(impl.plugin_name, hook_name, _describe_error(e), o.traceback, error=e)
                    continue
                problem = hook_results.check(hook_name, o.value)
                if problem:
                    self._fail(impl.plugin_name, hook_name, problem)
                    continue
                if hook_name == "slam3r_evaluate" and o.value:
                    o.value = self._json_metrics(impl.plugin_name, o.value)
                if o.value is not None:
                    out.append((impl.plugin_name, o.value))
                    if first:
                        return out
            if overrun is not None:
                impl = impls[overrun.index]
                self._account(impl.plugin_name, overrun.seconds)
                self._fail(impl.plugin_name, hook_name,
                           f"still running after {overrun.seconds:.1f} s (limit {overrun.limit:g} s, config key {key})")
                nxt = overrun.index + 1
            else:
                nxt = outcomes[-1].index + 1 if outcomes else len(impls)
            impls = impls[nxt:]
        return out

    def _json_metrics(self, name: str, metrics: dict[str, Any]) -> dict[str, Any]:
        """``metrics`` less the values JSON cannot hold (metrics.json must be written); those are
        named with the plugin and recorded as its failure (exit 3), the others kept."""
        from .io import json_problem

        bad = {k: json_problem(v) for k, v in metrics.items()}
        bad = {k: why for k, why in bad.items() if why}
        if not bad:
            return metrics
        shown = ", ".join(f"'{k}' ({why})" for k, why in list(bad.items())[:5])
        self.report_failure(f"returned metrics that JSON cannot hold: {shown}; dropped, the other "
                            f"{len(metrics) - len(bad)} kept", name=name, hook_name="slam3r_evaluate")
        return {k: v for k, v in metrics.items() if k not in bad}

    def report_failure(self, problem: str, name: Optional[str] = None, hook_name: Optional[str] = None) -> None:
        """A plugin says that it failed at its job (its evaluation could not be computed, say) without
        raising: the failure is logged with its name and counts as a failed plugin (exit 3), but the
        plugin stays on. ``name`` / ``hook_name`` default to the plugin and hook running now."""
        if name is None or hook_name is None:
            state, running = self.watchdog.busy(), self._running
            if state is not None and running is not None and state[0] < len(running[1]):
                name = name or running[1][state[0]].plugin_name
                hook_name = hook_name or running[0]
        name, hook_name = name or "unknown plugin", hook_name or "a hook"
        log.error("plugin '%s' failed in %s: %s", name, hook_name, problem)
        self.errors.setdefault(name, f"{hook_name}: {problem}")
        if name in self.infos and not self.infos[name].error:
            self.infos[name].error = f"{hook_name}: {problem}"

    def busy(self) -> str:
        """What plugin code is running now, for messages: ``"plugin 'x' in slam3r_export for 3.2 s (limit 60 s)"``
        (the call the loop waits for, or one a Ctrl-C left running); ``""`` when none."""
        state, running = self.watchdog.busy(), self._running
        if state is None or running is None:
            return ""
        index, seconds = state
        hook_name, impls, limit = running
        if index >= len(impls):
            return ""
        lim = "no limit" if limit is None else f"limit {limit:g} s"
        return f"plugin '{impls[index].plugin_name}' in {hook_name} for {seconds:.1f} s ({lim})"

    def _account(self, name: str, seconds: float) -> None:
        if self._impl_seconds is not None:
            self._impl_seconds[name] = self._impl_seconds.get(name, 0.0) + seconds

    def _fail(self, name: str, hook_name: str, problem: str, tb: str = "",
              error: Optional[BaseException] = None) -> None:
        """Report a plugin by name and switch it off for the rest of the run (a failed write --
        :func:`slam3r_app.io.is_write_error` -- is also kept in :attr:`write_errors`)."""
        msg = f"{hook_name}: {problem}"
        if error is not None and is_write_error(error):
            self.write_errors.setdefault(name, str(error))
            tb = ""  # the message says it all
        log.error("plugin '%s' failed in %s and is switched off for the rest of the run: %s", name, hook_name, problem)
        if tb:
            log.debug("traceback of plugin '%s':\n%s", name, tb)
        self.errors.setdefault(name, msg)
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        if name in self.infos:
            self.infos[name].error = msg

    @contextlib.contextmanager
    def timed_calls(self) -> Iterator[dict[str, float]]:
        """Within the block, every implementation called through :meth:`call` / :meth:`call_first`
        adds its wall time (seconds) to the yielded dict under its plugin's name."""
        self._impl_seconds = seconds = {}
        try:
            yield seconds
        finally:
            self._impl_seconds = None

    # ------------------------------------------------------------------ introspection
    def config_sections(self) -> dict[str, Any]:
        """``{section: OptionsModel}`` from every plugin's ``slam3r_config_sections``."""
        sections: dict[str, Any] = {}
        for impl in self._impls("slam3r_config_sections"):
            try:
                res = impl.function()
            except Exception as e:  # noqa: BLE001 - plugin code: one that cannot describe its options is switched off
                self._fail(impl.plugin_name, "slam3r_config_sections", f"{type(e).__name__}: {e}", traceback.format_exc())
                continue
            problem = hook_results.check("slam3r_config_sections", res)
            if problem:
                self._fail(impl.plugin_name, "slam3r_config_sections", problem)
                continue
            for key, model in (res or {}).items():
                if key in sections and sections[key] is not model:
                    raise ConfigError(f"config section '{key}' is claimed by two plugins")
                sections[key] = model
        return sections

    def describe(self) -> list[PluginInfo]:
        return sorted(self.infos.values(), key=lambda i: (i.origin != "built-in", i.name))


def _describe_error(e: Optional[BaseException]) -> str:
    """``TypeError: ...``; an error meant for users (:class:`Slam3rError`) without its class name."""
    if isinstance(e, Slam3rError):
        return str(e)
    return f"{type(e).__name__}: {e}"


def checkout_builtins(pyproject: Path = CHECKOUT_PYPROJECT) -> dict[str, str]:
    """``{plugin name: module}`` of the built-ins, read from the checkout's pyproject.toml.

    Only for a checkout that is not installed; an installed slam3r has these as entry points.
    Empty (with a warning) where the file is missing or Python has no TOML reader (3.10).
    """
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10: install slam3r (pip install -e .)
        log.warning("built-in plugins: slam3r is not installed and Python %d.%d cannot read %s",
                    *sys.version_info[:2], pyproject)
        return {}
    try:
        with open(pyproject, "rb") as f:
            table = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:  # pragma: no cover - broken checkout
        log.warning("built-in plugins unavailable: %s: %s", pyproject, e)
        return {}
    return dict(table.get("project", {}).get("entry-points", {}).get(hookspecs.ENTRY_POINT_GROUP, {}))


def _entry_points() -> list[Any]:
    try:
        return list(md.entry_points(group=hookspecs.ENTRY_POINT_GROUP))
    except TypeError:  # pragma: no cover - Python < 3.10
        return list(md.entry_points().get(hookspecs.ENTRY_POINT_GROUP, []))


def _dist_name(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) or (dist.metadata["Name"] if dist is not None else "")
    return (name or "").lower().replace("_", "-")
