"""Issue 20, cases 2, 6 and 7: ``export`` treats a run folder as data, follows the run-folder rules
for ``--out``, warns about an incomplete run, and takes the metric scale from the run (the core's
``scale.json``, issue 22), not from a plugin's header text."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import yaml

from slam3r_app.trajectory import read_tum
from tests.cli_helpers import FAKE, MISBEHAVING, cli, fake_config, start_cli, wait_for_file
from tests.fakes import true_pose


def _one_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def _fake_run(tmp_path: Path, name: str = "run", **extra) -> Path:
    run = tmp_path / name
    p = cli(["--config", str(fake_config(tmp_path, disable=["viewer", "evaluation"], **extra)), "--output", str(run)],
            tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    return run


def _payload(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "PAYLOAD_RAN"
    payload = tmp_path / "payload.py"
    payload.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    return payload, marker


def test_export_never_imports_the_plugins_a_run_folder_names(tmp_path):
    run = _fake_run(tmp_path)
    payload, marker = _payload(tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["plugins"] = [*cfg["plugins"], str(payload)]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    for fmt in ("nerfstudio", "depth"):
        # without --plugin, the fake source type is unknown: one line that says how to load it
        p = cli(["export", str(run), "--format", fmt, "--out", str(tmp_path / f"x_{fmt}")], tmp_path)
        assert not marker.exists(), "export imported a plugin named by the run folder"
        assert p.returncode == 1
        line = _one_error(p.stderr)
        assert "no plugin provides source.type 'fake'" in line and "--plugin" in line, line
        # the user names the one plugin they trust: it runs, payload.py still does not
        p = cli(["export", str(run), "--format", fmt, "--out", str(tmp_path / f"y_{fmt}"), "--plugin", FAKE], tmp_path)
        assert p.returncode == 0, p.stderr[-3000:]
        assert not marker.exists(), "export imported a plugin named by the run folder"
        assert "payload.py" in p.stderr and "not loaded" in p.stderr


def test_export_out_follows_the_run_folder_rules(tmp_path):
    run = _fake_run(tmp_path)
    base = ["export", str(run), "--plugin", FAKE]
    out = tmp_path / "out"
    assert cli([*base, "--format", "depth", "--out", str(out)], tmp_path).returncode == 0
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    # a second export into the same folder would mix two exports: refused, the first one kept
    p = cli([*base, "--format", "nerfstudio", "--out", str(out)], tmp_path)
    assert p.returncode == 1
    line = _one_error(p.stderr)
    assert f"--out {out} already holds" in line and "--overwrite" in line
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    # --overwrite clears it first: only the new export is there
    p = cli([*base, "--format", "nerfstudio", "--out", str(out), "--overwrite"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "transforms.json").is_file() and not (out / "depth").exists()
    # --overwrite never clears a folder that holds no export
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    p = cli([*base, "--format", "depth", "--out", str(other), "--overwrite"], tmp_path)
    assert p.returncode == 1 and "does not look like an export folder" in _one_error(p.stderr)
    assert (other / "mine.txt").read_text() == "keep"
    # --out naming a file: one line, no traceback
    afile = tmp_path / "afile"
    afile.write_text("x")
    p = cli([*base, "--format", "depth", "--out", str(afile)], tmp_path)
    assert p.returncode == 1 and "is a file, not a folder" in _one_error(p.stderr)
    p = cli([*base, "--format", "depth", "--out", str(afile / "sub")], tmp_path)
    assert p.returncode == 1 and "is a file, not a folder" in _one_error(p.stderr)
    # --format naming no format: a usage error, not an export of nothing
    p = cli([*base, "--format", ",", "--out", str(tmp_path / "none")], tmp_path)
    assert p.returncode == 2 and "no format named" in _one_error(p.stderr)
    assert not (tmp_path / "none").exists()


def test_an_incomplete_run_is_exported_with_a_warning_and_in_the_runs_metric_scale(tmp_path):
    """The run is killed while a plugin writes its outputs: trajectory.txt is the core's copy and
    summary.json says ``complete: false``. The frontend predicts half-metres; fusion estimated the
    metric scale (2) from sensor depth, so the export's poses are the true ones, in metres."""
    marker = tmp_path / "export_entered"
    cfg = fake_config(tmp_path, plugins=(MISBEHAVING,), frontend="fake_half", disable=["viewer", "evaluation"],
                      misbehave={"hook": "export", "action": "hang", "marker": str(marker)})
    run = tmp_path / "run"
    proc = start_cli(["--config", str(cfg), "--output", str(run)], tmp_path)
    wait_for_file(marker, proc)
    proc.send_signal(signal.SIGKILL)
    proc.finish()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] is False
    scale = json.loads((run / "scale.json").read_text())  # written by the core, before any plugin's export
    assert scale["metric"] is True and abs(float(scale["scale"]) - 2.0) < 1e-9

    out = tmp_path / "out"
    p = cli(["export", str(run), "--format", "depth", "--out", str(out), "--plugin", FAKE], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    warn = [ln for ln in p.stderr.splitlines() if "incomplete run" in ln]
    assert len(warn) == 1 and "complete\": false" in warn[0] and "missing: cameras.json" in warn[0], p.stderr
    stamps, poses = read_tum(out / "depth" / "trajectory.txt")
    truth = np.stack([true_pose(i) for i in range(len(stamps))])
    assert len(stamps) == 10
    np.testing.assert_allclose(poses[:, :3, 3], truth[:, :3, 3], atol=1e-6)  # metres, not half-metres
    frames = json.loads((out / "depth" / "frames.json").read_text())
    assert frames["metric"] is True and frames["pose_unit"] == "metres"


def test_a_complete_run_is_exported_without_a_warning(tmp_path):
    run = _fake_run(tmp_path, frontend="fake_half")
    p = cli(["export", str(run), "--format", "depth", "--out", str(tmp_path / "out"), "--plugin", FAKE], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "incomplete" not in p.stderr
    _, poses = read_tum(tmp_path / "out" / "depth" / "trajectory.txt")
    np.testing.assert_allclose(poses[:, 0, 3], 0.05 * np.arange(10), atol=1e-6)
