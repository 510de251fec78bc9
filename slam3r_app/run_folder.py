"""The run folder: one directory per run, every file written atomically.

Policy (README, "Run folders"):

* a folder named explicitly (``--output DIR``, ``Pipeline(output=...)``) must be new or
  empty; an existing non-empty one is refused with one line, unless ``--overwrite`` is
  given, which clears it first (only a folder that looks like a run folder: it holds a
  ``config.yaml``, ``run.log`` or ``summary.json``);
* a folder made from the ``output`` template (``runs/{name}-{time}``) never reuses a
  non-empty folder: ``-2``, ``-3``, ... is appended;
* a run holds an exclusive lock (``flock`` on ``.slam3r.lock`` in the folder) from start
  to end, so a second run into the same folder is refused while the first one runs; the
  kernel drops the lock when the process ends, however it ends;
* a folder that cannot be created or written (read-only file system, no permission, a
  path under a file, a path that is a file) is a :class:`RunFolderError` with one line.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from . import io
from .errors import Slam3rError

LOCK_NAME = ".slam3r.lock"
#: files every run writes first: a folder holding one of them is a run folder (``--overwrite`` may clear it)
RUN_MARKERS = ("config.yaml", "run.log", "summary.json")

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, the rest of the policy holds
    fcntl = None  # type: ignore[assignment]


class RunFolderError(Slam3rError):
    """The run folder cannot be used (taken, locked, not writable); the message is one line."""


class RunFolder:
    """A run's output directory, locked for the run's lifetime.

    Args:
        path: the folder (created with its parents).
        overwrite: clear an existing non-empty run folder instead of refusing it.

    Raises:
        RunFolderError: the folder is not empty (and ``overwrite`` is off), another run holds
            it, or it cannot be created or written.

    Files a run writes (by convention): ``config.yaml`` (resolved), ``run.log``,
    ``trajectory.txt`` (TUM, all frames), ``keyframes.txt``, ``mesh.ply``,
    ``points.ply``, ``metrics.json``, ``trajectory.png``, ``summary.json``.
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False):
        self.path = Path(path)
        self._lock_fd: Optional[int] = None
        _mkdir(self.path)
        st = self.path.stat()
        self._identity = (st.st_dev, st.st_ino)  # the folder this run writes into (see check)
        self._lock()
        try:
            leftovers = self.entries()
            if leftovers and overwrite:
                _clear(self.path, leftovers)
            elif leftovers:
                raise RunFolderError(
                    f"the run folder {self.path} already holds {_describe(leftovers)} from another run; "
                    f"choose a new --output, or add --overwrite to clear it first")
            _check_writable(self.path)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_template(cls, template: str, name: str) -> "RunFolder":
        """``runs/{name}-{time}`` -> ``runs/tum-20261124-101500`` (``-2``, ``-3`` ... when taken)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        from .config import fill_template

        try:
            base = Path(fill_template(template, name=name, time=stamp))
        except ValueError as e:
            raise RunFolderError(f"output: {e}") from None
        for n in range(1, 10_000):
            path = base if n == 1 else base.with_name(f"{base.name}-{n}")
            if path.exists() and (not path.is_dir() or _entries(path)):
                continue
            try:
                return cls(path)
            except _Taken:
                continue  # a concurrent run took it between our look and our lock
        raise RunFolderError(f"no free run folder named after {base} (tried {base.name}-2 ... -9999)")

    # ------------------------------------------------------------------ lock
    def _lock(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        lock = self.path / LOCK_NAME
        for _ in range(10):
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise RunFolderError(_os_message(e, self.path, "write into")) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_pid(fd)
                os.close(fd)
                raise _Taken(f"another run{f' (process {holder})' if holder else ''} is writing into {self.path} "
                             f"(it holds {lock}); wait for it to end or choose another --output") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a lock file its previous owner unlinked while we opened it
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._lock_fd = fd
                return
            os.close(fd)
        raise _Taken(f"could not lock {lock}: it keeps being replaced")  # pragma: no cover

    def close(self) -> None:
        """Release the lock (and remove the lock file); the folder and its files stay."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path / LOCK_NAME)
        with contextlib.suppress(OSError):
            os.close(fd)

    def __del__(self) -> None:  # pragma: no cover - a pipeline dropped without terminate()
        with contextlib.suppress(Exception):
            self.close()

    # ------------------------------------------------------------------ files
    def entries(self) -> list[Path]:
        """What the folder holds besides the lock file."""
        return _entries(self.path)

    def check(self) -> None:
        """The run folder is still the one this run created or took.

        Raises:
            OutputWriteError: it was removed, or replaced by another folder, during the run
                (it is never silently made again: the new one would lack config.yaml and run.log).
        """
        try:
            st = self.path.stat()
            same = (st.st_dev, st.st_ino) == self._identity
        except OSError:
            same = False
        if not same:
            raise io.OutputWriteError(f"the run folder {self.path} was removed or replaced during the run; "
                                      f"nothing more is written", errno.ENOENT)

    def file(self, name: str) -> Path:
        """Path of ``name`` inside the run folder (parents created inside it).

        Raises:
            OutputWriteError: the run folder was removed during the run (:meth:`check`).
        """
        self.check()
        p = self.path / name
        if p.parent != self.path:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise io.OutputWriteError(f"could not create {p.parent}: {io.describe_os_error(e)}", e.errno) from None
        return p

    def write_text(self, name: str, text: str) -> Path:
        return io.write_text(self.file(name), text)

    def write_json(self, name: str, data: Any, lenient: bool = False) -> Path:
        return io.write_json(self.file(name), data, lenient=lenient)

    @contextlib.contextmanager
    def atomic_path(self, name: str) -> Iterator[Path]:
        """A temporary path renamed to ``name`` when the block succeeds."""
        with io.atomic_path(self.file(name)) as tmp:
            yield tmp

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)


