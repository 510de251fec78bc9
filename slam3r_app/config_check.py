"""Every config problem at once: core sections, plugins, plugin sections, frontend and source names.

:func:`load_and_check` is what the command line uses before it creates a run folder, so that a
config with several mistakes is reported in one message (every line naming the file or ``--set``
and the key) and a run never starts, nor leaves a folder behind, with a config that cannot work.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Optional

from pydantic import TypeAdapter, ValidationError

from .config import LoadedConfig, _did_you_mean, core_errors, format_errors, merge_config
from .errors import ConfigError
from .plugin_host import PluginHost


def load_and_check(name: Optional[str | os.PathLike] = None, overrides: Optional[list[str]] = None,
                   data: Optional[dict[str, Any]] = None) -> tuple[LoadedConfig, PluginHost]:
    """Load a config, build its plugin host and validate everything.

    Returns:
        the config (plugin sections validated) and the plugin host to run it with.

    Raises:
        ConfigError: listing every problem found (files that cannot be read stop at once).
    """
    cfg = merge_config(name, overrides=overrides, data=data)
    lines = core_errors(cfg)
    disable = _list_of_str(cfg, "disable", lines)
    extra = _list_of_str(cfg, "plugins", lines)
    host = PluginHost(disable=disable, entry_points=True, config_file=cfg.origin("plugins"))
    for spec in extra:
        try:
            host.load_extra(spec, cfg.origin("plugins"))
        except ConfigError as e:
            lines.append(str(e))
    lines += cfg.section_errors(host.config_sections(), disabled=host.disabled)
    lines += _name_errors(cfg, host, "frontend", cfg.raw.get("frontend", cfg.run.frontend),
                          "slam3r_make_frontend", "FRONTENDS", "frontend")
    src = cfg.raw.get("source") if isinstance(cfg.raw.get("source"), dict) else {}
    src_type = src.get("type", cfg.run.source.type)
    lines += _name_errors(cfg, host, "source.type", src_type, "slam3r_make_source", "SOURCE_TYPES", "source type")
    if lines:
        raise ConfigError(format_errors(lines))
    return cfg, host


def _list_of_str(cfg: LoadedConfig, key: str, lines: list[str]) -> list[str]:
    """``plugins`` / ``disable`` on their own (the host is needed even when other keys are wrong);
    a malformed value is already among the core errors."""
    value = cfg.raw.get(key, [])
    try:
        return TypeAdapter(list[str]).validate_python(value if value is not None else [])
    except ValidationError:
        return []


def declared_names(host: PluginHost, hook: str, attr: str) -> Optional[set[str]]:
    """The names the enabled plugins implementing ``hook`` declare in their ``attr`` (``FRONTENDS``,
    ``SOURCE_TYPES``); None when one of them declares nothing (then any name may be valid)."""
    names: set[str] = set()
    for impl in host._impls(hook):
        declared = getattr(impl.plugin, attr, None)
        if declared is None:
            return None
        names |= {str(n) for n in declared}
    return names


def _name_errors(cfg: LoadedConfig, host: PluginHost, key: str, value: Any, hook: str, attr: str,
                 what: str) -> list[str]:
    if not isinstance(value, str):
        return []
    known = declared_names(host, hook, attr)
    if known is None or value in known:
        return []
    origin = cfg.origin(key)
    where = origin if origin.startswith("--set ") else f"{origin}: {key}"
    shown = ", ".join(sorted(known)) or "none"
    disabled = f"; disabled plugins: {', '.join(sorted(host.disabled))}" if host.disabled else ""
    return [f"{where}: unknown {what} '{value}'{_did_you_mean(value, known)} (known: {shown}{disabled})"]


__all__: Iterable[str] = ["load_and_check", "declared_names"]
