"""Issue 14, case 8: list files out of time order, and paths leaving the dataset folder.

* an ``rgb.txt`` (or ``depth.txt``) with lines out of order is read sorted by timestamp, with a warning
  naming the line; frames, and so the trajectory, come in time order;
* an absolute path, or a ``../`` path leading out of the sequence folder, is refused naming the line.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

from slam3r_app.errors import SourceError
from slam3r_datasets.testing import write_tum_fixture
from slam3r_datasets.tum import TumSource
from tests.cli_helpers import cli


def _swap_lines(path, a: int, b: int) -> None:
    lines = path.read_text().splitlines()
    data = [i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("#")]
    lines[data[a]], lines[data[b]] = lines[data[b]], lines[data[a]]
    path.write_text("\n".join(lines) + "\n")


def test_swapped_lines_are_sorted_with_a_warning(tmp_path, caplog):
    root = write_tum_fixture(tmp_path / "seq", n=8)
    _swap_lines(root / "rgb.txt", 2, 5)
    _swap_lines(root / "depth.txt", 0, 1)
    with caplog.at_level(logging.WARNING, logger="slam3r.source"):
        src = TumSource(root)
        stamps = [f.timestamp for f in src.frames()]
    assert stamps == sorted(stamps) and len(stamps) == 8
    warned = [r.getMessage() for r in caplog.records if "not in time order" in r.getMessage()]
    assert any("rgb.txt:" in m for m in warned) and any("depth.txt:" in m for m in warned)


def test_a_run_on_swapped_lines_writes_a_trajectory_in_time_order(tmp_path):
    root = write_tum_fixture(tmp_path / "seq", n=8)
    _swap_lines(root / "rgb.txt", 1, 6)
    p = cli(["--config", "demo.yaml", "--set", f"source.path={root}", "--set", "progress=false",
             "--set", "source.intrinsics=[100, 101, 31.5, 23.5]", "--output", str(tmp_path / "run")], tmp_path)
    assert p.returncode in (0, 3), p.stderr
    assert "not in time order" in p.stderr
    rows = [ln.split() for ln in (tmp_path / "run" / "trajectory.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    t = np.array([float(r[0]) for r in rows])
    assert len(t) == 8 and np.all(np.diff(t) > 0)


@pytest.mark.parametrize("entry, words", [
    ("../outside.png", "leads out of the sequence folder"),
    ("rgb/../../outside.png", "leads out of the sequence folder"),
    ("/etc/passwd", "is an absolute path"),
])
def test_paths_leaving_the_folder_are_refused_naming_the_line(tmp_path, entry, words):
    root = write_tum_fixture(tmp_path / "seq", n=5)
    (tmp_path / "outside.png").write_bytes((root / "rgb" / sorted(p.name for p in (root / "rgb").iterdir())[0]).read_bytes())
    lines = (root / "rgb.txt").read_text().splitlines()
    k = next(i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("#"))
    stamp = lines[k + 2].split()[0]
    lines[k + 2] = f"{stamp} {entry}"
    (root / "rgb.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceError) as e:
        TumSource(root)
    assert f"rgb.txt:{k + 3}:" in str(e.value) and words in str(e.value) and entry in str(e.value)


def test_paths_inside_the_folder_with_dots_are_fine(tmp_path):
    root = write_tum_fixture(tmp_path / "seq", n=4)
    text = (root / "rgb.txt").read_text().replace(" rgb/", " ./rgb/../rgb/")
    (root / "rgb.txt").write_text(text)
    assert len(list(TumSource(root).frames())) == 4
