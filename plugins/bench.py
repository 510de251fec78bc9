"""Benchmark runner (plugin ``bench``): the upstream STream3R pose-evaluation protocol.

    run_slam.py bench --config tum.yaml [--protocol upstream|app] [--suite paper|loops] [--root data]
                      [--set key=value ...] [--out DIR] [--sequences a,b]

Runs every sequence of a suite's list for the config's ``source.type`` through the normal
pipeline (:func:`slam3r_app.loop.run`, one run folder per sequence under ``--out``, each with its
resolved ``config.yaml``) and prints a table per sequence plus the mean: ATE, RPE translation,
RPE rotation (evaluation plugin, evo), frames per second and peak memory; saved as ``bench.md``
and ``bench.csv``. A sequence that is not under ``--root`` is listed as ``missing`` (with the
paths looked at), one that fails as ``error``; neither is ever skipped silently, and neither
counts in the mean.

Suites (frame selection as the upstream evaluation):

* ``paper`` (default): ``tum``: the 8 TUM RGB-D fr3 sitting / walking sequences, 90 frames at
  stride 3; ``bonn``: 5 Bonn RGB-D Dynamic sequences, frames 30-140 (110 frames); ``sintel``: 14
  MPI Sintel training sequences, all frames;
* ``loops``: the standard loop-closure sequences TUM fr1_room, fr2_desk, fr3_long_office_household,
  every frame (for users who have them; thousands of frames, so the app's keyframe cache).

Protocols (how each sequence runs):

* ``upstream`` (default for the paper suite): the paper's protocol (``eval/relpose/launch.py``):
  upstream's evaluation preprocessing (``model.preprocess: eval``, 518 on the long side: 640x480 ->
  518x378), one causal session over every frame of the strided list (``model.mode: causal``,
  ``keyframes.keep_all_in_cache: true``: no frame leaves the KV cache), in the precision upstream
  evaluates in (``model.dtype: float32`` with ``model.tf32: true``, as its launcher sets
  ``allow_tf32``).  See :data:`UPSTREAM_SETTINGS`.
* ``app``: the config as it is (the shipped configs: demo preprocessing, keyframes dropping
  non-keyframes from the cache, the mixed-precision fast path).  Default for the loops suite.

``--set`` overrides apply after the suite's and the protocol's, so ``--set source.max_frames=10``
makes a quick smoke run.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slam3r_app.errors import ConfigError, Slam3rError
from slam3r_app.hookspecs import hookimpl
from slam3r_app.io import write_text

log = logging.getLogger("slam3r.bench")

SECTION = "bench"


@dataclass(frozen=True)
class Protocol:
    """One dataset's sequence list and frame selection."""

    name: str
    sequences: tuple[str, ...]
    first: int = 0
    stride: int = 1
    max_frames: Optional[int] = None
    folder: tuple[str, ...] = ()  # candidate sub-paths under the root; {seq} is filled in


PROTOCOLS: dict[str, Protocol] = {
    "tum": Protocol(
        "TUM RGB-D dynamics (fr3 sitting/walking), 90 frames at stride 3",
        tuple(f"rgbd_dataset_freiburg3_{s}" for s in (
            "sitting_static", "sitting_xyz", "sitting_halfsphere", "sitting_rpy",
            "walking_static", "walking_xyz", "walking_halfsphere", "walking_rpy")),
        first=0, stride=3, max_frames=90,
        folder=("tum/{seq}", "{seq}"),
    ),
    "bonn": Protocol(
        "Bonn RGB-D Dynamic, frames 30-140",
        tuple(f"rgbd_bonn_{s}" for s in ("balloon2", "crowd2", "crowd3", "person_tracking2", "synchronous")),
        first=30, stride=1, max_frames=110,
        folder=("bonn/{seq}", "bonn/rgbd_bonn_dataset/{seq}", "{seq}"),
    ),
    "sintel": Protocol(
        "MPI Sintel training (final pass), all frames",
        ("alley_2", "ambush_4", "ambush_5", "ambush_6", "cave_2", "cave_4", "market_2", "market_5", "market_6",
         "shaman_3", "sleeping_1", "sleeping_2", "temple_2", "temple_3"),
        first=0, stride=1, max_frames=None,
        folder=("sintel/training/{pass}/{seq}", "sintel/MPI-Sintel-complete/training/{pass}/{seq}",
                "training/{pass}/{seq}", "sintel/{seq}", "{seq}"),
    ),
}


