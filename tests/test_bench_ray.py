"""``bench --workers N`` / ``batch --workers N`` on a local Ray (2 CPUs, started once for the module).

Sequences are written by ``run_slam.py synth`` (TUM layout, 128x96) under names of the upstream TUM
list; one has a missing image (bad data). The truth: the sequential in-process bench's own files
(trajectories byte for byte, metrics), the run folders left behind, and files the tasks write when
they start, crash or are stopped. Skipped without the optional extra ``cluster`` (Ray).
"""
from __future__ import annotations

import csv
import json
import logging
import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest

from slam3r_app.cli import main as cli_main
from tests.cli_helpers import HANG_GUARD_S, start_cli

ray = pytest.importorskip("ray", reason="the optional extra 'cluster' (Ray) is not installed")
pytest.importorskip("evo", reason="the benchmark's metrics come from the evaluation plugin (evo)")

from slam3r_plugins.bench import run_bench  # noqa: E402

GOOD = ("rgbd_dataset_freiburg3_sitting_static", "rgbd_dataset_freiburg3_walking_xyz")
BAD = "rgbd_dataset_freiburg3_walking_rpy"  # one image missing: the reader stops the run with an error
RGBD = ["frontend=rgbd", "disable=[fusion,pointcloud,viewer,loop_closure]", "evaluation.plot=false"]
COMPARED = ("status", "frames", "ate", "rpe_trans", "rpe_rot", "run_folder")

