"""Many runs at once on Ray (optional extra ``cluster``): one Ray task per run folder.

Used by ``run_slam.py bench ... --workers N [--address ADDR]`` and ``run_slam.py batch``
(:mod:`slam3r_plugins.bench`); this module knows nothing of benchmarks: it runs ``fn(payload)``
for a list of payloads and reports, for each, its value or its failure, and where and how long
it ran.

Where Ray runs (:func:`connect`):

* no address: ``ray.init()`` starts a local Ray on this machine, with
  ``num_cpus = workers x cluster.cpus_per_task``, an object store of ``cluster.object_store_mb``
  (the tasks exchange a few kB: run folders are written by the workers themselves), its dashboard
  on 127.0.0.1 (``cluster.dashboard``), and shuts it down at the end;
* ``--address auto`` (a cluster this machine belongs to), ``HOST:PORT`` (its GCS) or
  ``ray://HOST:10001`` (Ray Client): an existing cluster, left running;
* a Ray already initialised in this process (an API user called ``ray.init()``): used as it is.

Resources of one task (:func:`task_resources`): a GPU task asks for ``cluster.gpus_per_task``
GPUs (1 by default; 0.5, 0.25 ... share one GPU between tasks, for small models), a CPU task for
none; both ask for ``cluster.cpus_per_task`` CPUs (and ``cluster.memory_gb`` when set). Ray sets
``CUDA_VISIBLE_DEVICES`` of a GPU task to the GPU it was given, so inside the task that GPU is
``cuda`` (= ``cuda:0``): the task's device key is overridden to ``cuda``, whatever index the
config names; a CPU task sees no GPU at all (``CUDA_VISIBLE_DEVICES`` is emptied before torch
or Open3D are imported), so that ``auto`` devices cannot take a GPU the scheduler did not give.

Faults: an exception inside ``fn`` is ``fn``'s business (the bench turns it into an ``error``
row, it is not retried: bad data fails the same way twice); a worker that dies (a crash, the
out-of-memory killer, a lost node) is retried ``cluster.max_retries`` times by Ray, then
reported as failed with Ray's error. A GPU task runs in a fresh worker process (``max_calls=1``:
the CUDA context and the memory torch's caching allocator holds go with the process, which GPUs
shared by fractional tasks need); CPU tasks reuse workers (the imports are paid once per worker;
runs share a process as in the sequential bench). ``cluster.fresh_worker`` overrides both.

Interrupts (driver, main thread): the first Ctrl-C / SIGTERM cancels the tasks not started and
asks the running ones to stop (Ray raises ``KeyboardInterrupt`` in them: a run stops after its
current frame and writes its outputs), waiting ``cluster.cancel_grace_s`` for them; a second
one kills the running tasks at once; a third exits at once. What finished is always returned.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field

from slam3r_app.errors import ConfigError

log = logging.getLogger("slam3r.cluster")

SECTION = "cluster"
EXTRA = "cluster"
INSTALL_HINT = f"pip install 'slam3r[{EXTRA}]'"
#: the lowest Ray this code is tested with (pyproject.toml's ``cluster`` extra says the same)
MIN_RAY = "2.10"


class ClusterOptions(BaseModel):
    """``cluster:`` how runs are spread over Ray (``--workers N``; ``--address``)."""

    model_config = ConfigDict(extra="forbid")

    address: Optional[str] = Field(None, description="Ray to use when --address is not given: null starts a local "
                                   "Ray; 'auto', 'HOST:PORT' or 'ray://HOST:10001' join an existing cluster")
    use_gpu: Literal["auto", "yes", "no"] = Field(
        "auto", description="auto: a GPU task when the frontend runs on CUDA (stream3r: model.device cuda, or auto "
        "on a cluster with GPUs; rgbd: rgbd.device cuda), else a CPU task; yes / no: every task")
    gpus_per_task: float = Field(1.0, gt=0, le=64, description="GPUs a GPU task asks for; fractions share one GPU "
                                 "between tasks (0.5: two runs per GPU, for small models)")
    cpus_per_task: float = Field(1.0, gt=0, le=1024, description="CPU cores each task asks for (the rgbd path and "
                                 "Open3D run on one when rgbd.deterministic)")
    memory_gb: Optional[float] = Field(None, gt=0, description="memory each task reserves for scheduling (Ray's "
                                       "'memory' resource); null: no reservation")
    max_retries: int = Field(1, ge=0, le=100, description="times a task is started again after its worker died "
                             "(crash, out of memory, lost node); errors inside a run are not retried")
    object_store_mb: int = Field(128, ge=80, le=1_000_000, description="object store of a local Ray started here")
    dashboard: bool = Field(True, description="start the Ray dashboard with a local Ray (its address is printed)")
    cancel_grace_s: float = Field(30.0, ge=0, le=3600, description="after Ctrl-C, how long running tasks get to "
                                  "stop after their current frame and write their outputs before they are killed")
    fresh_worker: Optional[bool] = Field(None, description="run each task in a new worker process: null = GPU "
                                         "tasks only (frees the GPU with the process), CPU tasks reuse workers; true "
                                         "when one Ray session runs CPU and GPU benches one after the other")


# ----------------------------------------------------------------------------- resources
@dataclass(frozen=True)
class TaskResources:
    """What one task asks Ray for, and the config overrides that make the run use it.

    Attributes:
        num_cpus: CPU cores (Ray's ``num_cpus``).
        num_gpus: GPUs (Ray's ``num_gpus``; fractions share a GPU); 0 for a CPU task.
        memory: bytes reserved for scheduling, or None.
        overrides: ``--set`` strings applied after the user's (the device the task was given).
        why: one line for the log (which key decided).
    """

    num_cpus: float
    num_gpus: float
    memory: Optional[int] = None
    overrides: tuple[str, ...] = ()
    why: str = ""

    @property
    def gpu(self) -> bool:
        return self.num_gpus > 0

    def ray_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory:
            opts["memory"] = self.memory
        return opts


def task_resources(frontend: str, model_device: str, rgbd_device: str, opts: ClusterOptions,
                   cluster_gpus: float) -> TaskResources:
    """The resources of one task for a config.

    Args:
        frontend: the config's ``frontend`` (``stream3r``, ``rgbd`` or a plugin's).
        model_device: ``model.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``).
        rgbd_device: ``rgbd.device`` (``auto``, ``cpu``, ``cuda``).
        opts: the ``cluster`` section.
        cluster_gpus: GPUs the Ray cluster has now (decides ``model.device: auto``).
    """
    mem = int(opts.memory_gb * 1e9) if opts.memory_gb else None
    if opts.use_gpu != "auto":
        gpu, why = opts.use_gpu == "yes", f"cluster.use_gpu: {opts.use_gpu}"
    elif frontend == "stream3r":
        if model_device.startswith("cuda"):
            gpu, why = True, f"frontend stream3r on model.device {model_device}"
        elif model_device == "auto":
            gpu = cluster_gpus > 0
            why = f"frontend stream3r, model.device auto, the cluster has {cluster_gpus:g} GPU(s)"
        else:
            gpu, why = False, f"frontend stream3r on model.device {model_device}"
    elif frontend == "rgbd":
        gpu = rgbd_device == "cuda"
        why = f"frontend rgbd, rgbd.device {rgbd_device}" + ("" if gpu else " (CPU cores; cuda for GPU tasks)")
    else:
        gpu, why = False, f"frontend {frontend} (a plugin's: CPU unless cluster.use_gpu: yes)"
    sets: list[str] = []
    if gpu:
        # Ray sets CUDA_VISIBLE_DEVICES to the GPU(s) it gave the task: the first one is cuda:0 there
        if frontend == "stream3r":
            sets.append("model.device=cuda")
        elif frontend == "rgbd":
            sets.append("rgbd.device=cuda")
        return TaskResources(opts.cpus_per_task, opts.gpus_per_task, mem, tuple(sets), why)
    if frontend == "stream3r" and model_device != "mps":
        sets.append("model.device=cpu")
    return TaskResources(opts.cpus_per_task, 0.0, mem, tuple(sets), why)


def visible_devices_env(num_gpus: float) -> dict[str, str]:
    """The environment changes a task makes before it imports torch / Open3D: a CPU task sees no
    GPU (Ray leaves ``CUDA_VISIBLE_DEVICES`` alone for tasks that asked for none); a GPU task keeps
    what Ray set."""
    if num_gpus > 0:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ""}


# ----------------------------------------------------------------------------- Ray
def import_ray() -> Any:
    """``import ray``, or a one-line :class:`ConfigError` that names the extra to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--workers / --address run on Ray, which is not installed: {INSTALL_HINT} "
                          f"(Ray >= {MIN_RAY})") from None
    return ray


