"""Benchmark runner (plugin ``bench``): the upstream STream3R pose-evaluation protocol.

    run_slam.py bench --config tum.yaml [--protocol upstream|app] [--suite paper|loops] [--root data]
                      [--set key=value ...] [--out DIR] [--sequences a,b] [--workers N [--address ADDR]]
    run_slam.py batch --config CONFIG [--sources LIST] [PATH ...] [--set ...] [--out DIR] [--workers N ...]

Runs every sequence of a suite's list for the config's ``source.type`` through the normal
pipeline (:func:`slam3r_app.frame_loop.run`, one run folder per sequence under ``--out``, each with its
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

Many at once (:mod:`slam3r_plugins.cluster`, optional extra ``cluster``): with ``--workers N`` the
runs are Ray tasks, at most N at a time, on a local Ray (no ``--address``) or a cluster; each task
writes the same run folder the sequential command writes, and the table gains each run's node and
wall time. ``batch`` maps every recording of a list (folders, videos, bags) with one config the same
way (sequentially, or with ``--workers``) and tabulates the same columns (ATE / RPE where the source
has ground truth).

Interrupts: Ctrl-C (or SIGTERM) stops the run in progress after its current frame (it writes its
outputs), starts no further run, writes the table of what finished (the rest ``cancelled``) and
exits 130 (143).
"""
from __future__ import annotations

import csv
import io
import logging
import math
import resource
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

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
    "model.cache_frames=null",  # the paper streams every frame into an unbounded causal cache
)