LOOP_PROTOCOLS: dict[str, Protocol] = {
    "tum": Protocol(
        "TUM RGB-D loop-closure sequences (fr1_room, fr2_desk, fr3_long_office_household), all frames",
        ("rgbd_dataset_freiburg1_room", "rgbd_dataset_freiburg2_desk", "rgbd_dataset_freiburg3_long_office_household"),
        first=0, stride=1, max_frames=None,
        folder=("tum/{seq}", "{seq}"),
    ),
}

SUITES: dict[str, dict[str, Protocol]] = {"paper": PROTOCOLS, "loops": LOOP_PROTOCOLS}
SUITE_DEFAULT_PROTOCOL = {"paper": "upstream", "loops": "app"}
RUN_PROTOCOLS = ("upstream", "app")

# The paper's protocol (upstream eval/relpose/launch.py): DUSt3R's load_images_for_eval(size=518,
# crop=False, patch_size=14), one causal StreamSession over every frame of the list, float32 with
# torch.backends.cuda.matmul.allow_tf32 = True.
UPSTREAM_SETTINGS = (
    "model.preprocess=eval",
    "model.image_size=518",
    "model.mode=causal",
    "model.dtype=float32",
    "model.tf32=true",
    "keyframes.keep_all_in_cache=true",
)


class BenchOptions(BaseModel):
    """``bench:`` defaults of the ``bench`` command."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field("data", description="dataset root holding tum/, bonn/, sintel/ (as the upstream eval)")
    sequences: Optional[list[str]] = Field(None, description="run only these sequences of the protocol's list")


@dataclass
class Row:
    sequence: str
    status: str = "ok"  # ok | missing | error | no GT
    frames: Optional[int] = None
    ate: Optional[float] = None
    rpe_trans: Optional[float] = None
    rpe_rot: Optional[float] = None
    fps: Optional[float] = None
    peak_mem_gb: Optional[float] = None
    run_folder: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


COLUMNS = ("sequence", "status", "frames", "ate", "rpe_trans", "rpe_rot", "fps", "peak_mem_gb", "run_folder", "note")
METRIC_COLS = ("ate", "rpe_trans", "rpe_rot", "fps", "peak_mem_gb")


def find_sequence(root: Path, proto: Protocol, seq: str, sintel_pass: str = "final") -> tuple[Optional[Path], list[Path]]:
    """The sequence's folder under ``root`` (or None) and every path looked at."""
    looked = []
    for pattern in proto.folder:
        p = root / pattern.format(seq=seq, **{"pass": sintel_pass})
        looked.append(p)
        if p.is_dir():
            return p, looked
    return None, looked


# ----------------------------------------------------------------------------- memory
def _torch_cuda():
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch
    except Exception:  # pragma: no cover
        return None
    return None


def _reset_peak() -> None:
    torch = _torch_cuda()
    if torch is not None:
        torch.cuda.reset_peak_memory_stats()


def _peak_memory() -> tuple[float, str]:
    """Peak GPU memory of this run (when CUDA is in use), else the process's peak resident memory."""
    torch = _torch_cuda()
    if torch is not None:
        return torch.cuda.max_memory_allocated() / 1e9, "GPU (torch max_memory_allocated)"
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB; macOS: bytes
    b = kb if sys.platform == "darwin" else kb * 1024
    return b / 1e9, "process peak RSS (CPU; not reset between sequences)"


