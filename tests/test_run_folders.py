"""Issue 14, cases 2 and 4: run folders are never silently reused, and their failures are one line.

* a second run into a non-empty ``--output`` is refused (exit 1, one line) and the first run's files
  stay as they were; ``--overwrite`` clears the folder first (nothing of the first run is left);
* a run holds a lock on its folder: a second run started into it meanwhile is refused; the lock
  goes with the process, also after ``kill -9``;
* a run that fails before its first frame keeps its folder with the error at the end of ``run.log``
  and in ``summary.json``; config errors (an unknown frontend too) stop before any folder exists;
* unusable folders (a file, a path under a file, read-only, immutable) are one-line errors;
* Ctrl-C or SIGTERM during start-up ends the program without a traceback (130 / 143).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from slam3r_app.run_folder import LOCK_NAME, RunFolder, RunFolderError
from tests.cli_helpers import MISBEHAVING, cli, fake_config, start_cli, wait_for_file


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _run(tmp_path, *args: str, cfg=None) -> subprocess.CompletedProcess:
    cfg = cfg or fake_config(tmp_path)
    return cli(["--config", str(cfg), "--output", str(tmp_path / "run"), *args], tmp_path)


def test_a_second_run_into_the_same_folder_is_refused_and_the_first_one_is_kept(tmp_path):
    first = _run(tmp_path)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    second = _run(tmp_path, "--set", "source.max_frames=4")
    assert second.returncode == 1
    line = _one_error_line(second.stderr)
    assert f"the run folder {tmp_path / 'run'} already holds" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_overwrite_clears_the_folder_first(tmp_path):
    assert _run(tmp_path).returncode == 0
    assert (tmp_path / "run" / "mesh.ply").is_file()
    (tmp_path / "run" / "notes").mkdir()
    p = _run(tmp_path, "--overwrite", "--set", "source.max_frames=4", "--set", "disable=[viewer,fusion]")
    assert p.returncode == 0, p.stderr
    run = tmp_path / "run"
    assert not (run / "mesh.ply").exists() and not (run / "points.ply").exists() and not (run / "notes").exists()
    assert json.loads((run / "summary.json").read_text())["frames"] == 4
    log = (run / "run.log").read_text()
    assert log.count("run finished") <= 1 and "fusion: TSDF" not in log  # not appended to the first run's log
    assert not (run / LOCK_NAME).exists()


def test_overwrite_refuses_a_folder_that_is_not_a_run_folder(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "thesis.tex").write_text("precious")
    p = _run(tmp_path, "--overwrite")
    assert p.returncode == 1
    assert "does not look like a run folder" in _one_error_line(p.stderr)
    assert (tmp_path / "run" / "thesis.tex").read_text() == "precious"


def test_a_concurrent_run_into_the_same_folder_is_refused_and_the_lock_dies_with_its_process(tmp_path):
    marker = tmp_path / "started"
    cfg = fake_config(tmp_path, plugins=(MISBEHAVING,), misbehave={"hook": "run_start", "action": "hang",
                                                                   "marker": str(marker)})
    first = start_cli(["--config", str(cfg), "--output", str(tmp_path / "run")], tmp_path)
    try:
        wait_for_file(marker, first)  # the first run holds its folder
        second = _run(tmp_path, "--overwrite")
        assert second.returncode == 1
        line = _one_error_line(second.stderr)
        assert f"another run (process {first.pid}) is writing into {tmp_path / 'run'}" in line
    finally:
        first.kill()  # kill -9: no clean-up at all
        first.finish()
    assert (tmp_path / "run" / "config.yaml").is_file()
    p = _run(tmp_path, "--overwrite")  # the kernel dropped the dead run's lock
    assert p.returncode == 0, p.stderr


def test_the_lock_in_process():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        a = RunFolder(Path(d) / "r")
        with pytest.raises(RunFolderError, match="another run"):
            RunFolder(Path(d) / "r")
        a.close()
        b = RunFolder(Path(d) / "r")  # empty again: usable
        b.close()


def test_template_folders_are_never_reused(tmp_path):
    cfg = fake_config(tmp_path, output=str(tmp_path / "runs" / "{name}"))
    for _ in range(2):
        assert cli(["--config", str(cfg)], tmp_path).returncode == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["fake", "fake-2"]


# ----------------------------------------------------------------------------- failures before the first frame
def test_a_missing_source_path_leaves_its_error_in_run_log(tmp_path):
    p = _run(tmp_path, "--set", "source.type=tum", "--set", f"source.path={tmp_path / 'nowhere'}")
    assert p.returncode == 1
    assert "tum sequence folder not found" in _one_error_line(p.stderr)
    log = (tmp_path / "run" / "run.log").read_text().strip().splitlines()
    assert any("ERROR" in ln and "tum sequence folder not found" in ln for ln in log[-3:]), log[-3:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["ended_by"] == "error" and "not found" in summary["stop_reason"]


def test_missing_weights_leave_their_error_in_run_log(tmp_path):
    p = _run(tmp_path, "--set", "frontend=stream3r", "--set", f"model.checkpoint={tmp_path / 'nope.safetensors'}")
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    log = (tmp_path / "run" / "run.log").read_text()
    assert "nope.safetensors" in log.strip().splitlines()[-1] or "nope.safetensors" in log


def test_an_unknown_frontend_is_a_config_error_and_leaves_no_folder(tmp_path):
    p = _run(tmp_path, "--set", "frontend=stram3r")
    assert p.returncode == 1
    assert "frontend" in p.stderr and "stram3r" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- unusable folders
def test_an_output_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "run").write_text("x")
    p = _run(tmp_path)
    assert p.returncode == 1
    assert "is a file, not a folder" in _one_error_line(p.stderr)


def test_an_output_under_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    p = cli(["--config", str(fake_config(tmp_path)), "--output", str(tmp_path / "afile" / "run")], tmp_path)
    assert p.returncode == 1
    assert f"{tmp_path / 'afile'} is a file, not a folder" in _one_error_line(p.stderr)


@contextlib.contextmanager
def _unwritable(folder: Path, how: str):
    folder.mkdir()
    if how == "readonly_mount":
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                                               capture_output=True).returncode != 0:
            pytest.skip("needs root and permission to mount a read-only tmpfs")
        try:
            yield
        finally:
            subprocess.run(["umount", str(folder)], capture_output=True)
    elif how == "immutable":
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(folder)],
                                                        capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here (needs root and a file system that supports it)")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    else:  # no write permission: only holds for a user other than root
        if os.geteuid() == 0:
            pytest.skip("root ignores file permissions")
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)


@pytest.mark.parametrize("how, why", [("readonly_mount", "read-only"), ("immutable", "not permitted"),
                                      ("no_permission", "permission denied")])
def test_an_unwritable_output_is_one_line(tmp_path, how, why):
    folder = tmp_path / "ro"
    with _unwritable(folder, how):
        p = cli(["--config", str(fake_config(tmp_path)), "--output", str(folder / "run")], tmp_path)
        p2 = cli(["--config", str(fake_config(tmp_path)), "--output", str(folder)], tmp_path)
    for res in (p, p2):
        assert res.returncode == 1
        line = _one_error_line(res.stderr)
        assert "cannot" in line and why in line and "choose another --output" in line


# ----------------------------------------------------------------------------- start-up interrupted
SIGNALS = [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]


def _signal_while_importing(tmp_path, name: str, setup: str, block: str, sig) -> tuple[int, str]:
    """Start a run whose plugin ``name`` runs ``setup`` then blocks in ``block`` while it is imported
    (as a plugin loading a big library would); send ``sig`` once it is blocked. Returns (exit code,
    stderr). A marker appears (an atomic rename) as the last thing before ``block``."""
    marker, ready = tmp_path / "importing", tmp_path / "importing.tmp"
    ready.write_text("x")
    plugin = tmp_path / f"{name}.py"
    plugin.write_text(f"import os, signal, threading\n{setup}os.replace({str(ready)!r}, {str(marker)!r})\n{block}")
    cfg = fake_config(tmp_path, plugins=(str(plugin),))
    proc = start_cli(["--config", str(cfg), "--output", str(tmp_path / "run")], tmp_path)
    try:
        wait_for_file(marker, proc)
        proc.send_signal(sig)
    finally:
        out, err = proc.finish()
    assert proc.returncode is not None
    return proc.returncode, f"{err}\nstdout:\n{out}" if out.strip() else err


@pytest.mark.parametrize("sig, code, word", SIGNALS)
def test_a_signal_during_start_up_ends_without_a_traceback(tmp_path, sig, code, word):
    rc, err = _signal_while_importing(tmp_path, "slow_plugin", "_blocked = threading.Event()\n",
                                      "_blocked.wait()\n", sig)
    assert rc == code, f"exit {rc}; stderr:\n{err}"
    assert "Traceback" not in err and word in err, err


@pytest.mark.parametrize("sig, code, word", SIGNALS)
def test_a_signal_taken_by_another_thread_still_ends_a_blocked_start_up(tmp_path, sig, code, word):
    """The kernel may hand a process's signal to any thread; CPython then runs the handler only when
    the main thread next runs Python code. Here the main thread blocks the signals (so the plugin's
    own thread takes them) and waits on a lock forever, as a library's import stuck in C would."""
    rc, err = _signal_while_importing(
        tmp_path, "stuck_plugin",
        "threading.Thread(target=threading.Event().wait, daemon=True).start()\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})\n",
        "threading.Event().wait()\n", sig)
    assert rc == code, f"exit {rc}; stderr:\n{err}"
    assert "Traceback" not in err and word in err and "stuck_plugin.py" in err, err
