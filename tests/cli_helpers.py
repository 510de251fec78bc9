"""Running ``run_slam.py`` in a subprocess with the fake source and frontend (tests/fake_plugin.py).

Tests synchronise with a running process on files and on the lines it prints, never on sleeps:
:func:`wait_for_file` polls for a file the run (or a test plugin) writes, :func:`read_until` reads
the process's stderr line by line until a line contains a text.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
FAKE = str(REPO / "tests" / "fake_plugin.py")
MISBEHAVING = str(REPO / "tests" / "misbehaving_plugin.py")
#: a generous upper bound for a subprocess that should end: only a hang reaches it
HANG_GUARD_S = 300


def fake_config(tmp_path: Path, frames: int = 10, plugins: tuple[str, ...] = (), **extra: Any) -> Path:
    """A config file for the fake source / frontend, headless, into ``tmp_path/run``."""
    cfg: dict[str, Any] = {
        "name": "fake", "source": {"type": "fake", "max_frames": frames}, "frontend": "fake", "progress": False,
        "plugins": [FAKE, *plugins], "disable": ["viewer"], "trajectory": {"every_n": 1000},
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


def start_cli(args: list[str], cwd: Path, env: Optional[dict[str, str]] = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "run_slam.py"), *args], cwd=str(cwd),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(env))


def wait_for_file(path: Path, proc: Optional[subprocess.Popen] = None, timeout: float = HANG_GUARD_S) -> None:
    """Until ``path`` exists (fails early if ``proc`` ends first)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process ended ({proc.returncode}) before {path} appeared:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.02)


def read_until(stream: IO[str], text: str, seen: list[str]) -> str:
    """Read lines from ``stream`` into ``seen`` until one contains ``text``; returns that line."""
    for line in stream:
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"the stream ended without a line containing {text!r}:\n{''.join(seen)[-3000:]}")


def finish(proc: subprocess.Popen, seen: list[str], timeout: float = HANG_GUARD_S) -> tuple[str, str]:
    """Wait for ``proc``; returns (stdout, all of stderr including the lines already read)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out, "".join(seen) + err