# ----------------------------------------------------------------------------- running
def sequence_overrides(path: Path, proto: Protocol, seq: str, protocol: str) -> list[str]:
    """The ``--set`` overrides that put one sequence of a suite under a run protocol (the user's
    overrides come after these)."""
    sets = [f"source.path={path}", f"source.first={proto.first}", f"source.stride={proto.stride}",
            f"source.max_frames={'null' if proto.max_frames is None else proto.max_frames}",
            f"name={seq}", "progress=false"]
    if protocol == "upstream":
        sets += list(UPSTREAM_SETTINGS)
    return sets


def run_sequence(config: str, path: Path, proto: Protocol, seq: str, out: Path, overrides: list[str],
                 protocol: str = "upstream") -> Row:
    from slam3r_app.config import load_config
    from slam3r_app.loop import run
    from slam3r_app.pipeline import Pipeline

    protocol_sets = sequence_overrides(path, proto, seq, protocol)
    row = Row(seq, run_folder=str(out / seq))
    try:
        cfg = load_config(config, overrides=protocol_sets + list(overrides))
        pipe = Pipeline(cfg, output=str(out / seq))
        _reset_peak()
        result = run(cfg, pipeline=pipe)
    except Slam3rError as e:
        row.status, row.note = "error", str(e).splitlines()[0][:300]
        return row
    except Exception as e:  # a crash in one sequence must not end the benchmark
        log.exception("bench: %s crashed", seq)
        row.status, row.note = "error", f"{type(e).__name__}: {e}"[:300]
        return row
    row.peak_mem_gb, _ = _peak_memory()
    row.frames = result.frames_seen
    row.fps = result.frames_seen / result.seconds if result.seconds > 0 else None
    m = result.metrics
    row.ate, row.rpe_trans, row.rpe_rot = m.get("ate"), m.get("rpe_trans"), m.get("rpe_rot")
    if result.ended_by == "error":
        row.status, row.note = "error", result.stop_reason[:300]
    elif row.ate is None:
        row.status = "no GT" if "evaluation_error" not in m else "error"
        row.note = m.get("evaluation_error", "no ATE (no ground truth, or the evaluation plugin is off)")[:300]
    if result.plugin_errors:
        row.note = (row.note + "; " if row.note else "") + "plugin errors: " + ", ".join(sorted(result.plugin_errors))
    if "metric_scale" in m:
        row.extra["metric_scale"] = m["metric_scale"]
    return row