class _Taken(RunFolderError):
    """Another process holds the folder's lock."""


def clear_run_folder(path: str | os.PathLike) -> None:
    """``--overwrite``: empty an existing run folder (refused while another run holds it, and for a
    folder that does not look like a run folder). A missing folder is fine."""
    p = Path(path)
    if not p.exists():
        return
    folder = RunFolder(p, overwrite=True)
    folder.close()


# ----------------------------------------------------------------------------- helpers
def _entries(path: Path) -> list[Path]:
    try:
        return sorted(e for e in path.iterdir() if e.name != LOCK_NAME)
    except OSError as e:
        raise RunFolderError(_os_message(e, path, "read")) from None


def _describe(entries: list[Path]) -> str:
    names = [e.name + ("/" if e.is_dir() else "") for e in entries]
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"{len(names)} file{'s' if len(names) != 1 else ''} ({shown})"


def _mkdir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"the run folder {path} is a file, not a folder; choose another --output")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise RunFolderError(f"cannot create the run folder {path}: {parent} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(_os_message(e, path, "create")) from None


def _check_writable(path: Path) -> None:
    """Write and remove a probe file: a read-only or immutable folder fails here, before any work."""
    probe = path / f".write-test-{os.getpid()}"
    try:
        with open(probe, "w") as f:
            f.write("ok")
        probe.unlink()
    except OSError as e:
        raise RunFolderError(_os_message(e, path, "write into")) from None


def _os_message(e: OSError, path: Path, action: str) -> str:
    why = {
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted (an immutable or protected folder?)",
        errno.ENOSPC: "no space left on the device",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EEXIST: "a file of that name exists",
        errno.ENAMETOOLONG: "the name is too long",
        errno.EDQUOT: "disk quota exceeded",
    }.get(e.errno or -1, e.strerror or str(e))
    return f"cannot {action} the run folder {path}: {why}; choose another --output"


def _clear(path: Path, entries: list[Path]) -> None:
    names = {e.name for e in entries}
    if not names & set(RUN_MARKERS):
        raise RunFolderError(
            f"--overwrite: {path} does not look like a run folder (no {', '.join(RUN_MARKERS)} in it); "
            f"not clearing it")
    resolved = path.resolve()
    protected = {Path.home().resolve(), Path("/").resolve(), Path.cwd().resolve(), *Path.cwd().resolve().parents}
    if resolved in protected:
        raise RunFolderError(f"--overwrite: refusing to clear {path} (the working directory, one above it or home)")
    for e in entries:
        try:
            if e.is_dir() and not e.is_symlink():
                shutil.rmtree(e)
            else:
                e.unlink()
        except OSError as err:
            raise RunFolderError(_os_message(err, path, "clear")) from None


def _read_pid(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 32).decode().strip()
    return ""
