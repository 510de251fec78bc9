"""Atomic, verified file writes: a reader never sees a half-written file.

Everything is written to a temporary file in the destination folder, flushed,
fsync'ed, checked and renamed over the target (``os.replace`` is atomic on POSIX and
Windows for files on one file system).

"Checked" matters on a full disk: libraries that write through C (Open3D's PLY writer,
RPly) report success after a short write, so a file whose header promises 500k faces
may hold 180k. Before a temporary file is published, :func:`verify_file` reads back
what it can cheaply: a PLY's header and its size against the element counts, a PNG's
closing ``IEND`` chunk, a JPEG's end marker, a GLB's declared length, a ``.npz``'s zip
directory. A file that fails is not published: the earlier complete file (if any)
stays, and the caller gets an :class:`OutputWriteError` with one line naming the file.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import struct
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from .errors import Slam3rError

#: errno values that mean "the disk (or the quota, or the file size limit) is full", or that the disk fails
FULL_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})


class OutputWriteError(Slam3rError, OSError):
    """A file could not be written completely; the message is one line naming the file and why.

    It is an :class:`OSError` too (``errno`` set where the system gave one), so code that
    catches ``OSError`` around a write still catches it. The run that meets one ends with
    exit 1 (README, "Exit codes"); the earlier complete file of that name, if any, is kept.
    """

    def __init__(self, message: str, errno_: Optional[int] = None) -> None:
        super().__init__(message)
        self.errno = errno_
        self.message = message

    def __str__(self) -> str:
        return self.message


def is_write_error(e: BaseException) -> bool:
    """An :class:`OutputWriteError`, or an ``OSError`` of a full or failing disk (:data:`FULL_DISK_ERRNOS`)."""
    return isinstance(e, OutputWriteError) or isinstance(e, OSError) and e.errno in FULL_DISK_ERRNOS


class ShortWrite(ValueError):
    """:func:`verify_file` found a file shorter (or otherwise different) than its own header says."""


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


_UMASK = _umask()


def describe_os_error(e: BaseException) -> str:
    """``no space left on the device`` / ``permission denied`` ...: the reason of an OSError, in words."""
    if isinstance(e, OutputWriteError):
        return e.message
    if isinstance(e, ShortWrite):
        return str(e)
    code = getattr(e, "errno", None)
    words = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "the file is larger than the file-size limit (ulimit -f) or the file system allows",
        errno.EIO: "input/output error (a failing disk?)",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.ENOENT: "the folder no longer exists",
    }
    if code in words:
        return words[code]
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None,
                verify: Optional[Callable[[Path], None]] = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it over ``target`` once it is complete.

    The temporary file keeps ``target``'s suffix (libraries such as Open3D choose the
    format by extension). After the block the file is fsync'ed (a full disk that the page
    cache hid shows here), checked by ``verify`` (default :func:`verify_file`, by suffix)
    and given the permissions of any new file (``0666`` less the umask, as ``run.log``).

    Raises:
        OutputWriteError: the block raised an ``OSError``, or the file is empty or short;
            the temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sfx = suffix if suffix is not None else target.suffix
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{sfx}", dir=target.parent)
        os.close(fd)
    except OSError as e:
        raise _write_error(target, e) from None
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            if not tmp_path.exists() or tmp_path.stat().st_size == 0 and not _allow_empty(target):
                raise ShortWrite("nothing was written")
            _fsync(tmp_path)
            (verify or verify_file)(tmp_path)
            os.chmod(tmp_path, 0o666 & ~_UMASK)
            os.replace(tmp_path, target)
        except (OSError, ShortWrite) as e:
            raise _write_error(target, e) from None
    finally:
        with contextlib.suppress(OSError):
            if tmp_path.exists():
                tmp_path.unlink()


def _write_error(target: Path, e: BaseException) -> OutputWriteError:
    if isinstance(e, OutputWriteError):
        return e
    kept = "; the earlier complete file is kept" if target.is_file() else ""
    code = getattr(e, "errno", None)
    why = describe_os_error(e)
    if code is None and _disk_full(target.parent):
        why, code = f"{why} (no space left on the device)", errno.ENOSPC
    return OutputWriteError(f"could not write {target}: {why}{kept}", code)


def _disk_full(folder: Path) -> bool:
    """The file system of ``folder`` has (almost) no room left: under 64 KiB free for this user."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < 65536


def _fsync(path: Path) -> None:
    if path.is_dir():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _allow_empty(target: Path) -> bool:
    return target.suffix in {".txt", ".csv", ".log", ".md", ""}