@dataclass
class Connection:
    """A Ray to submit to: ``started_here`` when :func:`connect` started it (and stops it)."""

    ray: Any
    address: str
    started_here: bool
    dashboard_url: str = ""
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def gpus(self) -> float:
        return float(self.resources.get("GPU", 0.0))

    @property
    def cpus(self) -> float:
        return float(self.resources.get("CPU", 0.0))


@contextlib.contextmanager
def connect(address: Optional[str], workers: int, opts: ClusterOptions) -> Iterator[Connection]:
    """Ray for ``workers`` concurrent tasks: the one this process already has, the cluster at
    ``address``, or a local Ray started here (and shut down when the block ends)."""
    ray = import_ray()
    if ray.is_initialized():
        conn = Connection(ray, "(this process's Ray)", started_here=False, dashboard_url=_dashboard_of(ray),
                          resources=dict(ray.cluster_resources()))
        yield conn
        return
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        kwargs["address"] = address
    else:
        kwargs.update(num_cpus=max(1, math.ceil(workers * opts.cpus_per_task)),
                      object_store_memory=opts.object_store_mb * 1024 * 1024,
                      include_dashboard=opts.dashboard)
        if opts.dashboard:
            kwargs["dashboard_host"] = "127.0.0.1"
    try:
        ctx = ray.init(**kwargs)
    except Exception as e:  # noqa: BLE001 - Ray raises many types (unreachable cluster, bad address, no start): one ConfigError
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        hint = ("; a cluster with token authentication (Ray's default from 2.59 on) needs RAY_AUTH_MODE=token "
                "and its token (RAY_AUTH_TOKEN, or ~/.ray/auth_token) here too" if address else "")
        raise ConfigError(f"could not start or join {where}: {type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0][:300]}{hint}") from None
    try:
        url = getattr(ctx, "dashboard_url", "") or ""
        if url and not url.startswith("http"):
            url = "http://" + url
        conn = Connection(ray, address or "local", started_here=not address, dashboard_url=url,
                          resources=dict(ray.cluster_resources()))
        yield conn
    finally:
        ray.shutdown()


