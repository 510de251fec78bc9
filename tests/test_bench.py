"""Benchmark runner on a tiny fake dataset root (a plugin file provides the 'tum'/'bonn' readers and a frontend)."""
from __future__ import annotations

import csv
import json
import textwrap

import numpy as np
import pytest

from slam3r_app.cli import main as cli_main
from slam3r_app.errors import ConfigError
from slam3r_plugins.bench import PROTOCOLS, Interrupted, run_bench

pytest.importorskip("evo", reason="the benchmark's metrics come from the evaluation plugin (evo)")

PLUGIN = textwrap.dedent('''
    """Fake TUM/Bonn reader (a folder with n.txt = frame count) and a noisy up-to-scale frontend."""
    import zlib
    from pathlib import Path

    import numpy as np

    from slam3r_app.frontend import Frontend
    from slam3r_app.hookspecs import hookimpl
    from slam3r_app.sources import FrameSource, select_indices
    from slam3r_app.types import Estimate, Frame

    K = np.array([[30.0, 0, 15.5], [0, 30.0, 11.5], [0, 0, 1]])


    def pose(i):
        t = 0.05 * i
        T = np.eye(4)
        c, s = np.cos(t), np.sin(t)
        T[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
        T[:3, 3] = [np.sin(t), 0.2 * np.sin(3 * t), 1 - np.cos(t)]
        return T


    class Seq(FrameSource):
        has_gt = True
        has_depth = False

        def __init__(self, path, first, stride, max_frames):
            super().__init__()
            p = Path(path)
            n = int((p / "n.txt").read_text())
            self.idx = select_indices(n, first, stride, max_frames)
            self.name = p.name

        def __len__(self):
            return len(self.idx)

        def _iter_raw(self):
            for k, i in enumerate(self.idx):
                yield Frame(index=k, timestamp=1000.0 + i / 30.0, rgb=np.zeros((24, 32, 3), np.uint8),
                            intrinsics=K.copy(), gt_pose=pose(i), name=f"{self.name}#{i}")


    class Noisy(Frontend):
        name = "benchfake"

        def __init__(self):
            self.rng = None

        def track(self, frame):
            if self.rng is None:
                self.rng = np.random.default_rng(zlib.crc32(frame.name.split("#")[0].encode()))
            P = frame.gt_pose.copy()
            P[:3, 3] = (P[:3, 3] + self.rng.normal(0, 0.01, 3)) * 0.5
            return Estimate(index=frame.index, timestamp=frame.timestamp, pose=P, intrinsics=K.copy())


    @hookimpl
    def slam3r_make_source(source, context):
        if source.type in ("tum", "bonn", "sintel"):
            return Seq(source.path, source.first, source.stride, source.max_frames)


    class Interrupting(Noisy):
        """Ctrl-C arrives while frame 2 of the first sequence is tracked."""

        def track(self, frame):
            if frame.index == 2 and frame.name.startswith("rgbd_dataset_freiburg3_sitting_static"):
                import os
                import signal

                os.kill(os.getpid(), signal.SIGINT)
            return super().track(frame)


    @hookimpl
    def slam3r_make_frontend(name, context):
        return {"benchfake": Noisy, "benchint": Interrupting}.get(name, lambda: None)()
''')


@pytest.fixture()
def fake_root(tmp_path):
    root = tmp_path / "data"
    for seq, n in (("rgbd_dataset_freiburg3_walking_xyz", 40), ("rgbd_dataset_freiburg3_sitting_static", 25)):
        (root / "tum" / seq).mkdir(parents=True)
        (root / "tum" / seq / "n.txt").write_text(str(n))
    (root / "bonn" / "rgbd_bonn_crowd2").mkdir(parents=True)
    (root / "bonn" / "rgbd_bonn_crowd2" / "n.txt").write_text("200")
    plugin = tmp_path / "benchfake.py"
    plugin.write_text(PLUGIN)
    for kind in ("tum", "bonn", "sintel"):
        (tmp_path / f"{kind}.yaml").write_text(textwrap.dedent(f"""
            name: {kind}
            source: {{type: {kind}, path: unused}}
            frontend: benchfake
            plugins: [{plugin}]
            disable: [datasets, stream3r, rgbd, viewer, fusion, pointcloud]
        """))
    return tmp_path


def _rows(path):
    with open(path, newline="") as f:
        return {r["sequence"]: r for r in csv.DictReader(f)}


def test_tum_protocol_runs_present_sequences_and_lists_missing(fake_root):
    rows, out, table = run_bench(str(fake_root / "tum.yaml"), root=fake_root / "data", out=fake_root / "bench")
    assert [r.sequence for r in rows] == list(PROTOCOLS["tum"].sequences)
    by = {r.sequence: r for r in rows}
    ok = [r for r in rows if r.status == "ok"]
    assert {r.sequence for r in ok} == {"rgbd_dataset_freiburg3_walking_xyz", "rgbd_dataset_freiburg3_sitting_static"}
    assert sum(r.status == "missing" for r in rows) == 6
    assert "not found" in by["rgbd_dataset_freiburg3_walking_rpy"].note
    # protocol: stride 3, at most 90 frames -> 40 frames give 14, 25 give 9
    assert by["rgbd_dataset_freiburg3_walking_xyz"].frames == 14
    assert by["rgbd_dataset_freiburg3_sitting_static"].frames == 9
    for r in ok:
        # the numbers are the run's own metrics.json (evaluation plugin, evo), noise of 1 cm per axis
        m = json.loads((out / r.sequence / "metrics.json").read_text())
        assert r.ate == m["ate"] and r.rpe_trans == m["rpe_trans"] and r.rpe_rot == m["rpe_rot"]
        assert 0.002 < r.ate < 0.03 and r.fps > 0 and r.peak_mem_gb > 0
    csv_rows = _rows(out / "bench.csv")
    assert csv_rows["mean"]["ate"] and float(csv_rows["mean"]["ate"]) == pytest.approx(np.mean([r.ate for r in ok]))
    assert csv_rows["rgbd_dataset_freiburg3_walking_rpy"]["status"] == "missing"
    md = (out / "bench.md").read_text()
    assert md.count("| missing |") == 6 and "**mean**" in md and "**2/8 ok**" in md
    assert "| rgbd_dataset_freiburg3_walking_xyz | ok | 14 |" in table