# ----------------------------------------------------------------------------- verification
def verify_file(path: str | os.PathLike) -> None:
    """Check a written file by its suffix (``.ply``, ``.png``, ``.jpg``, ``.glb``, ``.npz``); other
    suffixes pass (Python's own writes raise on a short write). Raises :class:`ShortWrite`."""
    path = Path(path)
    sfx = path.suffix.lower()
    if sfx == ".ply":
        verify_ply(path)
    elif sfx == ".png":
        _verify_tail(path, b"IEND\xaeB`\x82", "PNG")
    elif sfx in (".jpg", ".jpeg"):
        _verify_tail(path, b"\xff\xd9", "JPEG")
    elif sfx == ".glb":
        _verify_glb(path)
    elif sfx == ".npz":
        _verify_zip(path)


def _verify_tail(path: Path, tail: bytes, what: str) -> None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - len(tail)))
        if f.read() != tail:
            raise ShortWrite(f"the {what} file is cut short ({size} bytes, no end marker)")


def _verify_glb(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b"glTF":
        raise ShortWrite(f"not a complete GLB file ({size} bytes)")
    declared = struct.unpack("<I", head[8:12])[0]
    if declared != size:
        raise ShortWrite(f"the GLB file holds {size} bytes but its header says {declared}")


def _verify_zip(path: Path) -> None:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ShortWrite(f"the archive is incomplete ({e})") from None


_PLY_SIZES = {"char": 1, "int8": 1, "uchar": 1, "uint8": 1, "short": 2, "int16": 2, "ushort": 2, "uint16": 2,
              "int": 4, "int32": 4, "uint": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}
_PLY_NP = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2", "ushort": "u2",
           "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4", "float": "f4",
           "float32": "f4", "double": "f8", "float64": "f8"}


def ply_header(path: str | os.PathLike) -> tuple[str, list[tuple[str, int, list[tuple[str, ...]]]], int]:
    """``(format, [(element, count, [property, ...])], header bytes)`` of a PLY file.

    A property is ``(type, name)`` or ``("list", count type, item type, name)``.
    Raises :class:`ShortWrite` when the header is missing or incomplete.
    """
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        raise ShortWrite("the PLY header is missing or incomplete")
    nl = head.find(b"\n", end)
    if nl < 0:
        raise ShortWrite("the PLY header is incomplete")
    fmt = ""
    elements: list[tuple[str, int, list[tuple[str, ...]]]] = []
    for line in head[:end].decode("ascii", "replace").splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "format" and len(parts) >= 2:
            fmt = parts[1]
        elif parts[0] == "element" and len(parts) == 3:
            elements.append((parts[1], int(parts[2]), []))
        elif parts[0] == "property" and elements:
            elements[-1][2].append(tuple(parts[1:]))
    return fmt, elements, nl + 1


def verify_ply(path: str | os.PathLike, expect: Optional[dict[str, int]] = None) -> None:
    """Check that a PLY file holds every element its header declares (and ``expect``'s counts, e.g.
    ``{"vertex": 1000, "face": 1996}``). Binary files: the size must match exactly (list properties
    of equal length, such as triangles, are read as one array; others are walked). ASCII files:
    at least as many data lines as elements. Raises :class:`ShortWrite`."""
    path = Path(path)
    size = path.stat().st_size
    try:
        fmt, elements, offset = ply_header(path)
    except ValueError as e:
        raise ShortWrite(f"the PLY header cannot be read ({e})") from None
    counts = {name: n for name, n, _ in elements}
    for name, n in (expect or {}).items():
        if counts.get(name, 0) != n:
            raise ShortWrite(f"the PLY header declares {counts.get(name, 0)} {name} element(s), {n} were written")
    if fmt == "ascii":
        with open(path, "rb") as f:
            f.seek(offset)
            lines = sum(1 for line in f if line.strip())
        need = sum(n for _, n, _ in elements)
        if lines < need:
            raise ShortWrite(f"the PLY file holds {lines} data lines but its header declares {need} elements")
        return
    order = "<" if fmt == "binary_little_endian" else ">"
    pos = offset
    with open(path, "rb") as f:
        for name, n, props in elements:
            pos = _binary_element_end(f, pos, name, n, props, order, size)
    declared = ", ".join(f"{n} {name}" for name, n, _ in elements)
    if pos > size:
        raise ShortWrite(f"the PLY file is cut short: {size} bytes cannot hold the {declared} element(s) its "
                         f"header declares")
    if pos < size:
        raise ShortWrite(f"the PLY file holds {size} bytes, more than the {pos} its header ({declared}) accounts for")


