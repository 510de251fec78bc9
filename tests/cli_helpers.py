"""Running ``run_slam.py`` in a subprocess with the fake source and frontend (tests/fake_plugin.py).

Tests synchronise with a running process on files and on the lines it prints, never on sleeps:
:func:`wait_for_file` polls for a file the run (or a test plugin) writes, :meth:`Running.read_until`
waits for a stderr line containing a text. Every wait has a hang guard (``HANG_GUARD_S``): a broken
program fails the test instead of hanging the suite; the guard is no timing margin.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
FAKE = str(REPO / "tests" / "fake_plugin.py")
MISBEHAVING = str(REPO / "tests" / "misbehaving_plugin.py")
#: a generous upper bound for a subprocess that should end: only a hang reaches it
HANG_GUARD_S = 300


def fake_config(tmp_path: Path, frames: int = 10, plugins: tuple[str, ...] = (), **extra: Any) -> Path:
    """A config file for the fake source / frontend, headless, into ``tmp_path/run``.

    The evaluation plugin is off unless a test enables it: the fake camera moves on a straight line,
    which a Sim(3) alignment cannot use, and a failed evaluation is a failed plugin (exit 3).
    """
    cfg: dict[str, Any] = {
        "name": "fake", "source": {"type": "fake", "max_frames": frames}, "frontend": "fake", "progress": False,
        "plugins": [FAKE, *plugins], "disable": ["viewer"], "trajectory": {"every_n": 1000},
        "evaluation": {"enabled": False},
    }
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg", HF_HUB_OFFLINE="1")
    env.update(extra or {})
    return env


def cli(args: list[str], cwd: Path, env: Optional[dict[str, str]] = None,
        timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "run_slam.py"), *args], cwd=str(cwd), capture_output=True,
                          text=True, env=_env(env), timeout=timeout)


class Running:
    """A ``run_slam.py`` process whose stderr is read line by line in a thread (so that waiting for a
    line can give up on a hang instead of blocking forever on the pipe)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._new:
                self.lines.append(line)
                self._new.notify_all()
        with self._new:
            self._eof = True
            self._new.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.returncode

    def poll(self) -> Optional[int]:
        return self.proc.poll()

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.proc.kill()

    def read_until(self, text: str, start: int = 0, timeout: float = HANG_GUARD_S) -> tuple[str, int]:
        """The first stderr line from line ``start`` on that contains ``text``, and the index after it."""
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                for i in range(start, len(self.lines)):
                    if text in self.lines[i]:
                        return self.lines[i], i + 1
                start = len(self.lines)
                if self._eof:
                    raise AssertionError(f"the run ended without a line containing {text!r}:\n{self.stderr[-3000:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line containing {text!r} (a hang?):\n{self.stderr[-3000:]}")
                self._new.wait(left)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def finish(self, timeout: float = HANG_GUARD_S) -> tuple[str, str]:
        """Wait for the process (killed after ``timeout``); returns (stdout, stderr)."""
        try:
            self.proc.wait(timeout)  # (stdout is a short summary: it never fills the pipe)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        out = self.proc.stdout.read() if self.proc.stdout is not None else ""
        self._reader.join(60)
        return out, self.stderr


def start_cli(args: list[str], cwd: Path, env: Optional[dict[str, str]] = None) -> Running:
    return Running(subprocess.Popen([sys.executable, str(REPO / "run_slam.py"), *args], cwd=str(cwd),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(env)))


def wait_for_file(path: Path, proc: Optional[Any] = None, timeout: float = HANG_GUARD_S) -> None:
    """Until ``path`` exists (fails early if ``proc`` ends first)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            err = proc.stderr if isinstance(proc, Running) else ""
            raise AssertionError(f"the process ended ({proc.returncode}) before {path} appeared:\n{str(err)[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.02)