def test_bench_command_with_overrides_and_bonn_protocol(fake_root, capsys):
    out = fake_root / "bonn_bench"
    rc = cli_main(["bench", "--config", str(fake_root / "bonn.yaml"), "--root", str(fake_root / "data"),
                   "--out", str(out), "--set", "evaluation.plot=false"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "rgbd_bonn_crowd2 | ok | 110 |" in printed  # frames 30-140
    assert "rgbd_bonn_balloon2: missing" in printed
    rows = _rows(out / "bench.csv")
    assert list(rows)[:-1] == list(PROTOCOLS["bonn"].sequences)
    run_dir = out / "rgbd_bonn_crowd2"
    assert (run_dir / "trajectory.txt").is_file() and not (run_dir / "trajectory.png").exists()
    # user overrides come after the protocol's
    cli_main(["bench", "--config", str(fake_root / "bonn.yaml"), "--root", str(fake_root / "data"),
              "--out", str(fake_root / "b2"), "--set", "source.max_frames=12", "--sequences", "rgbd_bonn_crowd2"])
    rows = _rows(fake_root / "b2" / "bench.csv")
    assert list(rows) == ["rgbd_bonn_crowd2", "mean"] and rows["rgbd_bonn_crowd2"]["frames"] == "12"


def test_nothing_present_and_bad_configs(fake_root, capsys):
    rc = cli_main(["bench", "--config", str(fake_root / "sintel.yaml"), "--root", str(fake_root / "data"),
                   "--out", str(fake_root / "s")])
    assert rc == 1  # no sequence ran
    rows = _rows(fake_root / "s" / "bench.csv")
    assert len(rows) == 15 and all(r["status"] == "missing" for k, r in rows.items() if k != "mean")
    (fake_root / "folder.yaml").write_text("source: {type: folder, path: x}\n")
    with pytest.raises(ConfigError, match="no protocol for source type 'folder'"):
        run_bench(str(fake_root / "folder.yaml"), root=fake_root / "data", out=fake_root / "f")
    with pytest.raises(ConfigError, match="bench"):
        run_bench(str(fake_root / "tum.yaml"), overrides=["bench.rooot=x"], out=fake_root / "h")
    rows, _, _ = run_bench(str(fake_root / "tum.yaml"), overrides=[f"bench.root={fake_root / 'data'}"],
                           out=fake_root / "i", sequences=["rgbd_dataset_freiburg3_sitting_static"])
    assert [r.status for r in rows] == ["ok"]  # bench.root from the config when --root is not given
    with pytest.raises(ConfigError, match="not in the tum protocol"):
        run_bench(str(fake_root / "tum.yaml"), root=fake_root / "data", out=fake_root / "g", sequences=["nope"])


def test_a_failing_sequence_is_listed_as_error(fake_root):
    (fake_root / "data" / "tum" / "rgbd_dataset_freiburg3_walking_xyz" / "n.txt").write_text("not a number")
    rows, out, _ = run_bench(str(fake_root / "tum.yaml"), root=fake_root / "data", out=fake_root / "bench")
    by = {r.sequence: r for r in rows}
    assert by["rgbd_dataset_freiburg3_walking_xyz"].status == "error"
    assert "ValueError" in by["rgbd_dataset_freiburg3_walking_xyz"].note
    assert by["rgbd_dataset_freiburg3_sitting_static"].status == "ok"


def test_ctrl_c_stops_the_bench_and_writes_the_table(fake_root, capsys):
    """Sequential: the run in progress stops after its frame and writes its outputs, no further
    sequence starts, the table lists both, the command exits 130."""
    with pytest.raises(Interrupted) as e:
        run_bench(str(fake_root / "tum.yaml"), root=fake_root / "data", out=fake_root / "bench",
                  overrides=["frontend=benchint"])
    by = {r.sequence: r for r in e.value.rows}
    first, second = "rgbd_dataset_freiburg3_sitting_static", "rgbd_dataset_freiburg3_walking_xyz"
    assert e.value.signal == "SIGINT"
    assert by[first].status == "cancelled" and by[first].frames == 3 and "stopped by SIGINT" in by[first].note
    assert by[second].status == "cancelled" and "not started" in by[second].note
    assert not (fake_root / "bench" / second).exists()
    rows = _rows(fake_root / "bench" / "bench.csv")
    assert rows[first]["status"] == rows[second]["status"] == "cancelled" and rows["mean"]["status"] == "0/8 ok"
    rc = cli_main(["bench", "--config", str(fake_root / "tum.yaml"), "--root", str(fake_root / "data"),
                   "--out", str(fake_root / "b2"), "--set", "frontend=benchint"])
    captured = capsys.readouterr()
    assert rc == 130 and f"{second}: cancelled" in captured.out
    assert "interrupted (SIGINT): 0 run(s) finished" in captured.err