def _dashboard_of(ray: Any) -> str:
    with contextlib.suppress(Exception):
        from ray._private.worker import global_worker  # the URL of a Ray this process joined

        url = global_worker.node.webui_url if global_worker.node else ""
        return ("http://" + url) if url and not url.startswith("http") else (url or "")
    return ""


def _execute(fn: Callable[[Any], Any], payload: Any, env: dict[str, str], cwd: str) -> tuple[Any, dict[str, Any]]:
    """In a Ray worker: ``fn(payload)`` and where / how it ran (node, pid, wall time). ``env`` is set
    for the task and put back after it (a reused worker)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # before fn imports torch / Open3D
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)  # relative paths in configs and overrides mean what they mean on the driver
    try:
        t0 = time.perf_counter()
        value = fn(payload)
        wall = time.perf_counter() - t0
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    info: dict[str, Any] = {"node": socket.gethostname(), "pid": os.getpid(), "wall_s": wall}
    with contextlib.suppress(Exception):
        import ray

        info["node_ip"] = ray.util.get_node_ip_address()
        info["gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
    return value, info


# ----------------------------------------------------------------------------- running
@dataclass
class Outcome:
    """What became of one payload: ``done`` (``value`` is ``fn``'s), ``failed`` (``error``: the
    worker died past its retries, or the task could not run), ``cancelled`` (Ctrl-C; ``started``
    says whether it had begun), or ``pending`` (never reached)."""

    state: str = "pending"
    value: Any = None
    error: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    started: bool = False


@dataclass
class Batch:
    """Every payload's :class:`Outcome` in the order given; ``signal`` names the first interrupt."""

    outcomes: list[Outcome]
    signal: str = ""