def _binary_element_end(f: Any, pos: int, name: str, n: int, props: list[tuple[str, ...]], order: str,
                        size: int) -> int:
    lists = [p for p in props if p[0] == "list"]
    fixed = sum(_PLY_SIZES.get(p[0], 0) for p in props if p[0] != "list")
    if not lists:
        return pos + n * fixed
    if n == 0:
        return pos
    # every list of the same length (triangles): read the element block as one structured array
    dtype = []
    f.seek(pos)
    first = f.read(fixed + 64)
    off = 0
    lens = []
    for p in props:
        if p[0] != "list":
            dtype.append((p[-1], order + _PLY_NP[p[0]]))
            off += _PLY_SIZES[p[0]]
            continue
        cnt_t, item_t = p[1], p[2]
        if off + _PLY_SIZES[cnt_t] > len(first):
            return size + 1  # ends inside the first element: short
        k = int(np.frombuffer(first[off:off + _PLY_SIZES[cnt_t]], order + _PLY_NP[cnt_t])[0])
        lens.append(k)
        dtype.append((p[-1] + "_n", order + _PLY_NP[cnt_t]))
        if k:
            dtype.append((p[-1], order + _PLY_NP[item_t], (k,)))
        off += _PLY_SIZES[cnt_t] + k * _PLY_SIZES[item_t]
    dt = np.dtype(dtype)
    end = pos + n * dt.itemsize
    if end > size:  # short, or lists of unequal length: walk to tell which
        return _walk_lists(f, pos, n, props, order, size)
    f.seek(pos)
    arr = np.fromfile(f, dtype=dt, count=n)
    uniform = all(np.all(arr[p[-1] + "_n"] == k) for p, k in zip(lists, lens))
    return end if uniform else _walk_lists(f, pos, n, props, order, size)


def _walk_lists(f: Any, pos: int, n: int, props: list[tuple[str, ...]], order: str, size: int) -> int:
    f.seek(pos)
    for _ in range(n):
        for p in props:
            if p[0] != "list":
                pos += _PLY_SIZES[p[0]]
                continue
            f.seek(pos)
            raw = f.read(_PLY_SIZES[p[1]])
            if len(raw) < _PLY_SIZES[p[1]]:
                return size + 1  # ends inside the element: short
            k = int(np.frombuffer(raw, order + _PLY_NP[p[1]])[0])
            pos += _PLY_SIZES[p[1]] + k * _PLY_SIZES[p[2]]
        if pos > size:
            return pos
    return pos


# ----------------------------------------------------------------------------- C libraries' stderr
_stderr_lock = threading.Lock()


@contextlib.contextmanager
def quiet_library_stderr(prefixes: tuple[bytes, ...] = (b"RPly",)) -> Iterator[dict[str, int]]:
    """Within the block, lines a C library prints on file descriptor 2 that start with one of
    ``prefixes`` are dropped (counted in the yielded dict's ``"dropped"``); any other line is passed
    on after the block. Open3D's PLY writer prints one ``RPly: Failed writing ...`` line per element
    on a full disk: thousands of lines, where :func:`verify_ply` gives one."""
    stats = {"dropped": 0}
    with _stderr_lock:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded, captured)
            yield stats
            return
        with tempfile.TemporaryFile() as cap:
            try:
                os.dup2(cap.fileno(), 2)
                yield stats
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                cap.seek(0)
                data = cap.read()
        kept = []
        for line in data.splitlines(keepends=True):
            if line.lstrip().startswith(prefixes):
                stats["dropped"] += 1
            else:
                kept.append(line)
        if kept:
            with contextlib.suppress(OSError):
                os.write(2, b"".join(kept))


# ----------------------------------------------------------------------------- text and JSON
def write_text(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    target = Path(target)
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return target


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, Paths and sets to JSON-friendly values."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def json_problem(value: Any) -> Optional[str]:
    """None when ``value`` can be written as JSON (after :func:`to_jsonable`), else what cannot
    (``"a datetime"``)."""
    try:
        json.dumps(to_jsonable(value), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        msg = str(e)
        if "not JSON serializable" in msg:
            return "a " + msg.split("Object of type ", 1)[-1].split(" is not", 1)[0]
        return msg[:80] or type(e).__name__
    return None


def write_json(target: str | os.PathLike, data: Any, lenient: bool = False) -> Path:
    """Write ``data`` as indented JSON atomically (NaN/inf become null).

    ``lenient``: a value JSON cannot hold is written as ``"<TypeName>"`` instead of failing (the core's
    summary.json, which plugins' ``info`` reaches); otherwise such a value raises TypeError.
    """
    default = (lambda o: f"<{type(o).__name__}>") if lenient else None
    return write_text(target, json.dumps(to_jsonable(data), indent=2, sort_keys=False, default=default) + "\n")