class BenchOptions(BaseModel):
    """``bench:`` defaults of the ``bench`` command."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field("data", description="dataset root holding tum/, bonn/, sintel/ (as the upstream eval)")
    sequences: Optional[list[str]] = Field(None, description="run only these sequences of the protocol's list")


@dataclass
class Row:
    sequence: str
    status: str = "ok"  # ok | missing | error | no GT | cancelled
    frames: Optional[int] = None
    ate: Optional[float] = None
    rpe_trans: Optional[float] = None
    rpe_rot: Optional[float] = None
    fps: Optional[float] = None
    peak_mem_gb: Optional[float] = None
    run_folder: str = ""
    note: str = ""
    wall_s: Optional[float] = None  # the run's wall time: config, model, frames, outputs
    node: str = ""  # the host that ran it
    extra: dict[str, Any] = field(default_factory=dict)


COLUMNS = ("sequence", "status", "frames", "ate", "rpe_trans", "rpe_rot", "fps", "peak_mem_gb", "run_folder", "note",
           "wall_s", "node")
METRIC_COLS = ("ate", "rpe_trans", "rpe_rot", "fps", "peak_mem_gb", "wall_s")


def find_sequence(root: Path, proto: Protocol, seq: str,
                  sintel_pass: str = "final") -> tuple[Optional[Path], list[Path]]:
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
    except RuntimeError:  # pragma: no cover - a broken CUDA set-up
        return None
    return None


def _reset_peak() -> None:
    """Start this run's peak memory: CUDA's peak counter, and on Linux the process's peak resident
    set (``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``), so that a run's peak is its own
    even when runs share a process (the sequential bench, a reused Ray worker)."""
    torch = _torch_cuda()
    if torch is not None:
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux, or a kernel without it: the process's lifetime peak (ru_maxrss) is reported


def _peak_rss() -> tuple[float, str]:
    """The process's peak resident memory in GB since :func:`_reset_peak` (Linux ``VmHWM``), else
    over its lifetime (``ru_maxrss``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9, "peak RSS of the run (CPU; VmHWM, reset per run)"
    except (OSError, ValueError, IndexError):
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB; macOS: bytes
    b = kb if sys.platform == "darwin" else kb * 1024
    return b / 1e9, "process peak RSS (CPU; not reset between sequences)"


def _peak_memory() -> tuple[float, str]:
    """Peak GPU memory of this run (when CUDA is in use), else the process's peak resident memory."""
    torch = _torch_cuda()
    if torch is not None:
        return torch.cuda.max_memory_allocated() / 1e9, "GPU (torch max_memory_allocated)"
    return _peak_rss()


# ----------------------------------------------------------------------------- jobs
def sequence_overrides(path: Path, proto: Protocol, seq: str, protocol: str) -> list[str]:
    """The ``--set`` overrides that put one sequence of a suite under a run protocol (the user's
    overrides come after these)."""
    sets = [f"source.path={path}", f"source.first={proto.first}", f"source.stride={proto.stride}",
            f"source.max_frames={'null' if proto.max_frames is None else proto.max_frames}",
            f"name={seq}", "progress=false"]
    if protocol == "upstream":
        sets += list(UPSTREAM_SETTINGS)
    return sets


@dataclass(frozen=True)
class Job:
    """One run of a list: the run folder ``out``, made from ``config`` with the job's own overrides
    ``sets`` (source, frame selection, protocol), then the user's ``overrides``, then ``device``
    (the device a Ray task was given: :func:`slam3r_plugins.cluster.task_resources`).

    ``gt_required``: a run without ground truth is ``no GT`` (bench) or ``ok`` (batch)."""

    name: str
    config: str
    sets: tuple[str, ...]
    out: str
    overrides: tuple[str, ...] = ()
    device: tuple[str, ...] = ()
    gt_required: bool = True


def run_job(job: Job) -> Row:
    """Run one job in this process (the sequential bench, or inside a Ray task). Every failure is a
    row (``error``), never an exception; a run stopped by Ctrl-C / SIGTERM is ``cancelled`` (its
    outputs are written; ``row.extra["signal"]`` names the signal). An interrupt before the run's
    own handlers are installed (config, model) propagates as ``KeyboardInterrupt``."""
    from slam3r_app.config import load_config
    from slam3r_app.frame_loop import run
    from slam3r_app.pipeline import Pipeline

    row = Row(job.name, run_folder=job.out, node=socket.gethostname())
    t0 = time.perf_counter()
    try:
        cfg = load_config(job.config, overrides=list(job.sets) + list(job.overrides) + list(job.device))
        pipe = Pipeline(cfg, output=job.out)
        _reset_peak()
        result = run(cfg, pipeline=pipe)
    except Slam3rError as e:
        row.status, row.note = "error", str(e).splitlines()[0][:300]
        row.wall_s = time.perf_counter() - t0
        return row
    except Exception as e:  # a crash in one sequence must not end the benchmark
        log.exception("bench: %s crashed", job.name)
        row.status, row.note = "error", f"{type(e).__name__}: {e}"[:300]
        row.wall_s = time.perf_counter() - t0
        return row
    row.wall_s = time.perf_counter() - t0
    row.peak_mem_gb, _ = _peak_memory()
    row.frames = result.frames_seen
    row.fps = result.frames_seen / result.seconds if result.seconds > 0 else None
    m = result.metrics
    row.ate, row.rpe_trans, row.rpe_rot = m.get("ate"), m.get("rpe_trans"), m.get("rpe_rot")
    signal_name = result.info.get("signal")
    if result.ended_by == "error":
        row.status, row.note = "error", result.stop_reason[:300]
    elif signal_name:
        row.status, row.note = "cancelled", f"stopped by {signal_name} after {row.frames} frames (outputs written)"
        row.extra["signal"] = signal_name
    elif row.ate is None and "evaluation_error" in m:
        row.status, row.note = "error", str(m["evaluation_error"])[:300]
    elif row.ate is None and job.gt_required:
        row.status, row.note = "no GT", "no ATE (no ground truth, or the evaluation plugin is off)"
    elif row.ate is None:
        row.note = "no ground truth: no ATE / RPE"
    if result.plugin_errors:
        row.note = (row.note + "; " if row.note else "") + "plugin errors: " + ", ".join(sorted(result.plugin_errors))
    if "metric_scale" in m:
        row.extra["metric_scale"] = m["metric_scale"]
    return row


def run_sequence(config: str, path: Path, proto: Protocol, seq: str, out: Path, overrides: list[str],
                 protocol: str = "upstream") -> Row:
    """One sequence of a suite in this process (:func:`run_job` of its :class:`Job`)."""
    return run_job(Job(seq, config, tuple(sequence_overrides(path, proto, seq, protocol)), str(out / seq),
                       tuple(overrides)))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM ended a bench or batch early; its table (what finished, the rest
    ``cancelled``) is written. ``signal`` is ``SIGINT`` or ``SIGTERM``."""

    def __init__(self, signal_name: str, rows: list[Row], out: Path, text: str) -> None:
        super().__init__(signal_name)
        self.signal, self.rows, self.out, self.text = signal_name, rows, out, text


def _abs_config(config: str) -> str:
    """A config file named by a path is passed to Ray workers absolute (a bare name resolves against
    the installed configs/ everywhere)."""
    p = Path(config)
    return str(p.absolute()) if p.is_file() else config


def _cancelled_row(job: Job, why: str) -> Row:
    started = Path(job.out).is_dir() and any(Path(job.out).iterdir())
    note = f"{why}; partial run folder kept" if started else f"{why}; not started"
    return Row(job.name, status="cancelled", run_folder=job.out if started else "", note=note)


def _refuse_used_folder(job: Job) -> Optional[Row]:
    """The error row of a run folder that already holds a run (what the sequential run would say), so
    that a Ray task may clear leftovers of its own earlier attempt (see :func:`_run_job_fresh`)."""
    from slam3r_app.run_folder import RunFolder

    p = Path(job.out)
    if not (p.is_dir() and any(e.name != ".slam3r.lock" for e in p.iterdir())):
        return None
    try:
        RunFolder(p).close()
    except Slam3rError as e:
        return Row(job.name, status="error", run_folder=job.out, note=str(e).splitlines()[0][:300])
    return None


def _run_job_fresh(job: Job) -> Row:
    """:func:`run_job` in a Ray task. The driver checked that the run folder was new or empty when it
    submitted the task, so anything in it now was left by an earlier attempt of this task (a worker
    that died: Ray retries it) and is cleared first."""
    from slam3r_app.run_folder import clear_run_folder

    try:
        clear_run_folder(job.out)
    except Slam3rError as e:
        return Row(job.name, status="error", run_folder=job.out, note=str(e).splitlines()[0][:300],
                   node=socket.gethostname())
    return run_job(job)


def execute(jobs: list[Job], base: Any, report: Callable[[list[Optional[Row]]], None], workers: Optional[int] = None,
            address: Optional[str] = None, desc: str = "runs") -> tuple[list[Row], str, str]:
    """Run ``jobs`` one after the other in this process (``workers`` None) or as Ray tasks.

    Args:
        base: the loaded config (frontend and device decide a task's resources; ``cluster:`` section).
        report: called with the rows so far (None where not finished) after each one.
    Returns:
        ``(rows in job order, first interrupt's name or "", the Ray note for the table or "")``.
    """
    if workers is None and not address:
        return _execute_here(jobs, report) + ("",)
    return _execute_on_ray(jobs, base, report, workers, address, desc)


def _need_ray(workers: Optional[int], address: Optional[str]) -> None:
    """Without the ``cluster`` extra, ``--workers`` / ``--address`` fail first, with one line naming it."""
    if workers is not None or address:
        from slam3r_plugins.cluster import import_ray

        import_ray()


def _execute_here(jobs: list[Job], report: Callable[[list[Optional[Row]]], None]) -> tuple[list[Row], str]:
    from slam3r_app.signals import Terminated

    rows: list[Optional[Row]] = [None] * len(jobs)
    signal_name = ""
    for k, job in enumerate(jobs):
        log.info("bench: %s (%s)", job.name, job.out)
        try:
            row = run_job(job)
        except KeyboardInterrupt as e:  # during a run's start-up, before its own handlers
            signal_name = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
            row = _cancelled_row(job, f"interrupted ({signal_name}) during start-up")
        rows[k] = row
        signal_name = signal_name or row.extra.get("signal", "")
        if signal_name:
            for j in range(k + 1, len(jobs)):
                rows[j] = _cancelled_row(jobs[j], f"cancelled ({signal_name})")
        report(rows)  # partial results survive a crash
        if signal_name:
            break
    return [r for r in rows if r is not None], signal_name


RAY_MEM_KIND = ("per task: GPU max_memory_allocated when on CUDA, else the peak RSS of the task's run (VmHWM, "
                "reset per run; Linux)")


def _execute_on_ray(jobs: list[Job], base: Any, report: Callable[[list[Optional[Row]]], None],
                    workers: Optional[int], address: Optional[str], desc: str) -> tuple[list[Row], str, str]:
    from dataclasses import replace

    from slam3r_plugins import cluster

    try:
        opts = cluster.ClusterOptions.model_validate(base.sections.get(cluster.SECTION) or {})
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"{base.origin(cluster.SECTION)}: cluster.{'.'.join(map(str, err['loc']))}: "
                          f"{err['msg']}") from None
    address = address or opts.address
    n = workers if workers is not None else max(1, len(jobs))
    if n < 1:
        raise ConfigError(f"--workers must be at least 1 (got {n})")
    rows: list[Optional[Row]] = [None] * len(jobs)
    todo: list[int] = []
    for k, job in enumerate(jobs):
        refused = _refuse_used_folder(job)
        if refused is not None:
            rows[k] = refused
        else:
            todo.append(k)
    if not todo:
        report(rows)
        return [r for r in rows if r is not None], "", ""
    rgbd_device = str((base.sections.get("rgbd") or {}).get("device", "auto"))
    with cluster.connect(address, n, opts) as conn:
        res = cluster.task_resources(base.run.frontend, base.run.model.device, rgbd_device, opts, conn.gpus)
        if res.num_gpus > 0 and conn.gpus == 0 and conn.started_here:
            raise ConfigError(f"the runs need {res.num_gpus:g} GPU each ({res.why}) but this machine's Ray has no "
                              f"GPU: set model.device=cpu (or cluster.use_gpu=no), or give --address of a cluster "
                              f"with GPUs")
        if res.num_gpus > 0 and conn.gpus == 0:
            log.warning("the runs need %g GPU each (%s) but the Ray cluster has none now: they wait until GPU "
                        "nodes join", res.num_gpus, res.why)
        where = "a local Ray started here" if conn.started_here else f"Ray at {conn.address}"
        log.info("%d run(s) as Ray tasks on %s, at most %d at a time; per task %g CPU, %g GPU (%s)", len(todo),
                 where, n, res.num_cpus, res.num_gpus, res.why)
        if conn.dashboard_url:
            log.info("Ray dashboard: %s", conn.dashboard_url)
        submitted = [replace(jobs[k], device=res.overrides) for k in todo]

        def on_outcome(i: int, oc: Any) -> None:
            rows[todo[i]] = _row_of(submitted[i], oc)
            report(rows)

        progress = bool(base.run.progress)
        batch = cluster.run_all(conn, _run_job_fresh, submitted, n, res, opts, on_outcome=on_outcome,
                                progress=progress, desc=desc)
        for i, oc in enumerate(batch.outcomes):
            if rows[todo[i]] is None:
                rows[todo[i]] = _row_of(submitted[i], oc)
        note = (f"Ran as Ray tasks on {where}, at most {n} at a time; per task {res.num_cpus:g} CPU and "
                f"{res.num_gpus:g} GPU ({res.why}), {opts.max_retries} retr{'y' if opts.max_retries == 1 else 'ies'} "
                f"after a worker died. Node and wall time per run.")
    report(rows)
    return [r for r in rows if r is not None], batch.signal, note


def _row_of(job: Job, oc: Any) -> Row:
    """The table row of a Ray task's outcome (:class:`slam3r_plugins.cluster.Outcome`)."""
    if oc.state == "done":
        row = oc.value
        row.node = oc.info.get("node", row.node)
        row.wall_s = oc.info.get("wall_s", row.wall_s)
        if row.frames is not None and not Path(row.run_folder or job.out).is_dir():  # it ran, elsewhere
            row.note = ((row.note + "; ") if row.note else "") + (
                f"run folder written on {row.node} is not visible here (is the output folder on a shared file system?)")
        return row
    if oc.state == "failed":
        return Row(job.name, status="error", run_folder=job.out, note=oc.error)
    if oc.state == "cancelled":
        return _cancelled_row(job, "cancelled" + (f" ({oc.error})" if oc.error else ""))
    return _cancelled_row(job, "cancelled")


# ----------------------------------------------------------------------------- bench
def run_bench(config: str, root: Optional[str | Path] = None, overrides: Optional[list[str]] = None,
              out: Optional[str | Path] = None, sequences: Optional[list[str]] = None,
              protocol: Optional[str] = None, suite: str = "paper", workers: Optional[int] = None,
              address: Optional[str] = None) -> tuple[list[Row], Path, str]:
    """Run a suite's sequence list for ``config``'s source type under a run protocol; returns
    ``(rows, output folder, table text)``.

    Args:
        protocol: "upstream" (the paper's protocol, :data:`UPSTREAM_SETTINGS`) or "app" (the
            config as it is); None = the suite's default (paper: upstream, loops: app).
        suite: "paper" (the upstream evaluation lists) or "loops" (TUM loop-closure sequences).
        workers: None: one sequence after the other in this process; N: Ray tasks, at most N at a
            time (:mod:`slam3r_plugins.cluster`).
        address: the Ray cluster (``auto``, ``HOST:PORT``, ``ray://HOST:10001``); None: a local Ray
            (only with ``workers``), or ``cluster.address``.
    Raises:
        ConfigError: the config is invalid, its source type has no list in the suite, or the
            protocol / suite is unknown; Ray is needed and not installed.
        Interrupted: Ctrl-C / SIGTERM; the table of what finished is written first.
    """
    from slam3r_app.config import load_config

    _need_ray(workers, address)
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
    root = Path(root if root is not None else bench_opts.root).absolute()  # Ray workers have their own cwd
    seqs = list(proto.sequences)
    wanted = sequences or bench_opts.sequences
    if wanted:
        unknown = [s for s in wanted if s not in seqs]
        if unknown:
            raise ConfigError(f"bench: {', '.join(unknown)} not in the {stype} protocol (sequences: {', '.join(seqs)})")
        seqs = [s for s in seqs if s in wanted]
    tag = stype if suite == "paper" else f"{stype}-{suite}"
    out = Path(out) if out else Path(f"runs/bench-{tag}-{protocol}-{time.strftime('%Y%m%d-%H%M%S')}")
    out = out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    rows: list[Optional[Row]] = []
    jobs: list[Job] = []
    slots: list[int] = []
    for seq in seqs:
        path, looked = find_sequence(root, proto, seq, base.run.source.sintel_pass)
        if path is None:
            rows.append(Row(seq, status="missing", note="not found: " + ", ".join(str(p) for p in looked[:3])))
            log.warning("bench: %s is missing (looked in %s)", seq, ", ".join(str(p) for p in looked))
            continue
        slots.append(len(rows))
        rows.append(None)
        jobs.append(Job(seq, _abs_config(config), tuple(sequence_overrides(path, proto, seq, protocol)),
                        str(out / seq), tuple(overrides)))
    header = _bench_header(config, stype, proto, root, protocol)
    state = {"mem": "", "ray": ""}

    def merged(done: list[Optional[Row]]) -> list[Row]:
        full = list(rows)
        for k, r in zip(slots, done, strict=True):
            full[k] = r
        return [r for r in full if r is not None]

    def report(done: list[Optional[Row]]) -> None:
        state["mem"] = state["mem"] or (_peak_memory()[1] if workers is None and not address else RAY_MEM_KIND)
        write_reports(merged(done), out, header, state["mem"], state["ray"])

    done, signal_name, state["ray"] = execute(jobs, base, report, workers, address, desc="bench")
    done_full: list[Optional[Row]] = list(done) + [None] * (len(jobs) - len(done))
    final = merged(done_full)
    text = write_reports(final, out, header, state["mem"] or "n/a", state["ray"])
    if signal_name:
        raise Interrupted(signal_name, final, out, text)
    return final, out, text


# ----------------------------------------------------------------------------- batch
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
BAG_SUFFIXES = (".bag", ".db3", ".mcap")


def infer_source_type(path: Path) -> str:
    """``--type auto``: ``tum`` for a folder with ``rgb.txt`` (TUM / Bonn layout), ``rosbag`` for a
    ``.bag`` / ``.db3`` / ``.mcap`` file or a ROS 2 bag folder (``metadata.yaml``), ``video`` for a
    video file, ``folder`` for any other folder (images)."""
    if path.is_dir():
        if (path / "rgb.txt").is_file():
            return "tum"
        if (path / "metadata.yaml").is_file():
            return "rosbag"
        return "folder"
    suffix = path.suffix.lower()
    if suffix in BAG_SUFFIXES:
        return "rosbag"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    raise ConfigError(f"batch: cannot tell the source type of {path} (not a folder, a video "
                      f"{', '.join(VIDEO_SUFFIXES)} or a bag {', '.join(BAG_SUFFIXES)}): give --type")


def read_source_list(list_file: str | Path) -> list[Path]:
    """A sources list: one recording per line (folder, video, bag), ``#`` comments and blank lines
    skipped; relative paths are relative to the list file's folder. Returned absolute."""
    lf = Path(list_file)
    try:
        text = lf.read_text()
    except OSError as e:
        raise ConfigError(f"batch: cannot read the sources list {lf}: {e.strerror or e}") from None
    paths = []
    for line in text.splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            p = Path(s).expanduser()
            paths.append((p if p.is_absolute() else lf.parent / p).absolute())
    return paths


def _unique_names(paths: list[Path]) -> list[str]:
    names: list[str] = []
    seen: dict[str, int] = {}
    for p in paths:
        base = (p.stem if p.is_file() else p.name) or "recording"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


def run_batch(config: str, sources: Optional[list[str | Path]] = None, source_list: Optional[str | Path] = None,
              overrides: Optional[list[str]] = None, out: Optional[str | Path] = None,
              source_type: Optional[str] = None, workers: Optional[int] = None,
              address: Optional[str] = None) -> tuple[list[Row], Path, str]:
    """Map every recording of a list with one config; returns ``(rows, output folder, table text)``.

    Each recording gets the run folder ``out/<name>`` (its folder name or file stem; ``-2``, ``-3``
    for repeats) with ``source.path`` set to it (and ``source.type`` to ``source_type`` when given;
    ``auto``: :func:`infer_source_type`); the user's overrides apply after. The table has the bench's
    columns; ATE / RPE where the source has ground truth (a recording without is still ``ok``).

    Raises:
        ConfigError: no recordings, one that does not exist, a bad config; Ray missing.
        Interrupted: Ctrl-C / SIGTERM; the table of what finished is written first.
    """
    from slam3r_app.config import load_config

    _need_ray(workers, address)
    paths = [Path(p).expanduser().absolute() for p in (sources or [])]
    if source_list is not None:
        paths += read_source_list(source_list)
    if not paths:
        raise ConfigError("batch: no recordings: give --sources LIST and / or paths")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ConfigError(f"batch: not found: {', '.join(missing[:5])}" + (f" and {len(missing) - 5} more"
                                                                         if len(missing) > 5 else ""))
    overrides = list(overrides or [])
    base = load_config(config, overrides=overrides)
    out = Path(out) if out else Path(f"runs/batch-{time.strftime('%Y%m%d-%H%M%S')}")
    out = out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for name, p in zip(_unique_names(paths), paths, strict=True):
        sets = [f"source.path={p}", f"name={name}", "progress=false"]
        if source_type:
            sets.insert(0, f"source.type={infer_source_type(p) if source_type == 'auto' else source_type}")
        jobs.append(Job(name, _abs_config(config), tuple(sets), str(out / name), tuple(overrides), gt_required=False))
    header = (f"# slam3r batch: {len(jobs)} recording(s)\n\n"
              f"config `{config}`, source type `{source_type or base.run.source.type}`"
              + (f", list `{source_list}`" if source_list else "") + f", {time.strftime('%Y-%m-%d %H:%M:%S')}\n\n"
              "ATE / RPE where the recording has ground truth (evo; Sim(3) aligned).\n")
    state = {"mem": "", "ray": ""}

    def report(done: list[Optional[Row]]) -> None:
        state["mem"] = state["mem"] or (_peak_memory()[1] if workers is None and not address else RAY_MEM_KIND)
        write_reports([r for r in done if r is not None], out, header, state["mem"], state["ray"])

    done, signal_name, state["ray"] = execute(jobs, base, report, workers, address, desc="batch")
    text = write_reports(done, out, header, state["mem"] or "n/a", state["ray"])
    if signal_name:
        raise Interrupted(signal_name, done, out, text)
    return done, out, text


# ----------------------------------------------------------------------------- tables
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
        if col in ("fps", "peak_mem_gb", "wall_s"):
            return f"{v:.2f}"
        return f"{v:.4f}" if col != "rpe_rot" else f"{v:.3f}"
    return str(v)


def format_markdown(rows: list[Row], wide: bool = False) -> str:
    """The table; ``wide`` adds each run's wall time and node (runs on Ray)."""
    header = ["sequence", "status", "frames", "ATE (m)", "RPE trans (m)", "RPE rot (deg)", "frames/s", "peak mem (GB)"]
    cols = ["sequence", "status", "frames", "ate", "rpe_trans", "rpe_rot", "fps", "peak_mem_gb"]
    if wide:
        header += ["wall (s)", "node"]
        cols += ["wall_s", "node"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows + [mean_row(rows)]:
        cells = [_fmt(getattr(r, c) if getattr(r, c) != "" else None, c) for c in cols]
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


def _bench_header(config: str, stype: str, proto: Protocol, root: Path, protocol: str) -> str:
    return (f"# slam3r benchmark: {proto.name}\n\n"
            f"config `{config}`, source type `{stype}`, dataset root `{root}`, {time.strftime('%Y-%m-%d %H:%M:%S')}\n\n"
            f"{PROTOCOL_NOTES[protocol]}.\n\n"
            f"ATE: translation RMSE after Sim(3) Umeyama alignment; RPE: consecutive frames, Sim(3) aligned (evo).\n")


def write_reports(rows: list[Row], out: Path, header: str, mem_kind: str, ray_note: str = "") -> str:
    """``bench.md`` (``header``, the table, a note per row that has one) and ``bench.csv``, atomically;
    returns the table. ``ray_note`` (runs on Ray) adds a line and the node / wall columns."""
    table = format_markdown(rows, wide=bool(ray_note))
    notes = [f"- {r.sequence}: {r.status}: {r.note}" for r in rows if r.note]
    md = (header + f"Mean over runs with status ok. Peak memory: {mem_kind or 'n/a'}.\n"
          + (f"{ray_note}\n" if ray_note else "") + "\n" + table
          + ("\n" + "\n".join(notes) + "\n" if notes else ""))
    write_text(out / "bench.md", md)
    write_text(out / "bench.csv", format_csv(rows))
    return table


# ----------------------------------------------------------------------------- hooks
@hookimpl
def slam3r_config_sections():
    from slam3r_plugins import cluster

    return {SECTION: BenchOptions, cluster.SECTION: cluster.ClusterOptions}


def _print_result(rows: list[Row], out: Path, table: str) -> None:
    print(table, end="")
    for r in rows:
        if r.status != "ok":
            print(f"{r.sequence}: {r.status}" + (f" ({r.note})" if r.note else ""))
    print(f"saved {out / 'bench.md'} and {out / 'bench.csv'}")


def _interrupted(e: Interrupted) -> int:
    from slam3r_app.signals import exit_code_for

    _print_result(e.rows, e.out, e.text)
    done = sum(r.status not in ("cancelled", "missing") for r in e.rows)
    print(f"interrupted ({e.signal}): {done} run(s) finished, the rest cancelled; table saved", file=sys.stderr)
    return exit_code_for(e.signal)


def cmd_bench(args) -> int:
    seqs = [s for part in (args.sequences or []) for s in part.split(",") if s]
    try:
        rows, out, table = run_bench(args.config, root=args.root, overrides=args.overrides, out=args.out,
                                     sequences=seqs or None, protocol=args.protocol, suite=args.suite,
                                     workers=args.workers, address=args.address)
    except Interrupted as e:
        return _interrupted(e)
    _print_result(rows, out, table)
    return 0 if any(r.status == "ok" for r in rows) else 1


def cmd_batch(args) -> int:
    try:
        rows, out, table = run_batch(args.config, sources=args.paths, source_list=args.sources,
                                     overrides=args.overrides, out=args.out, source_type=args.type,
                                     workers=args.workers, address=args.address)
    except Interrupted as e:
        return _interrupted(e)
    _print_result(rows, out, table)
    return 0 if all(r.status == "ok" for r in rows) else 1


def _workers(text: str) -> int:
    import argparse

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers takes a whole number, got '{text}'") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--workers must be at least 1, got {n}")
    return n


def _add_ray_args(p) -> None:
    p.add_argument("--workers", "-j", type=_workers, default=None, metavar="N",
                   help="run N at a time as Ray tasks (optional extra: pip install 'slam3r[cluster]'); "
                        "default: one after the other in this process")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: cluster.address, else a "
                        "local Ray started here); paths must be readable by the workers")


@hookimpl
def slam3r_register_commands(subparsers):
    p = subparsers.add_parser(
        "bench", help="run the upstream evaluation protocol (TUM dynamics / Bonn / Sintel) and tabulate ATE / RPE",
        description="Run every sequence of the upstream STream3R pose-evaluation lists for the config's "
                    "source.type (tum: 8 fr3 dynamic sequences, 90 frames at stride 3; bonn: 5 sequences, frames "
                    "30-140; sintel: 14 sequences, all frames), by default under the paper's protocol (eval "
                    "preprocessing, causal, every frame in the cache, float32 + TF32), and save a table (bench.md, "
                    "bench.csv). --suite loops runs the TUM loop-closure sequences instead. Missing sequences are "
                    "listed as missing. --workers N runs N sequences at a time as Ray tasks.",
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
    _add_ray_args(p)
    p.set_defaults(handler=cmd_bench)

    b = subparsers.add_parser(
        "batch", help="map every recording of a list (folders, videos, bags) with one config; one table",
        description="Map each recording (a folder, video file or ROS bag; from --sources LIST and / or the "
                    "paths given) with one config into its own run folder under --out, and tabulate frames, "
                    "frames/s, peak memory and, where the recording has ground truth, ATE / RPE (bench.md, "
                    "bench.csv). --workers N maps N at a time as Ray tasks. Exit 0 when every recording was "
                    "mapped, 1 when one failed (its row says why), 130 / 143 when interrupted.")
    b.add_argument("paths", nargs="*", metavar="PATH", help="recordings (relative to the current folder)")
    b.add_argument("--sources", default=None, metavar="LIST",
                   help="text file: one recording per line (# comments); relative to the list's folder")
    b.add_argument("--config", "-c", required=True, help="config file or bare name (folder.yaml, video.yaml, ...)")
    b.add_argument("--type", default=None, metavar="TYPE",
                   help="source.type for every recording (default: the config's); auto: from each path (tum for "
                        "a folder with rgb.txt, folder, video, rosbag)")
    b.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every recording")
    b.add_argument("--out", "-o", default=None, help="output folder (default runs/batch-<time>)")
    _add_ray_args(b)
    b.set_defaults(handler=cmd_batch)
