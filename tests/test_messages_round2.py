"""Issue 20, "Messages": what a new user meets first says what to do, in one line."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.cli_helpers import REPO, _env, cli, fake_config


def test_top_level_help_shows_the_run_options(tmp_path):
    p = cli(["--help"], tmp_path)
    assert p.returncode == 0
    for opt in ("--config", "--set KEY=VALUE", "--output", "--overwrite", "--quiet"):
        assert opt in p.stdout, p.stdout
    assert "run options" in p.stdout


@pytest.mark.parametrize("args,code", [(["plugins"], 141), (["plugins", "--options"], 141), (["--help"], None)])
def test_a_closed_output_pipe_is_not_a_traceback(tmp_path, args, code):
    r, w = os.pipe()
    os.close(r)  # the reader is gone before anything is written: every write fails (EPIPE)
    try:
        p = subprocess.run([sys.executable, str(REPO / "run_slam.py"), *args], stdout=w, stderr=subprocess.PIPE,
                           text=True, cwd=str(tmp_path), env=_env(), timeout=300)
    finally:
        os.close(w)
    assert "Traceback" not in p.stderr and "BrokenPipeError" not in p.stderr, p.stderr
    if code is not None:
        assert p.returncode == code, (p.returncode, p.stderr)


def test_a_rosbag_run_with_the_rgbd_frontend_names_the_depth_topic_key(tmp_path):
    pytest.importorskip("rosbags")
    from slam3r_datasets.synthetic import SyntheticSequence
    from slam3r_datasets.testing import write_rosbag_from_tum

    tum = SyntheticSequence(seed=1, frames=3, width=64, height=48).write(tmp_path / "tum", format="tum")
    bag = write_rosbag_from_tum(tum, tmp_path / "bag", ros=2, color="rgb8", depth="32FC1")
    p = cli(["--config", "rosbag.yaml", "--set", f"source.path={bag}", "--set", "frontend=rgbd",
             "--set", "progress=false", "--output", str(tmp_path / "run")], tmp_path)
    assert p.returncode == 1, p.stderr[-2000:]
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "source.rosbag_depth_topic" in err[0], p.stderr[-2000:]


def test_a_validator_message_has_no_pydantic_prefix(tmp_path):
    p = cli(["--config", str(fake_config(tmp_path)), "--set", "trajectory.formats=[]"], tmp_path)
    assert p.returncode == 1
    assert "at least one format is needed" in p.stderr and "Value error," not in p.stderr, p.stderr


def test_the_bench_exit_codes_are_documented(tmp_path):
    p = cli(["bench", "--help"], tmp_path)
    assert p.returncode == 0 and "1 when none did (every sequence missing or failed)" in " ".join(p.stdout.split())
    readme = (REPO / "README.md").read_text()
    assert "`bench`" in readme and "every sequence missing or failed" in readme
