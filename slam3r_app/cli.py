"""Command line: ``slam3r`` / ``python run_slam.py``.

    run_slam.py --config tum.yaml [--set key.sub=value ...] [--output DIR]   (same as `run`)
    run_slam.py eval --gt GT --est EST [--json FILE]
    run_slam.py bench --config tum.yaml
    run_slam.py synth --out DIR --frames N --format tum|sintel --seed S
    run_slam.py plugins

Plugins add sub-commands through the ``slam3r_register_commands`` hook.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Optional, Sequence

from .errors import ConfigError, Slam3rError

log = logging.getLogger("slam3r")

#: exit codes (README, "Exit codes"): 0 done; 1 the run failed (config, source, frontend, run folder,
#: an error during the run, a file that could not be written: a full disk); 2 command-line usage;
#: 3 done, but a plugin failed (its outputs are missing, every other output is written); 130 stopped
#: by Ctrl-C (SIGINT); 141 the output pipe was closed; 143 stopped by SIGTERM. An error wins over a
#: signal, a signal over a plugin failure.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PLUGIN_ERRORS = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143
#: the reader of the output went away (``run_slam.py plugins | head -1``): 128 + SIGPIPE, as a shell reports
EXIT_BROKEN_PIPE = 141

EPILOG = """examples:
  run_slam.py --config demo.yaml                      offline demo on the shipped TUM sample
  run_slam.py --config tum.yaml --set source.path=data/tum/rgbd_dataset_freiburg3_walking_xyz
  run_slam.py --config tum.yaml --set frontend=rgbd   classical RGB-D tracking, no weights
  run_slam.py --config webcam.yaml                    live mapping from camera 0
  run_slam.py eval --gt groundtruth.txt --est runs/x/trajectory.txt
  run_slam.py plugins                                 what is installed and which hooks it implements
"""


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="demo.yaml",
                   help="config file, or a bare name from configs/ (default: demo.yaml)")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set source.max_frames=50 (repeatable; values are YAML)")
    p.add_argument("--output", "-o", default=None,
                   help="run folder (default: config 'output'); must be new or empty unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="clear the --output run folder first if it holds an earlier run's files")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, warnings only")


def build_parser(host=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_slam.py",
        description="slam3r: streaming 3D reconstruction and SLAM with STream3R (or a classical RGB-D frontend).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_run = sub.add_parser("run", help="map a sequence or a live camera (default command)",
                           description="Stream a source through the frontend and the backends; write a run folder.")
    _add_run_args(p_run)
    p_run.set_defaults(handler=cmd_run)
    p_pl = sub.add_parser("plugins", help="list discovered plugins, where they come from and their hooks")
    p_pl.add_argument("--config", "-c", default=None, help="also load the plugins a config lists / disables")
    p_pl.add_argument("--options", action="store_true",
                      help="also print every plugin's config section: keys, defaults and meanings")
    p_pl.set_defaults(handler=cmd_plugins)
    if host is not None:
        host.call("slam3r_register_commands", subparsers=sub)
    parser.epilog = _run_options_help(p_run) + "\n" + EPILOG
    return parser


def _run_options_help(p_run: argparse.ArgumentParser) -> str:
    """The ``run`` command's options, for the top-level ``--help`` (``run`` is the default command:
    ``run_slam.py --config x`` is ``run_slam.py run --config x``)."""
    fmt = p_run._get_formatter()
    fmt.start_section("run options (the default command: run_slam.py [run] --config ... ; also run_slam.py run -h)")
    fmt.add_arguments([a for a in p_run._actions if not isinstance(a, argparse._HelpAction)])
    fmt.end_section()
    return fmt.format_help()


def _setup_logging(quiet: bool = False) -> None:
    root = logging.getLogger("slam3r")
    if any(getattr(h, "_slam3r_console", False) for h in root.handlers):
        return

    class TqdmHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                from tqdm import tqdm

                tqdm.write(self.format(record), file=sys.stderr)
            except Exception:  # noqa: BLE001 # pragma: no cover - logging.Handler's contract: handleError
                self.handleError(record)

    h = TqdmHandler()
    h._slam3r_console = True  # type: ignore[attr-defined]
    h.addFilter(lambda record: getattr(record, "console", True))  # extra={"console": False}: run.log only
    h.setLevel(logging.WARNING if quiet else logging.INFO)
    h.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(h)
    root.setLevel(logging.DEBUG)


def _console_level(level: str, quiet: bool) -> None:
    """The config's ``log_level`` for the console (``--quiet`` still means warnings at least); run.log keeps all."""
    floor = max(logging.getLevelName(level), logging.WARNING if quiet else logging.NOTSET)
    for h in logging.getLogger("slam3r").handlers:
        if getattr(h, "_slam3r_console", False):
            h.setLevel(floor)


