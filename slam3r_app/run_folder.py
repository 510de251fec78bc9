"""The run folder: one directory per run, every file written atomically."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Iterator

from . import io


class RunFolder:
    """A run's output directory.

    Files a run writes (by convention): ``config.yaml`` (resolved), ``run.log``,
    ``trajectory.txt`` (TUM, all frames), ``keyframes.txt``, ``mesh.ply``,
    ``points.ply``, ``metrics.json``, ``trajectory.png``, ``summary.json``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_template(cls, template: str, name: str) -> "RunFolder":
        """``runs/{name}-{time}`` -> ``runs/tum-20261124-101500`` (a suffix keeps it unique)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(template.format(name=name, time=stamp))
        path = base
        n = 1
        while path.exists() and any(path.iterdir()):
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        return cls(path)

    def file(self, name: str) -> Path:
        """Path of ``name`` inside the run folder (parents created)."""
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_text(self, name: str, text: str) -> Path:
        return io.write_text(self.file(name), text)

    def write_json(self, name: str, data: Any) -> Path:
        return io.write_json(self.file(name), data)

    @contextlib.contextmanager
    def atomic_path(self, name: str) -> Iterator[Path]:
        """A temporary path renamed to ``name`` when the block succeeds."""
        with io.atomic_path(self.file(name)) as tmp:
            yield tmp

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)