SCRIPTED = textwrap.dedent('''
    """A frontend that returns the ground-truth pose, and misbehaves on the sequences script.json names:
    crash: the worker process dies at frame 2 (every attempt); crash_once: only the first attempt;
    hang: frame 2 only ends when the run is asked to stop (Ctrl-C / a cancelled Ray task)."""
    import json
    import os
    import time
    from pathlib import Path

    from slam3r_app.frontend import Frontend
    from slam3r_app.hookspecs import hookimpl
    from slam3r_app.types import Estimate

    HERE = Path(__file__).parent


    class Scripted(Frontend):
        name = "scripted"

        def __init__(self, context):
            self.ctx = context
            self.seq = context.config.run.name
            self.what = json.loads((HERE / "script.json").read_text()).get(self.seq, "ok")

        def track(self, frame):
            if self.what in ("crash", "crash_once") and frame.index == 2:
                marks = HERE / f"{self.seq}.attempts"
                before = len(marks.read_text().splitlines()) if marks.exists() else 0
                with open(marks, "a") as f:
                    f.write(f"{os.getpid()}\\n")
                if self.what == "crash" or before == 0:
                    os._exit(3)  # as a segfault or the OOM killer would end it
            if self.what == "hang" and frame.index == 2:
                (HERE / f"{self.seq}.started").write_text(str(os.getpid()))
                while not self.ctx.control.stop_requested:
                    time.sleep(0.01)
            return Estimate(index=frame.index, timestamp=frame.timestamp, pose=frame.gt_pose.copy(),
                            intrinsics=frame.intrinsics.copy())


    @hookimpl
    def slam3r_make_frontend(name, context):
        return Scripted(context) if name == "scripted" else None
''')


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: 2 CPUs, a small object store, no dashboard (start-up time)."""
    ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for seed, name in enumerate(GOOD + (BAD,)):
        rc = cli_main(["synth", "--out", str(root / "tum" / name), "--frames", "36", "--format", "tum",
                       "--width", "128", "--height", "96", "--seed", str(seed), "-q"])
        assert rc == 0
    rgb = sorted((root / "tum" / BAD / "rgb").iterdir())
    rgb[15].unlink()  # frame 15 (the 6th at stride 3) cannot be read
    return root


def scripted(tmp_path: Path, script: dict[str, str]) -> list[str]:
    plugin = tmp_path / "scripted" / "scripted_frontend.py"
    plugin.parent.mkdir()
    plugin.write_text(SCRIPTED)
    (plugin.parent / "script.json").write_text(json.dumps(script))
    return ["frontend=scripted", f"plugins=[{plugin}]", "disable=[fusion,pointcloud,viewer,loop_closure]",
            "evaluation.plot=false"]


def csv_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {r["sequence"]: r for r in csv.DictReader(f)}


def ran(rows):
    return {r.sequence: r for r in rows if r.status != "missing"}


def test_workers_2_equals_workers_1_equals_sequential(local_ray, root, tmp_path):
    results = {}
    for mode, workers in (("seq", None), ("w1", 1), ("w2", 2)):
        rows, out, _ = run_bench("tum.yaml", root=root, out=tmp_path / mode, overrides=RGBD, protocol="app",
                                 workers=workers)
        results[mode] = (ran(rows), out)
    seq_rows, seq_out = results["seq"]
    assert {s for s, r in seq_rows.items() if r.status == "ok"} == set(GOOD)
    assert seq_rows[BAD].status == "error" and "rgb" in seq_rows[BAD].note
    for mode in ("w1", "w2"):
        rows, out = results[mode]
        assert list(rows) == list(seq_rows)  # the list's order, whatever order the tasks finished in
        for s, r in rows.items():
            want = seq_rows[s]
            for col in COMPARED:
                got, exp = getattr(r, col), getattr(want, col)
                if col == "run_folder":
                    got, exp = Path(got).name, Path(exp).name
                assert got == exp, (mode, s, col)
            assert r.note == want.note
            if r.status == "ok":
                a, b = out / s, seq_out / s
                assert (a / "trajectory.txt").read_bytes() == (b / "trajectory.txt").read_bytes()  # bit for bit
                ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
                assert {k: ma[k] for k in ("ate", "rpe_trans", "rpe_rot")} == \
                       {k: mb[k] for k in ("ate", "rpe_trans", "rpe_rot")}
                # the same run folder as the sequential command writes
                assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
                # where and how long: the task's own node, wall time and peak memory
                assert r.node and r.wall_s > 0 and r.peak_mem_gb > 0
        table = csv_rows(out / "bench.csv")
        assert table[BAD]["status"] == "error" and table[GOOD[0]]["node"] and float(table[GOOD[0]]["wall_s"]) > 0
        assert table["mean"]["status"] == "2/8 ok"
        md = (out / "bench.md").read_text()
        assert "Ran as Ray tasks" in md and "| wall (s) | node |" in md and "per task 1 CPU and 0 GPU" in md
    assert "Ran as Ray tasks" not in (seq_out / "bench.md").read_text()


def test_a_crashed_worker_is_retried_then_reported(local_ray, root, tmp_path):
    sets = scripted(tmp_path, {GOOD[0]: "crash", GOOD[1]: "crash_once"})
    rows, out, _ = run_bench("tum.yaml", root=root, out=tmp_path / "b", overrides=sets + ["cluster.max_retries=1"],
                             protocol="app", workers=2, sequences=list(GOOD))
    by = ran(rows)
    marks = tmp_path / "scripted"
    # crash: the first attempt and its one retry both died; the row says so, the others finished
    assert len((marks / f"{GOOD[0]}.attempts").read_text().split()) == 2
    assert by[GOOD[0]].status == "error" and "(after 1 retry)" in by[GOOD[0]].note
    assert "Worker" in by[GOOD[0]].note or "died" in by[GOOD[0]].note.lower()
    # crash_once: the retry finished (its run folder cleared of the dead attempt's files first)
    pids = (marks / f"{GOOD[1]}.attempts").read_text().split()
    assert len(pids) == 2 and pids[0] != pids[1]
    assert by[GOOD[1]].status == "ok" and by[GOOD[1]].frames == 12
    traj = [ln for ln in (out / GOOD[1] / "trajectory.txt").read_text().splitlines() if ln and ln[0] != "#"]
    assert len(traj) == 12
    assert csv_rows(out / "bench.csv")[GOOD[0]]["status"] == "error"


def _interrupt_when(paths_ready, out_csv: Path, want_ok: set[str], stop: threading.Event,
                    send=lambda: os.kill(os.getpid(), signal.SIGINT)) -> threading.Thread:
    """A thread that sends the interrupt once every file in ``paths_ready`` exists and ``out_csv`` lists
    ``want_ok`` as ok (what the table had before Ctrl-C)."""

    def watch():
        guard = time.monotonic() + HANG_GUARD_S  # only a broken program gets here: the test then fails, not hangs
        while not stop.is_set():
            ready = all(p.exists() for p in paths_ready) and out_csv.exists()
            if ready and all(csv_rows(out_csv).get(s, {}).get("status") == "ok" for s in want_ok) \
                    or time.monotonic() > guard:
                send()
                return
            stop.wait(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_batch_over_a_list_maps_every_recording(local_ray, root, tmp_path):
    listing = tmp_path / "lists" / "recordings.txt"
    listing.parent.mkdir()
    rel = os.path.relpath(root / "tum" / GOOD[1], listing.parent)
    listing.write_text(f"# a recording given relative to this file, and one that fails\n\n{rel}\n"
                       f"{root / 'tum' / BAD}\n")
    out = tmp_path / "batch"
    rc = cli_main(["batch", "--config", "tum.yaml", "--sources", str(listing), "--out", str(out), "--workers", "2"]
                  + [a for s in RGBD + ["source.stride=3"] for a in ("--set", s)])
    assert rc == 1  # one recording failed: the table is written, the exit code says so
    by = csv_rows(out / "bench.csv")
    assert list(by) == [GOOD[1], BAD, "mean"]
    assert [by[s]["status"] for s in (GOOD[1], BAD)] == ["ok", "error"] and "rgb" in by[BAD]["note"]
    assert by[GOOD[1]]["frames"] == "12" and float(by[GOOD[1]]["ate"]) < 0.05 and by[GOOD[1]]["node"]
    assert (out / GOOD[1] / "trajectory.txt").is_file() and by["mean"]["status"] == "1/2 ok"


def test_ctrl_c_on_the_command_line_with_a_local_ray_started_for_it(root, tmp_path):
    """The whole command as a user runs it: no address, so it starts (and stops) its own local Ray;
    Ctrl-C reaches the driver; exit 130, the table printed and saved."""
    hang = GOOD[1]
    sets = scripted(tmp_path, {hang: "hang"})
    out = tmp_path / "b"
    args = ["bench", "--config", "tum.yaml", "--protocol", "app", "--root", str(root), "--out", str(out),
            "--sequences", ",".join(GOOD), "--workers", "2"]
    for s in sets + ["cluster.dashboard=false", "cluster.object_store_mb=100"]:
        args += ["--set", s]
    proc = start_cli(args, tmp_path)
    stop = threading.Event()
    watcher = _interrupt_when([tmp_path / "scripted" / f"{hang}.started"], out / "bench.csv", {GOOD[0]}, stop,
                              send=lambda: proc.send_signal(signal.SIGINT))
    try:
        stdout, stderr = proc.finish()
    finally:
        stop.set()
        watcher.join(5)
    assert proc.returncode == 130, stderr[-3000:]
    assert "as Ray tasks on a local Ray started here, at most 2 at a time" in stderr
    assert "interrupted (SIGINT): 1 run(s) finished" in stderr and "Traceback" not in stderr
    assert f"| {GOOD[0]} | ok | 12 |" in stdout and f"| {hang} | cancelled | 3 |" in stdout
    rows = csv_rows(out / "bench.csv")
    assert rows[GOOD[0]]["status"] == "ok" and rows[hang]["status"] == "cancelled"
    # the running task was asked to stop: it finished the frame in progress (frame 2) and wrote its outputs
    assert "stopped by SIGINT after 3 frames" in rows[hang]["note"]
    traj = [ln for ln in (out / hang / "trajectory.txt").read_text().splitlines() if ln and ln[0] != "#"]
    assert len(traj) == 3