def cmd_run(args: argparse.Namespace) -> int:
    from .config_check import load_and_check
    from .frame_loop import format_summary, run
    from .pipeline import Pipeline
    from .run_folder import clear_run_folder
    from .signals import exit_code_for

    overrides = list(args.overrides)
    if args.quiet:
        overrides.append("progress=false")
    cfg, host = load_and_check(args.config, overrides=overrides)  # every config problem at once, before any folder
    _console_level(cfg.run.log_level, quiet=args.quiet)
    if args.overwrite:
        if not args.output:
            raise ConfigError("--overwrite needs --output DIR (folders made from the 'output' template are "
                              "never reused: a -2, -3 ... suffix is added instead)")
        clear_run_folder(args.output)
    pipe = Pipeline(cfg, output=args.output, host=host)
    result = run(cfg, pipeline=pipe)
    print(format_summary(result, str(pipe.context.out), timing=pipe.timer.format()))
    signal_name = result.info.get("signal")
    if result.ended_by == "error":
        print(f"error: {result.stop_reason}", file=sys.stderr)
        code = EXIT_ERROR
    elif result.write_errors:  # a full disk: a file is missing or stale, whatever else went well
        print(f"error: {next(iter(result.write_errors.values()))}", file=sys.stderr)
        code = EXIT_ERROR
    elif signal_name:
        code = exit_code_for(signal_name)
    elif result.plugin_errors:
        code = EXIT_PLUGIN_ERRORS
    else:
        code = EXIT_OK
    if pipe.host.watchdog.abandoned:
        # a plugin thread is stuck in a call that was given up: it cannot be stopped, and waiting for the
        # interpreter to tear down under it can hang or fail; every output is written, so leave now
        log.debug("leaving with %d stuck plugin thread(s)", pipe.host.watchdog.abandoned)
        _flush()
        os._exit(code)
    return code


def _flush() -> None:
    for h in logging.getLogger("slam3r").handlers:
        try:
            h.flush()
        except (OSError, ValueError):  # pragma: no cover - a closed stream
            pass
    sys.stdout.flush()
    sys.stderr.flush()


def cmd_plugins(args: argparse.Namespace) -> int:
    from .config import load_config
    from .plugin_host import PluginHost

    if args.config:
        cfg = load_config(args.config)
        host = PluginHost(disable=cfg.run.disable, extra=cfg.run.plugins, config_file=cfg.origin("plugins"))
    else:
        host = PluginHost()
    options = getattr(args, "options", False)
    prefix = "# " if options else ""  # with --options the whole output is a YAML config: the listing is comments
    rows = host.describe()
    width = max([len(r.name) for r in rows] + [4])
    for r in rows:
        state = "disabled" if r.disabled else (f"ERROR: {r.error}" if r.error else "")
        print(f"{prefix}{r.name:<{width}}  {r.origin}  {r.module}  {state}".rstrip())
        if r.hooks:
            print(f"{prefix}{'':<{width}}    hooks: {', '.join(r.hooks)}")
    if options:
        print()
        print(format_plugin_options(host.config_sections(), core=True))
    return EXIT_OK


def format_plugin_options(sections: dict, core: bool = False) -> str:
    """Config sections as YAML: ``key: default  # description``, one section per plugin (and the core
    keys first with ``core``). The text is a valid config: it loads and validates as it is."""
    from .config import RunConfig

    lines: list[str] = []
    if core:
        lines.append("# core keys (slam3r_app.config.RunConfig)")
        lines += _model_lines(RunConfig, 0)
        lines.append("")
        lines.append("# plugin sections")
    for section in sorted(sections):
        lines.append(f"{section}:")
        lines += _model_lines(sections[section], 1)
    return "\n".join(lines)


def _model_lines(model, depth: int) -> list[str]:
    from pydantic import BaseModel

    pad = "  " * depth
    out: list[str] = []
    for key, field in model.model_fields.items():
        desc = (field.description or "").replace("\n", " ")
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.append(f"{pad}{key}:" + (f"  # {desc}" if desc else ""))
            out += _model_lines(ann, depth + 1)
            continue
        if field.is_required():
            value, desc = "null", f"required{': ' + desc if desc else ''}"
        else:
            value = _yaml_scalar(field.get_default(call_default_factory=True))
        out.append(f"{pad}{key}: {value}" + (f"  # {desc}" if desc else ""))
    return out


def _yaml_scalar(value: object) -> str:
    import yaml

    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit code (see :data:`EXIT_OK` and the others).

    Ctrl-C or SIGTERM at any point of start-up (imports, plugin discovery, config, opening the
    source, loading the model) ends the program without a traceback (exit 130 / 143).
    """
    from .signals import Terminated, startup_signals

    try:
        with startup_signals():
            return _main(argv)
    except BrokenPipeError:
        # the reader closed the pipe (| head): nothing more to say; stdout to /dev/null so that the
        # interpreter's own flush at exit does not print an "Exception ignored" message either
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        print("terminated (SIGTERM)" if terminated else "interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


def _main(argv: Optional[Sequence[str]]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    known_top = {"run", "plugins", "-h", "--help"}
    _setup_logging(quiet="-q" in argv or "--quiet" in argv)
    host = None
    try:
        from .plugin_host import PluginHost

        host = PluginHost()
    except Slam3rError as e:  # pragma: no cover
        print(f"error: {e}", file=sys.stderr)
    parser = build_parser(host)
    commands = set(parser._subparsers._group_actions[0].choices) if parser._subparsers else set()  # type: ignore[union-attr]
    if not argv or (argv[0] not in commands | known_top):
        argv = ["run"] + argv
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(handler(args) or 0)
    except Slam3rError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
