"""Issue 20, case 1: a full disk never publishes a truncated file, and the run says so in one line.

Open3D's PLY writer reports success after a short write (and RPly prints a line per element it
could not write), so every file is checked before it is renamed into place
(:func:`slam3r_app.io.verify_file`: a PLY's size against its header's element counts, a PNG's end
chunk ...). The disk is made full three ways: a process file-size limit (``RLIMIT_FSIZE``: the
kernel cuts writes short at that size, as on a full disk; works for any user on Linux), a small
tmpfs as ``--output`` (where the test may mount one: root, or an unprivileged user namespace), and
an injected ``ENOSPC`` for Python's own writes.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from slam3r_app import io
from slam3r_app.io import OutputWriteError, ShortWrite, verify_ply
from tests.cli_helpers import MISBEHAVING, REPO, _env, cli, fake_config

#: the fake run's mesh.ply is about 800 kB, its other files a few kB each
LIMIT = 400_000


def _mesh(res: int = 40):
    import open3d as o3d

    m = o3d.geometry.TriangleMesh.create_sphere(radius=1.0, resolution=res)
    m.vertex_colors = o3d.utility.Vector3dVector(np.random.default_rng(0).random((len(m.vertices), 3)))
    return m


def _limited(limit: int):
    def pre() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # SIGXFSZ is ignored by Python itself
    return pre


def test_verify_ply_finds_every_cut_of_a_binary_mesh_and_cloud(tmp_path):
    from slam3r_plugins.maps.common import write_point_cloud, write_triangle_mesh

    mesh = write_triangle_mesh(tmp_path / "mesh.ply", _mesh())
    cloud = write_point_cloud(tmp_path / "cloud.ply", np.random.default_rng(1).random((500, 3)))
    for path in (mesh, cloud):
        verify_ply(path)  # complete: passes
        data = path.read_bytes()
        for cut in (10, data.index(b"end_header") + 11, len(data) // 3, len(data) - 1):
            short = tmp_path / f"short_{cut}.ply"
            short.write_bytes(data[:cut])
            with pytest.raises(ShortWrite):
                verify_ply(short)
        longer = tmp_path / "long.ply"
        longer.write_bytes(data + b"\0" * 7)
        with pytest.raises(ShortWrite, match="more than"):
            verify_ply(longer)
    with pytest.raises(ShortWrite, match="declares 500 vertex element.*, 501 were written"):
        verify_ply(cloud, {"vertex": 501})


def test_verify_ply_ascii_and_non_triangle_lists(tmp_path):
    ascii_ply = tmp_path / "a.ply"
    body = "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nelement face 2\n" \
           "property list uchar int vertex_indices\nend_header\n0\n1\n2\n3 0 1 2\n"
    ascii_ply.write_text(body + "4 0 1 2 0\n")
    verify_ply(ascii_ply)
    ascii_ply.write_text(body)
    with pytest.raises(ShortWrite):
        verify_ply(ascii_ply)
    # binary faces of unequal length (a triangle and a quad) are walked one by one
    head = b"ply\nformat binary_little_endian 1.0\nelement face 2\nproperty list uchar int vertex_indices\nend_header\n"
    faces = bytes([3]) + np.arange(3, dtype="<i4").tobytes() + bytes([4]) + np.arange(4, dtype="<i4").tobytes()
    (tmp_path / "q.ply").write_bytes(head + faces)
    verify_ply(tmp_path / "q.ply")
    (tmp_path / "q.ply").write_bytes(head + faces[:-2])
    with pytest.raises(ShortWrite):
        verify_ply(tmp_path / "q.ply")


@pytest.mark.parametrize("suffix,data", [(".png", None), (".npz", None), (".glb", b"glTF\x02\0\0\0\x40\0\0\0" + b"\0" * 20)])
def test_other_binary_outputs_are_checked_too(tmp_path, suffix, data):
    import cv2

    path = tmp_path / f"x{suffix}"
    if suffix == ".png":
        cv2.imwrite(str(path), np.zeros((20, 20, 3), np.uint8))
    elif suffix == ".npz":
        np.savez_compressed(path, a=np.arange(1000))
    else:
        path.write_bytes(data)
    full = path.read_bytes()
    if suffix != ".glb":
        io.verify_file(path)
    path.write_bytes(full[: len(full) - 5])
    with pytest.raises(ShortWrite):
        io.verify_file(path)


def test_a_short_write_keeps_the_earlier_file_and_says_so_in_one_line(tmp_path):
    """Open3D under a file-size limit: the write is cut, Open3D says True; the earlier mesh stays."""
    script = textwrap.dedent(f"""
        import sys, numpy as np
        sys.path.insert(0, {str(REPO)!r})
        from tests.test_full_disk import _mesh
        from slam3r_plugins.maps.common import write_point_cloud, write_triangle_mesh
        from slam3r_app.io import OutputWriteError
        for fn, arg, name in ((write_triangle_mesh, _mesh(200), "mesh.ply"),
                              (write_point_cloud, np.random.default_rng(0).random((100000, 3)), "new.ply")):
            try:
                fn({str(tmp_path)!r} + "/" + name, arg)
                print("published")
            except OutputWriteError as e:
                print("ERROR", e)
    """)
    from slam3r_plugins.maps.common import write_triangle_mesh

    earlier = write_triangle_mesh(tmp_path / "mesh.ply", _mesh()).read_bytes()  # small and complete
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(tmp_path),
                       env=_env(), preexec_fn=_limited(LIMIT), timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 2 and all(ln.startswith("ERROR could not write") for ln in lines), p.stdout
    assert "mesh.ply: the PLY file is cut short" in lines[0] and "the earlier complete file is kept" in lines[0]
    assert "new.ply: the PLY file is cut short" in lines[1] and "earlier" not in lines[1]
    assert "RPly" not in p.stderr and len(p.stderr) < 2000, p.stderr[:2000]  # no line per element
    assert (tmp_path / "mesh.ply").read_bytes() == earlier
    assert not (tmp_path / "new.ply").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["mesh.ply"]  # no temporary file left


def test_an_injected_enospc_in_a_python_write_keeps_the_earlier_file(tmp_path, monkeypatch):
    target = tmp_path / "trajectory.txt"
    io.write_text(target, "complete\n")

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(OutputWriteError) as exc:
        io.write_text(target, "cut short")
    assert exc.value.errno == errno.ENOSPC
    assert str(exc.value) == f"could not write {target}: no space left on the device; the earlier complete file is kept"
    assert target.read_text() == "complete\n" and [p.name for p in tmp_path.iterdir()] == ["trajectory.txt"]


def _check_full_disk_run(p: subprocess.CompletedProcess, run: Path) -> None:
    assert p.returncode == 1, (p.returncode, p.stderr[-3000:])
    err_lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and "could not write" in err_lines[0] and "mesh.ply" in err_lines[0], p.stderr[-3000:]
    for bad in ("Traceback", "RPly", "Logging error"):
        assert bad not in p.stderr, p.stderr[-3000:]
    assert len(p.stderr.splitlines()) < 40, p.stderr[-3000:]
    # nothing published is truncated: every PLY present holds what its header says
    for ply in run.glob("*.ply"):
        verify_ply(ply)
    assert not list(run.glob(".*.tmp*"))
    assert (run / "trajectory.txt").is_file()


def test_a_run_under_a_file_size_limit_ends_with_one_line_and_exit_1(tmp_path):
    cfg = fake_config(tmp_path)
    p = subprocess.run([sys.executable, str(REPO / "run_slam.py"), "--config", str(cfg), "--output",
                        str(tmp_path / "run")], cwd=str(tmp_path), capture_output=True, text=True, env=_env(),
                       preexec_fn=_limited(LIMIT), timeout=300)
    _check_full_disk_run(p, tmp_path / "run")
    assert not (tmp_path / "run" / "mesh.ply").exists()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "mesh.ply" in summary["write_errors"]["fusion"]


def _mount_cmd(mnt: Path, size: str) -> list[str] | None:
    """A command prefix that runs in a private mount namespace with a ``size`` tmpfs on ``mnt``, or None."""
    tool = shutil.which("unshare")
    if tool is None or sys.platform != "linux":
        return None
    base = [tool, "-m"] if os.geteuid() == 0 else [tool, "-r", "-m"]
    probe = subprocess.run([*base, "sh", "-c", f"mount -t tmpfs -o size={size} tmpfs {mnt}"], capture_output=True)
    return [*base, "sh", "-c", f'mount -t tmpfs -o size={size} tmpfs {mnt} && exec "$@"', "sh"] \
        if probe.returncode == 0 else None


def test_a_run_onto_a_full_tmpfs_ends_with_one_line_and_exit_1(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    prefix = _mount_cmd(mnt, "600k")
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here (no root, no unprivileged user namespaces)")
    cfg = fake_config(tmp_path)
    script = (f"import subprocess, sys, shutil; r = subprocess.run([sys.executable, {str(REPO / 'run_slam.py')!r}, "
              f"'--config', {str(cfg)!r}, '--output', {str(mnt / 'run')!r}]); "
              f"shutil.copytree({str(mnt / 'run')!r}, {str(tmp_path / 'copy')!r}); sys.exit(r.returncode)")
    p = subprocess.run([*prefix, sys.executable, "-c", script], cwd=str(tmp_path), capture_output=True, text=True,
                       env=_env(), timeout=300)
    _check_full_disk_run(p, tmp_path / "copy")
    assert "no space left on the device" in p.stderr


def test_run_log_on_a_full_disk_stops_with_one_line(tmp_path, capfd):
    import logging

    from slam3r_app.pipeline import RunLogHandler

    h = RunLogHandler(tmp_path / "run.log", encoding="utf-8")

    class Full:
        def write(self, _s):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    h.stream = Full()
    rec = logging.LogRecord("slam3r", logging.INFO, __file__, 1, "hello", None, None)
    for _ in range(5):
        h.emit(rec)
    h.flush()
    h.close()
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "run.log: no space left on the device; run.log stops here" in err, err


def test_outputs_are_written_with_the_umask_like_run_log(tmp_path):
    p = cli(["--config", str(fake_config(tmp_path)), "--output", str(tmp_path / "run")], tmp_path)
    assert p.returncode == 0, p.stderr
    run = tmp_path / "run"
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in run.iterdir()}
    assert len(set(modes.values())) == 1, modes  # summary.json, mesh.ply ... as run.log
    assert modes["run.log"] == modes["mesh.ply"]


def test_a_run_folder_removed_during_the_run_is_not_made_again(tmp_path):
    cfg = fake_config(tmp_path, plugins=(MISBEHAVING,),
                      misbehave={"hook": "process_frame", "action": "remove_run_folder", "at_frame": 3,
                                 "every_frame": False})
    p = cli(["--config", str(cfg), "--output", str(tmp_path / "run")], tmp_path)
    assert p.returncode == 1, p.stderr[-3000:]
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "was removed or replaced during the run" in err[0], p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "run").exists()  # not silently recreated without config.yaml and run.log