def run_bench(config: str, root: Optional[str | Path] = None, overrides: Optional[list[str]] = None,
              out: Optional[str | Path] = None, sequences: Optional[list[str]] = None,
              protocol: Optional[str] = None, suite: str = "paper") -> tuple[list[Row], Path, str]:
    """Run a suite's sequence list for ``config``'s source type under a run protocol; returns
    ``(rows, output folder, table text)``.

    Args:
        protocol: "upstream" (the paper's protocol, :data:`UPSTREAM_SETTINGS`) or "app" (the
            config as it is); None = the suite's default (paper: upstream, loops: app).
        suite: "paper" (the upstream evaluation lists) or "loops" (TUM loop-closure sequences).
    Raises:
        ConfigError: the config is invalid, its source type has no list in the suite, or the
            protocol / suite is unknown.
    """
    from slam3r_app.config import load_config

    if suite not in SUITES:
        raise ConfigError(f"bench: unknown suite '{suite}' (suites: {', '.join(SUITES)})")
    protocol = protocol or SUITE_DEFAULT_PROTOCOL[suite]
    if protocol not in RUN_PROTOCOLS:
        raise ConfigError(f"bench: unknown protocol '{protocol}' (protocols: {', '.join(RUN_PROTOCOLS)})")
    if suite == "loops" and protocol == "upstream":
        raise ConfigError("bench: the loops suite has no upstream protocol (the paper does not evaluate these "
                          "sequences, and keeping every one of their thousands of frames in the causal cache does "
                          "not fit a GPU): use --protocol app")
    overrides = list(overrides or [])
    base = load_config(config, overrides=overrides)  # fail fast on global config errors
    stype = base.run.source.type
    lists = SUITES[suite]
    proto = lists.get(stype)
    if proto is None:
        raise ConfigError(f"{base.where('source.type')}: bench has no protocol for source type '{stype}' "
                          f"in the {suite} suite (source types: {', '.join(lists)})")
    try:
        bench_opts = BenchOptions.model_validate(base.sections.get(SECTION) or {})
    except ValidationError as e:
        from slam3r_app.config import pydantic_message

        err = e.errors()[0]
        raise ConfigError(f"{base.origin(SECTION)}: bench.{'.'.join(map(str, err['loc']))}: "
                          f"{pydantic_message(err)}") from None
    root = Path(root if root is not None else bench_opts.root)
    seqs = list(proto.sequences)
    wanted = sequences or bench_opts.sequences
    if wanted:
        unknown = [s for s in wanted if s not in seqs]
        if unknown:
            raise ConfigError(f"bench: {', '.join(unknown)} not in the {stype} protocol (sequences: {', '.join(seqs)})")
        seqs = [s for s in seqs if s in wanted]
    tag = stype if suite == "paper" else f"{stype}-{suite}"
    out = Path(out) if out else Path(f"runs/bench-{tag}-{protocol}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    mem_kind = ""
    for seq in seqs:
        path, looked = find_sequence(root, proto, seq, base.run.source.sintel_pass)
        if path is None:
            rows.append(Row(seq, status="missing", note="not found: " + ", ".join(str(p) for p in looked[:3])))
            log.warning("bench: %s is missing (looked in %s)", seq, ", ".join(str(p) for p in looked))
            continue
        log.info("bench: %s (%s)", seq, path)
        row = run_sequence(config, path, proto, seq, out, overrides, protocol)
        mem_kind = mem_kind or _peak_memory()[1]
        rows.append(row)
        write_reports(rows, out, config, stype, proto, root, mem_kind, protocol)  # partial results survive a crash
    text = write_reports(rows, out, config, stype, proto, root, mem_kind, protocol)
    return rows, out, text


def mean_row(rows: list[Row]) -> Row:
    ok = [r for r in rows if r.status == "ok"]
    mean = Row("mean", status=f"{len(ok)}/{len(rows)} ok")
    for col in METRIC_COLS:
        vals = [getattr(r, col) for r in ok if getattr(r, col) is not None]
        setattr(mean, col, sum(vals) / len(vals) if vals else None)
    frames = [r.frames for r in ok if r.frames is not None]
    mean.frames = sum(frames) if frames else None
    return mean


def _fmt(v: Any, col: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return f"{v:.2f}" if col in ("fps", "peak_mem_gb") else f"{v:.4f}" if col != "rpe_rot" else f"{v:.3f}"
    return str(v)


def format_markdown(rows: list[Row]) -> str:
    header = ("sequence", "status", "frames", "ATE (m)", "RPE trans (m)", "RPE rot (deg)", "frames/s", "peak mem (GB)")
    cols = ("sequence", "status", "frames", "ate", "rpe_trans", "rpe_rot", "fps", "peak_mem_gb")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows + [mean_row(rows)]:
        cells = [_fmt(getattr(r, c), c) for c in cols]
        if r.sequence == "mean":
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows + [mean_row(rows)]:
        w.writerow(["" if getattr(r, c) is None else getattr(r, c) for c in COLUMNS])
    return buf.getvalue()


PROTOCOL_NOTES = {
    "upstream": "protocol `upstream` (the paper's): eval preprocessing (518 long side, LANCZOS, no crop), "
                "causal, every frame kept in the KV cache, float32 with TF32 (" + ", ".join(UPSTREAM_SETTINGS) + ")",
    "app": "protocol `app`: the config as it is",
}


def write_reports(rows: list[Row], out: Path, config: str, stype: str, proto: Protocol, root: Path, mem_kind: str,
                  protocol: str = "upstream") -> str:
    table = format_markdown(rows)
    notes = [f"- {r.sequence}: {r.status}: {r.note}" for r in rows if r.note]
    md = (f"# slam3r benchmark: {proto.name}\n\n"
          f"config `{config}`, source type `{stype}`, dataset root `{root}`, {time.strftime('%Y-%m-%d %H:%M:%S')}\n\n"
          f"{PROTOCOL_NOTES[protocol]}.\n\n"
          f"ATE: translation RMSE after Sim(3) Umeyama alignment; RPE: consecutive frames, Sim(3) aligned (evo).\n"
          f"Mean over sequences with status ok. Peak memory: {mem_kind or 'n/a'}.\n\n" + table
          + ("\n" + "\n".join(notes) + "\n" if notes else ""))
    write_text(out / "bench.md", md)
    write_text(out / "bench.csv", format_csv(rows))
    return table


# ----------------------------------------------------------------------------- hooks
@hookimpl
def slam3r_config_sections():
    return {SECTION: BenchOptions}


def cmd_bench(args) -> int:
    seqs = [s for part in (args.sequences or []) for s in part.split(",") if s]
    rows, out, table = run_bench(args.config, root=args.root, overrides=args.overrides, out=args.out,
                                 sequences=seqs or None, protocol=args.protocol, suite=args.suite)
    print(table, end="")
    for r in rows:
        if r.status != "ok":
            print(f"{r.sequence}: {r.status}" + (f" ({r.note})" if r.note else ""))
    print(f"saved {out / 'bench.md'} and {out / 'bench.csv'}")
    return 0 if any(r.status == "ok" for r in rows) else 1


@hookimpl
def slam3r_register_commands(subparsers):
    p = subparsers.add_parser(
        "bench", help="run the upstream evaluation protocol (TUM dynamics / Bonn / Sintel) and tabulate ATE / RPE",
        description="Run every sequence of the upstream STream3R pose-evaluation lists for the config's "
                    "source.type (tum: 8 fr3 dynamic sequences, 90 frames at stride 3; bonn: 5 sequences, frames "
                    "30-140; sintel: 14 sequences, all frames), by default under the paper's protocol (eval "
                    "preprocessing, causal, every frame in the cache, float32 + TF32), and save a table (bench.md, "
                    "bench.csv). --suite loops runs the TUM loop-closure sequences instead. Missing sequences are "
                    "listed as missing.",
        epilog="exit codes: 0 when at least one sequence ran; 1 when none did (every sequence missing or failed) "
               "or on a config error; 2 command-line usage")
    p.add_argument("--protocol", choices=RUN_PROTOCOLS, default=None,
                   help="upstream: the paper's protocol (default for --suite paper); app: the config as it is "
                        "(default for --suite loops)")
    p.add_argument("--suite", choices=tuple(SUITES), default="paper",
                   help="paper: the upstream evaluation lists (default); loops: TUM fr1_room, fr2_desk, "
                        "fr3_long_office_household, all frames")
    p.add_argument("--config", "-c", required=True, help="config file or bare name (tum.yaml, bonn.yaml, sintel.yaml)")
    p.add_argument("--root", default=None, help="dataset root holding tum/, bonn/, sintel/ (default: bench.root, data)")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every sequence (after the protocol's)")
    p.add_argument("--out", "-o", default=None, help="output folder (default runs/bench-<type>-<time>)")
    p.add_argument("--sequences", action="append", default=[], metavar="A,B",
                   help="only these sequences of the protocol (repeatable or comma-separated)")
    p.set_defaults(handler=cmd_bench)