class _Interrupts:
    """SIGINT / SIGTERM in the driver while tasks run: counted, acted on by the loop (the handler
    itself only sets flags, so it is safe wherever the main thread is)."""

    def __init__(self) -> None:
        self.count = 0
        self.first = ""
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            self.first = signal.Signals(signum).name
        if self.count >= 3:
            from slam3r_app.signals import exit_code_for

            os._exit(exit_code_for(self.first))

    @contextlib.contextmanager
    def installed(self) -> Iterator["_Interrupts"]:
        if threading.current_thread() is threading.main_thread():
            from slam3r_app.signals import end_startup

            end_startup()  # the start-up watcher would exit the process while ray.wait holds the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError, OSError):
                    self._old[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, h in self._old.items():
                with contextlib.suppress(ValueError, OSError):
                    signal.signal(sig, h)


def run_all(conn: Connection, fn: Callable[[Any], Any], payloads: Sequence[Any], workers: int,
            res: TaskResources, opts: ClusterOptions, on_outcome: Optional[Callable[[int, Outcome], None]] = None,
            progress: bool = True, desc: str = "runs", poll_s: float = 0.2) -> Batch:
    """Run ``fn(payload)`` for every payload as Ray tasks, at most ``workers`` at a time.

    Args:
        fn: an importable module-level function (Ray pickles it by reference).
        on_outcome: called in the driver as each outcome is known (``(index, outcome)``), e.g.
            to write a partial table.
        poll_s: how often the loop looks at interrupts while it waits for Ray.
    Returns:
        The outcomes in payload order, and the first interrupt's name ("" if none).
    """
    from tqdm import tqdm

    ray = conn.ray
    fresh = res.gpu if opts.fresh_worker is None else opts.fresh_worker
    remote = ray.remote(max_calls=1 if fresh else 0)(_execute).options(
        max_retries=opts.max_retries, retry_exceptions=False, **res.ray_options())
    env = visible_devices_env(res.num_gpus)
    cwd = os.getcwd()
    outcomes = [Outcome() for _ in payloads]
    todo = list(range(len(payloads)))
    running: dict[Any, int] = {}
    failed = 0
    bar = tqdm(total=len(payloads), unit="run", desc=desc, dynamic_ncols=True, disable=not progress, file=sys.stderr)

    def settle(ref: Any, i: int, cancelled: bool = False) -> None:
        nonlocal failed
        out = outcomes[i]
        try:
            out.value, out.info = ray.get(ref)
            out.state, out.started = "done", True
        except ray.exceptions.TaskCancelledError:
            out.state = "cancelled"
        except ray.exceptions.RayError as e:
            if cancelled:
                out.state = "cancelled"  # a worker killed by the second Ctrl-C
            else:
                out.state, out.started = "failed", True
                out.error = _ray_error_line(e, opts.max_retries)
                failed += 1
        bar.update(1)
        bar.set_postfix(running=len(running), failed=failed, refresh=False)
        if on_outcome is not None:
            on_outcome(i, out)

    sig = _Interrupts()
    with sig.installed():
        try:
            while (todo or running) and not sig.count:
                while todo and len(running) < workers:
                    i = todo.pop(0)
                    running[remote.remote(fn, payloads[i], env, cwd)] = i
                done, _ = ray.wait(list(running), num_returns=1, timeout=poll_s)
                for ref in done:
                    settle(ref, running.pop(ref))
            if sig.count:
                _cancel(ray, running, outcomes, settle, sig, opts, bar)
        finally:
            bar.close()
    return Batch(outcomes, sig.first)


def _cancel(ray: Any, running: dict[Any, int], outcomes: list[Outcome], settle: Callable[..., None],
            sig: _Interrupts, opts: ClusterOptions, bar: Any) -> None:
    """First interrupt: ask the running tasks to stop (each writes its outputs) and wait for them up
    to ``cancel_grace_s``; a second interrupt (or the grace running out) kills them."""
    for i in running.values():
        outcomes[i].started = True
    bar.write(f"{sig.first} received: cancelling {len(running)} running task(s); each stops after its current "
              f"frame and writes its outputs (up to {opts.cancel_grace_s:g} s); again: kill them now", file=sys.stderr)
    for ref in running:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=False)
    deadline = time.monotonic() + opts.cancel_grace_s
    while running and sig.count < 2 and time.monotonic() < deadline:
        done, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
        for ref in done:
            settle(ref, running.pop(ref), cancelled=True)
    if running:
        bar.write(f"killing {len(running)} task(s) that are still running", file=sys.stderr)
        for ref in running:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        for i in running.values():
            outcomes[i].state = "cancelled"
            outcomes[i].error = "killed"
        running.clear()


def _ray_error_line(e: BaseException, retries: int) -> str:
    """One line for a task that failed in Ray (not in the run): its kind, and the retries spent."""
    name = type(e).__name__
    text = str(e).strip().splitlines()
    first = next((ln.strip() for ln in text if ln.strip() and not ln.startswith("Traceback")), "")
    tries = f" (after {retries} retr{'y' if retries == 1 else 'ies'})" if retries else ""
    return f"{name}{tries}: {first}"[:300]
