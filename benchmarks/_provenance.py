"""Where a benchmark figure was measured: the commit and the CPU (shared by the benchmark scripts,
which run as ``python benchmarks/<name>.py`` and so import this as ``_provenance``)."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]


def git_commit(short: bool = False) -> Optional[str]:
    """HEAD of the checkout (None when unknown); ``STREAM_BENCH_GIT_COMMIT`` overrides it (copies of
    the tree without ``.git``, as on the GPU machine)."""
    env = os.environ.get("STREAM_BENCH_GIT_COMMIT")
    if env:
        return env[:7] if short else env
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if len(out) != 40 or any(c not in "0123456789abcdef" for c in out):
        return None
    return out[:7] if short else out


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
