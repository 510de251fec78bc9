"""Hardening probe (issue 20): attacker and new-user cases against the command line, one line each.

    python benchmarks/probe_hardening.py                      # this checkout
    python benchmarks/probe_hardening.py --code /tmp/links    # another checkout's packages (the "before")
    python benchmarks/probe_hardening.py --only yaml,export   # cases whose name contains a word

Every case runs ``run_slam.py`` in a subprocess (in a scratch folder, with the fake source and frontend
of ``tests/fake_plugin.py`` where a run is needed) and says ``ok`` (the hardened behaviour: one line
naming the file or key, the right exit code, nothing published half-written, bounded memory and time)
or ``FAIL`` with what happened. Severity is the issue's: high / medium / low. The table and a raw file
``benchmarks/results/probe_hardening_<date>_<commit>.txt`` (machine, load average) are written.
``--code DIR`` puts DIR first on PYTHONPATH (a folder of links ``slam3r_app``, ``slam3r_plugins``,
``slam3r_datasets``, ``stream3r`` to another checkout) and runs that checkout's ``run_slam.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import REPO, cpu_model, git_commit  # noqa: E402

FAKE = str(REPO / "tests" / "fake_plugin.py")
MISBEHAVING = str(REPO / "tests" / "misbehaving_plugin.py")
TINY = ("model.arch={img_size: 28, embed_dim: 16, depth: 1, num_heads: 2, patch_embed: conv, camera_trunk_depth: 1, "
        "camera_num_heads: 2, dpt_features: 8, dpt_out_channels: [4, 8, 8, 8], dpt_intermediate_layers: [0, 0, 0, 0]}")
GUARD = 240  # seconds: a case still running then is a hang (FAIL)


@dataclass
class Case:
    name: str
    severity: str
    what: str
    fn: Callable[["Probe", Path], tuple[bool, str]]


CASES: list[Case] = []


def case(name: str, severity: str, what: str):
    def deco(fn):
        CASES.append(Case(name, severity, what, fn))
        return fn
    return deco


class Probe:
    def __init__(self, code: Optional[str], run_slam: Path) -> None:
        self.code = code
        self.run_slam = run_slam

    def env(self, extra: Optional[dict] = None) -> dict:
        env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg", HF_HUB_OFFLINE="1")
        if self.code:
            env["PYTHONPATH"] = self.code + os.pathsep + env.get("PYTHONPATH", "")
        env.update(extra or {})
        return env

    def cli(self, args: list[str], cwd: Path, env: Optional[dict] = None, limit_as: Optional[int] = None,
            limit_fsize: Optional[int] = None, timeout: float = GUARD, stdout=subprocess.PIPE,
            prefix: Optional[list[str]] = None) -> subprocess.CompletedProcess:
        def pre() -> None:
            if limit_as:
                resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))
            if limit_fsize:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit_fsize, limit_fsize))
        cmd = [*(prefix or []), sys.executable, str(self.run_slam), *args]
        try:
            return subprocess.run(cmd, cwd=str(cwd), stdout=stdout, stderr=subprocess.PIPE, text=True,
                                  env=self.env(env), timeout=timeout, preexec_fn=pre)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(cmd, -999, "", f"(still running after {timeout:.0f} s: killed)")

    def export(self, args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
        """``run_slam.py export ARGS --plugin tests/fake_plugin.py``; the code before issue 20 has no
        ``--plugin`` (it loaded the run folder's plugins): then without it."""
        p = self.cli([*args, "--plugin", FAKE], cwd, **kw)
        if p.returncode == 2 and "unrecognized arguments: --plugin" in p.stderr:
            p = self.cli(args, cwd, **kw)
        return p

    def fake_cfg(self, tmp: Path, **extra) -> Path:
        import yaml

        cfg = {"name": "fake", "source": {"type": "fake", "max_frames": 10}, "frontend": "fake", "progress": False,
               "plugins": [FAKE], "disable": ["viewer"], "trajectory": {"every_n": 1000},
               "evaluation": {"enabled": False}}
        cfg.update(extra)
        path = tmp / "cfg.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def fake_run(self, tmp: Path, name: str = "run", **extra) -> tuple[Path, subprocess.CompletedProcess]:
        run = tmp / name
        p = self.cli(["--config", str(self.fake_cfg(tmp, **extra)), "--output", str(run)], tmp)
        return run, p


# ----------------------------------------------------------------------------- helpers
def errors(p: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]


def one_line(p: subprocess.CompletedProcess, code: int, *words: str) -> tuple[bool, str]:
    """Exit ``code``, exactly one ``error:`` line holding every word, no traceback."""
    errs = errors(p)
    ok = p.returncode == code and len(errs) == 1 and "Traceback" not in p.stderr and all(w in errs[0] for w in words)
    tail = errs[0] if errs else (p.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]
    return ok, f"exit {p.returncode}: {tail[:150]}" + ("" if ok else " [traceback]" if "Traceback" in p.stderr else "")


def big_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + 3 * width)
    z = zlib.compressobj(9)
    data = b"".join([z.compress(row) for _ in range(height)] + [z.flush()])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def ply_complete(path: Path) -> bool:
    """The PLY file holds what its header declares (binary: exact size)."""
    head = path.read_bytes()[:65536]
    end = head.find(b"end_header\n")
    if end < 0:
        return False
    sizes = {"float": 4, "double": 8, "uchar": 1, "int": 4, "uint": 4, "char": 1, "short": 2, "ushort": 2}
    total, elem = end + 11, None
    counts = []
    for line in head[:end].decode().splitlines():
        p = line.split()
        if p[:1] == ["element"]:
            elem = [int(p[2]), 0]
            counts.append(elem)
        elif p[:1] == ["property"] and elem is not None:
            elem[1] += (sizes[p[2]] + 3 * sizes[p[3]]) if p[1] == "list" else sizes[p[1]]
    total += sum(n * size for n, size in counts)
    return total == path.stat().st_size


# ----------------------------------------------------------------------------- the cases
@case("disk_full_tmpfs_mesh", "high", "a 600 kB tmpfs as --output: the mesh does not fit")
def _disk_full(pr: Probe, tmp: Path):
    mnt = tmp / "small"
    mnt.mkdir()
    unshare = shutil.which("unshare")
    if unshare is None:
        return True, "skipped: no unshare"
    base = [unshare, "-m"] if os.geteuid() == 0 else [unshare, "-r", "-m"]
    prefix = [*base, "sh", "-c", f'mount -t tmpfs -o size=600k tmpfs {mnt} && "$@"; rc=$?; cp -r {mnt}/run {tmp}/copy; '
              f'exit $rc', "sh"]
    p = pr.cli(["--config", str(pr.fake_cfg(tmp)), "--output", str(mnt / "run")], tmp, prefix=prefix)
    if "mount:" in p.stderr and p.returncode != 1:
        return True, "skipped: cannot mount a tmpfs here"
    plys = list((tmp / "copy").glob("*.ply"))
    broken = [x.name for x in plys if not ply_complete(x)]
    ok, detail = one_line(p, 1, "could not write", "mesh.ply")
    spam = sum(1 for ln in p.stderr.splitlines() if "RPly" in ln or "Logging error" in ln)
    ok = ok and not broken and spam == 0
    return ok, f"{detail}; truncated .ply published: {broken or 'none'}; RPly/logging lines: {spam}"


@case("disk_full_file_size_limit", "high", "ulimit -f 400 kB: every write past it is cut short")
def _fsize(pr: Probe, tmp: Path):
    p = pr.cli(["--config", str(pr.fake_cfg(tmp)), "--output", str(tmp / "run")], tmp, limit_fsize=400_000)
    broken = [x.name for x in (tmp / "run").glob("*.ply") if not ply_complete(x)]
    ok, detail = one_line(p, 1, "could not write")
    spam = sum(1 for ln in p.stderr.splitlines() if "RPly" in ln)
    return ok and not broken and spam == 0, f"{detail}; truncated .ply published: {broken or 'none'}; RPly lines: {spam}"


def _export_payload(pr: Probe, tmp: Path, fmt: str):
    import yaml

    run, p = pr.fake_run(tmp)
    if p.returncode != 0:
        return False, f"the fake run failed: {p.stderr[-200:]}"
    marker = tmp / "PAYLOAD_RAN"
    payload = tmp / "payload.py"
    payload.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["plugins"] = [*cfg.get("plugins", []), str(payload)]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    p = pr.cli(["export", str(run), "--format", fmt, "--out", str(tmp / "x")], tmp)
    return not marker.exists(), f"payload.py {'RAN' if marker.exists() else 'not run'}; export exit {p.returncode}"


@case("export_runs_folder_code_nerfstudio", "high", "a run folder's config.yaml lists plugins: [payload.py]")
def _exp_ns(pr, tmp):
    return _export_payload(pr, tmp, "nerfstudio")


@case("export_runs_folder_code_depth", "high", "the same with --format depth")
def _exp_depth(pr, tmp):
    return _export_payload(pr, tmp, "depth")


def _child_peak(pr: Probe, tmp: Path, args: list[str], limit_as: int) -> tuple[subprocess.CompletedProcess, float, float]:
    """The run under an address-space cap (a run that needs more fails instead of swapping the machine)."""
    t0 = time.monotonic()
    p = pr.cli(args, tmp, limit_as=limit_as)
    return p, float("nan"), time.monotonic() - t0


@case("huge_png_folder", "high", "three 10000x10000 PNGs (300 kB each) in a folder source")
def _huge_png(pr: Probe, tmp: Path):
    folder = tmp / "frames"
    folder.mkdir()
    data = big_png(10_000, 10_000)
    for i in range(3):
        (folder / f"{i:04d}.png").write_bytes(data)
    p, peak, secs = _child_peak(pr, tmp, ["--config", "folder.yaml", "--set", f"source.path={folder}",
                                          "--set", "source.intrinsics=[500,500,320,240]", "--set",
                                          "model.random_weights=true", "--set", TINY, "--set",
                                          "disable=[fusion,pointcloud,viewer]", "--set", "progress=false",
                                          "--output", str(tmp / "run")], limit_as=6 << 30)
    ok, detail = one_line(p, 1, "max_image_pixels")
    return ok, f"{detail}; {secs:.0f} s"


@case("huge_png_rosbag", "high", "a ROS 2 bag whose CompressedImage is a 20000x20000 PNG (1.2 MB)")
def _huge_bag(pr: Probe, tmp: Path):
    try:
        from rosbags.rosbag2 import Writer
        from rosbags.typesys import Stores, get_typestore
    except ImportError:
        return True, "skipped: no rosbags"
    store = get_typestore(Stores.LATEST)
    Img = store.types["sensor_msgs/msg/CompressedImage"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    import numpy as np

    data = np.frombuffer(big_png(20_000, 20_000), np.uint8)
    bag = tmp / "bag"
    with Writer(bag, version=9) as w:
        conn = w.add_connection("/camera/color/image_raw/compressed", Img.__msgtype__, typestore=store)
        for i in range(2):
            msg = Img(header=Header(stamp=Time(sec=100 + i, nanosec=0), frame_id="cam"), format="png", data=data)
            w.write(conn, (100 + i) * 10**9, store.serialize_cdr(msg, Img.__msgtype__))
    p, peak, secs = _child_peak(pr, tmp, ["--config", "rosbag.yaml", "--set", f"source.path={bag}", "--set",
                                          "source.intrinsics=[500,500,320,240]", "--set", "model.random_weights=true",
                                          "--set", TINY, "--set", "disable=[fusion,pointcloud,viewer]", "--set",
                                          "progress=false", "--output", str(tmp / "run")], limit_as=6 << 30)
    ok, detail = one_line(p, 1, "max_image_pixels")
    return ok, f"{detail}; {secs:.0f} s"


BOMB = "".join(f"{c}: &{c} [{', '.join(['*' + q] * 9) if q else ', '.join(['lol'] * 9)}]\n"
               for q, c in zip(["", "a", "b", "c", "d", "e", "f", "g"], "abcdefgh"))


def _bomb(pr: Probe, tmp: Path, key: str):
    cfg = tmp / "bomb.yaml"
    cfg.write_text(BOMB + f"{key}: [{', '.join(['*h'] * 9)}]\n")
    t0 = time.monotonic()
    p = pr.cli(["--config", str(cfg)], tmp, limit_as=3 << 30, timeout=120)
    ok, detail = one_line(p, 1, "aliases")
    return ok, f"{len(cfg.read_bytes())}-byte file: {detail}; {time.monotonic() - t0:.1f} s (3 GiB address-space cap)"


@case("yaml_bomb_known_key", "high", "an alias bomb under disable:")
def _bomb_known(pr, tmp):
    return _bomb(pr, tmp, "disable")


@case("yaml_bomb_unknown_key", "medium", "an alias bomb under an unknown key")
def _bomb_unknown(pr, tmp):
    return _bomb(pr, tmp, "zzz")


@case("evaluate_returns_datetime", "high", "an evaluate hook returns a datetime")
def _datetime(pr: Probe, tmp: Path):
    run, p = pr.fake_run(tmp, plugins=[FAKE, MISBEHAVING], misbehave={"hook": "evaluate", "action": "not_json"})
    metrics = run / "metrics.json"
    ok = p.returncode == 3 and "Traceback" not in p.stderr and metrics.is_file() and "run folder:" in p.stdout
    return ok, f"exit {p.returncode}; metrics.json {'written' if metrics.is_file() else 'MISSING'}; " \
               f"summary {'printed' if 'run folder:' in p.stdout else 'NOT printed'}"


@case("export_out_not_empty", "high", "export into an --out that holds an earlier export")
def _out_nonempty(pr: Probe, tmp: Path):
    run, _ = pr.fake_run(tmp)
    out = tmp / "out"
    base = ["export", str(run), "--out", str(out)]
    pr.export([*base, "--format", "depth"], tmp)
    p = pr.export([*base, "--format", "nerfstudio"], tmp)
    return one_line(p, 1, "already holds")


@case("export_out_is_a_file", "medium", "export --out naming a file")
def _out_file(pr: Probe, tmp: Path):
    run, _ = pr.fake_run(tmp)
    (tmp / "afile").write_text("x")
    p = pr.cli(["export", str(run), "--format", "depth", "--out", str(tmp / "afile")], tmp)
    return one_line(p, 1, "is a file")


@case("export_format_comma", "medium", "export --format , (no format)")
def _fmt_comma(pr: Probe, tmp: Path):
    run, _ = pr.fake_run(tmp)
    p = pr.cli(["export", str(run), "--format", ",", "--out", str(tmp / "none")], tmp)
    return one_line(p, 2, "no format")


@case("export_incomplete_run_scale", "high", "export a run killed during its exports (metric scale known)")
def _incomplete(pr: Probe, tmp: Path):
    marker = tmp / "entered"
    cfg = pr.fake_cfg(tmp, plugins=[FAKE, MISBEHAVING], frontend="fake_half",
                      misbehave={"hook": "export", "action": "hang", "marker": str(marker)})
    run = tmp / "run"
    proc = subprocess.Popen([sys.executable, str(pr.run_slam), "--config", str(cfg), "--output", str(run)],
                            cwd=str(tmp), env=pr.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while not marker.exists() and proc.poll() is None and time.monotonic() - t0 < GUARD:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    p = pr.export(["export", str(run), "--format", "depth", "--out", str(tmp / "out")], tmp)
    warned = "incomplete run" in p.stderr
    # the fake camera moves 0.05 m a frame along x; the frontend reports half that, fusion the scale 2
    try:
        rows = [ln.split() for ln in (tmp / "out" / "depth" / "trajectory.txt").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
        step = float(rows[-1][1]) / (len(rows) - 1)
    except (OSError, ValueError, IndexError, ZeroDivisionError):
        step = float("nan")
    metres = abs(step - 0.05) < 1e-6
    return p.returncode == 0 and warned and metres, \
        f"exit {p.returncode}; incomplete-run warning: {'yes' if warned else 'NO'}; x step of the exported poses " \
        f"{step:.4f} ({'metres' if metres else 'NOT metres: 0.05 expected'})"


def _config_case(pr: Probe, tmp: Path, content: Optional[bytes] = None, override: Optional[str] = None,
                 words: tuple[str, ...] = ()):
    args = []
    if content is not None:
        (tmp / "bad.yaml").write_bytes(content)
        args = ["--config", str(tmp / "bad.yaml")]
    else:
        args = ["--config", str(pr.fake_cfg(tmp)), "--set", override]
    p = pr.cli(args, tmp, timeout=120)
    ok, detail = one_line(p, 1, *words)
    made = [x.name for x in tmp.iterdir() if x.is_dir()]
    return ok and not made, f"{detail}; folders made: {made or 'none'}"


@case("config_nested_brackets", "low", "a config of 100k nested [")
def _nested(pr, tmp):
    return _config_case(pr, tmp, content=b"a: " + b"[" * 100_000)


@case("config_not_utf8", "low", "a config with a Latin-1 byte")
def _latin(pr, tmp):
    return _config_case(pr, tmp, content=b"name: caf\xe9\n", words=("UTF-8",))


@case("config_5000_digits", "low", "seed: a 5000-digit integer")
def _digits(pr, tmp):
    return _config_case(pr, tmp, content=b"seed: " + b"9" * 5000 + b"\n")


@case("output_unknown_field", "low", "--set output=runs/{nope}")
def _nope(pr, tmp):
    return _config_case(pr, tmp, override="output=runs/{nope}")


@case("output_huge_width", "low", "--set output=runs/{name:>99999999999}")
def _width(pr, tmp):
    return _config_case(pr, tmp, override="output=runs/{name:>99999999999}")


@case("output_attribute_access", "low", "--set output=runs/{name.__class__.__name__}")
def _attr(pr, tmp):
    return _config_case(pr, tmp, override="output=runs/{name.__class__.__name__}")


@case("output_permissions", "low", "every output as readable as run.log")
def _perms(pr: Probe, tmp: Path):
    run, p = pr.fake_run(tmp)
    modes = {f.name: oct(f.stat().st_mode & 0o777) for f in run.iterdir() if f.is_file()}
    distinct = sorted(set(modes.values()))
    return len(distinct) == 1, f"modes: {distinct} (run.log {modes.get('run.log')}, mesh.ply {modes.get('mesh.ply')})"


@case("run_folder_removed", "low", "the run folder is deleted during the run")
def _removed(pr: Probe, tmp: Path):
    run, p = pr.fake_run(tmp, plugins=[FAKE, MISBEHAVING],
                         misbehave={"hook": "process_frame", "action": "remove_run_folder", "at_frame": 3,
                                    "every_frame": False})
    remade = run.exists()
    return p.returncode == 1 and not remade, f"exit {p.returncode}; folder silently remade: {remade}"


@case("symlink_out_of_sequence", "low", "rgb/x.png in a TUM sequence links to a file outside it")
def _symlink(pr: Probe, tmp: Path):
    p0 = pr.cli(["synth", "--out", str(tmp / "seq"), "--frames", "3", "--format", "tum", "--seed", "1", "-q"], tmp)
    seq = next((tmp / "seq").glob("**/rgb.txt"), None)
    if seq is None:
        return False, f"synth failed: {p0.stderr[-200:]}"
    seq = seq.parent
    victim = sorted((seq / "rgb").glob("*.png"))[1]
    secret = tmp / "secret.png"
    shutil.copy(victim, secret)
    victim.unlink()
    os.symlink(secret, victim)
    p = pr.cli(["--config", "synthetic.yaml", "--set", "source.type=tum", "--set", f"source.path={seq}",
                "--set", "frontend=rgbd", "--set", "progress=false", "--output", str(tmp / "run")], tmp)
    return one_line(p, 1, "symbolic link")


@case("evaluation_fails_exit", "medium", "the evaluation fails (a trajectory on a line)")
def _eval_fail(pr: Probe, tmp: Path):
    run, p = pr.fake_run(tmp, evaluation={"enabled": True})
    return p.returncode == 3, f"exit {p.returncode}"


@case("evaluation_without_evo", "medium", "evo cannot be imported")
def _no_evo(pr: Probe, tmp: Path):
    block = tmp / "block" / "evo"
    block.mkdir(parents=True)
    (block / "__init__.py").write_text("raise ImportError('evo blocked by the probe')\n")
    env = {"PYTHONPATH": f"{tmp / 'block'}{os.pathsep}{pr.code or ''}"}
    run = tmp / "run"
    p = pr.cli(["--config", str(pr.fake_cfg(tmp, evaluation={"enabled": True})), "--output", str(run)], tmp, env=env)
    return p.returncode == 3, f"exit {p.returncode}"


@case("all_frames_lost_exit", "medium", "every frame lost, evaluation on")
def _lost(pr: Probe, tmp: Path):
    run, p = pr.fake_run(tmp, frontend="fake_lost", evaluation={"enabled": True})
    return p.returncode not in (0,), f"exit {p.returncode}"


@case("help_shows_run_options", "medium", "run_slam.py --help")
def _help(pr: Probe, tmp: Path):
    p = pr.cli(["--help"], tmp)
    missing = [o for o in ("--config", "--set", "--output") if o not in p.stdout]
    return not missing, f"missing: {missing or 'none'}"


@case("broken_pipe", "medium", "run_slam.py plugins with its reader gone (| head)")
def _pipe(pr: Probe, tmp: Path):
    r, w = os.pipe()
    os.close(r)
    try:
        p = pr.cli(["plugins", "--options"], tmp, stdout=w)
    finally:
        os.close(w)
    tb = "Traceback" in p.stderr or "BrokenPipeError" in p.stderr
    return not tb, f"exit {p.returncode}; traceback: {tb}"


@case("rosbag_rgbd_no_depth_topic", "medium", "a bag, frontend rgbd, no depth topic")
def _bag_depth(pr: Probe, tmp: Path):
    try:
        from rosbags.rosbag2 import Writer
        from rosbags.typesys import Stores, get_typestore
    except ImportError:
        return True, "skipped: no rosbags"
    import cv2
    import numpy as np

    store = get_typestore(Stores.LATEST)
    Img = store.types["sensor_msgs/msg/CompressedImage"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    ok_, png = cv2.imencode(".png", np.zeros((48, 64, 3), np.uint8))
    bag = tmp / "bag"
    with Writer(bag, version=9) as w:
        conn = w.add_connection("/cam/image/compressed", Img.__msgtype__, typestore=store)
        for i in range(3):
            msg = Img(header=Header(stamp=Time(sec=100 + i, nanosec=0), frame_id="cam"), format="png",
                      data=png.reshape(-1))
            w.write(conn, (100 + i) * 10**9, store.serialize_cdr(msg, Img.__msgtype__))
    p = pr.cli(["--config", "rosbag.yaml", "--set", f"source.path={bag}", "--set", "frontend=rgbd", "--set",
                "source.intrinsics=[50,50,32,24]", "--set", "progress=false", "--output", str(tmp / "run")], tmp)
    return one_line(p, 1, "source.rosbag_depth_topic")


@case("pydantic_value_error_leak", "low", "a validator's message (trajectory.formats=[])")
def _leak(pr: Probe, tmp: Path):
    p = pr.cli(["--config", str(pr.fake_cfg(tmp)), "--set", "trajectory.formats=[]"], tmp)
    return "Value error," not in p.stderr and p.returncode == 1, f"exit {p.returncode}; 'Value error,' shown: " \
                                                                 f"{'Value error,' in p.stderr}"


@case("bench_exit_documented", "low", "bench --help says what its exit codes mean")
def _bench(pr: Probe, tmp: Path):
    p = pr.cli(["bench", "--help"], tmp)
    return "exit codes" in p.stdout, f"'exit codes' in bench --help: {'exit codes' in p.stdout}"


@case("one_sigterm_stuck_hook", "medium", "docker stop: one SIGTERM while a frame hook hangs (frame limit 30 s)")
def _sigterm(pr: Probe, tmp: Path):
    marker = tmp / "entered"
    cfg = pr.fake_cfg(tmp, plugins=[FAKE, MISBEHAVING], misbehave={"hook": "process_frame", "action": "hang",
                                                                   "at_frame": 3, "every_frame": False,
                                                                   "marker": str(marker)})
    proc = subprocess.Popen([sys.executable, str(pr.run_slam), "--config", str(cfg), "--output", str(tmp / "run")],
                            cwd=str(tmp), env=pr.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not marker.exists() and proc.poll() is None and time.monotonic() - t0 < GUARD:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    t_sig = time.monotonic()
    try:
        proc.wait(10)  # docker stop's SIGKILL comes 10 s after SIGTERM
        ended = time.monotonic() - t_sig
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        ended = None
    summary = (tmp / "run" / "summary.json")
    complete = json.loads(summary.read_text()).get("complete") if summary.is_file() else None
    ok = ended is not None and complete is True
    return ok, (f"ended {ended:.1f} s after SIGTERM" if ended is not None else "still running 10 s after SIGTERM "
                "(SIGKILL)") + f"; summary complete: {complete}"


# further cases: attacker / new user, beyond the list
@case("export_config_alias_bomb", "medium", "export a run folder whose config.yaml is an alias bomb")
def _exp_bomb(pr: Probe, tmp: Path):
    run, _ = pr.fake_run(tmp)
    (run / "config.yaml").write_text(BOMB + "source: {type: fake, x: [" + ", ".join(["*h"] * 9) + "]}\n")
    t0 = time.monotonic()
    p = pr.export(["export", str(run), "--format", "depth", "--out", str(tmp / "o")], tmp, limit_as=3 << 30,
                  timeout=120)
    ok = p.returncode == 1 and "Traceback" not in p.stderr and len(errors(p)) == 1
    return ok, f"exit {p.returncode}; {(errors(p) or ['-'])[0][:120]}; {time.monotonic() - t0:.1f} s"


@case("export_deep_json", "low", "export a run folder whose summary.json / cameras.json nest 100k deep")
def _deep_json(pr: Probe, tmp: Path):
    run, _ = pr.fake_run(tmp)
    (run / "summary.json").write_text("[" * 100_000)
    (run / "cameras.json").write_text("[" * 100_000)
    p = pr.export(["export", str(run), "--format", "depth", "--out", str(tmp / "o")], tmp)
    return "Traceback" not in p.stderr and p.returncode in (0, 1), f"exit {p.returncode}; " \
        f"{(errors(p) or ['no error line'])[0][:120]}"


@case("output_under_a_file", "low", "--output /dev/null/run")
def _devnull(pr: Probe, tmp: Path):
    p = pr.cli(["--config", str(pr.fake_cfg(tmp)), "--output", "/dev/null/run"], tmp)
    return one_line(p, 1, "/dev/null")


@case("tum_list_names_etc_passwd", "medium", "a TUM rgb.txt line naming /etc/passwd")
def _passwd(pr: Probe, tmp: Path):
    p0 = pr.cli(["synth", "--out", str(tmp / "seq"), "--frames", "3", "--format", "tum", "--seed", "1", "-q"], tmp)
    seq = next((tmp / "seq").glob("**/rgb.txt"), None)
    if seq is None:
        return False, f"synth failed: {p0.stderr[-200:]}"
    lines = seq.read_text().splitlines()
    lines[-1] = lines[-1].split()[0] + " /etc/passwd"
    seq.write_text("\n".join(lines) + "\n")
    p = pr.cli(["--config", "synthetic.yaml", "--set", "source.type=tum", "--set", f"source.path={seq.parent}",
                "--set", "frontend=rgbd", "--set", "progress=false", "--output", str(tmp / "run")], tmp)
    return one_line(p, 1, "absolute path")


@case("plugins_listing_of_a_bomb", "low", "run_slam.py plugins --config bomb.yaml")
def _plugins_bomb(pr: Probe, tmp: Path):
    cfg = tmp / "bomb.yaml"
    cfg.write_text(BOMB + f"disable: [{', '.join(['*h'] * 9)}]\n")
    p = pr.cli(["plugins", "--config", str(cfg)], tmp, limit_as=3 << 30, timeout=120)
    return one_line(p, 1, "aliases")


@case("eval_of_garbage_files", "low", "run_slam.py eval on a binary file")
def _eval_garbage(pr: Probe, tmp: Path):
    (tmp / "gt.txt").write_bytes(os.urandom(4096))
    (tmp / "est.txt").write_bytes(b"\xff\xfe" * 100)
    p = pr.cli(["eval", "--gt", str(tmp / "gt.txt"), "--est", str(tmp / "est.txt")], tmp)
    return p.returncode in (1, 2) and "Traceback" not in p.stderr, f"exit {p.returncode}; " \
        f"{(errors(p) or [p.stderr.strip()[-120:]])[0][:120]}"


@case("negative_grace_and_budget", "low", "--set stop_grace_s=-1 / source.max_image_pixels=0")
def _neg(pr: Probe, tmp: Path):
    outs = []
    ok = True
    for o in ("stop_grace_s=-1", "source.max_image_pixels=0"):
        p = pr.cli(["--config", str(pr.fake_cfg(tmp)), "--set", o], tmp)
        good = p.returncode == 1 and "Traceback" not in p.stderr and o.split("=")[0].split(".")[-1] in p.stderr
        ok = ok and good
        outs.append(f"{o}: exit {p.returncode}")
    return ok, "; ".join(outs)


@case("save_now_then_full_disk_keeps_mesh", "medium", "ulimit -f while rewriting an existing file keeps the old one")
def _keep(pr: Probe, tmp: Path):
    script = textwrap.dedent(f"""
        import resource, sys, numpy as np, open3d as o3d
        sys.path[:0] = [p for p in [{(pr.code or '')!r}] if p]
        from slam3r_plugins.maps.common import write_triangle_mesh
        m = o3d.geometry.TriangleMesh.create_sphere(resolution=20)
        write_triangle_mesh({str(tmp / 'mesh.ply')!r}, m)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        try:
            write_triangle_mesh({str(tmp / 'mesh.ply')!r}, o3d.geometry.TriangleMesh.create_sphere(resolution=300))
            print("published")
        except OSError as e:
            print("refused:", str(e)[:100])
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=pr.env(), timeout=GUARD)
    return ply_complete(tmp / "mesh.ply") and "refused" in p.stdout, \
        f"{p.stdout.strip()[:120]}; mesh.ply complete: {ply_complete(tmp / 'mesh.ply')}; RPly lines: " \
        f"{p.stderr.count('RPly')}"


# ----------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", default=None, help="a folder of package links put first on PYTHONPATH (another checkout)")
    ap.add_argument("--run-slam", default=None, help="run_slam.py to run (default: the --code checkout's, else this one)")
    ap.add_argument("--only", default="", help="comma-separated words: run the cases whose name holds one")
    ap.add_argument("--out", default=None, help="raw file (default benchmarks/results/probe_hardening_<date>_<commit>.txt)")
    ap.add_argument("--label", default="", help="a word for the raw file's name (before / after)")
    args = ap.parse_args()
    run_slam = Path(args.run_slam) if args.run_slam else REPO / "run_slam.py"
    if args.code and not args.run_slam:
        app = Path(args.code) / "slam3r_app"
        run_slam = app.resolve().parent / "run_slam.py"
    pr = Probe(args.code, run_slam)
    words = [w for w in args.only.split(",") if w]
    cases = [c for c in CASES if not words or any(w in c.name for w in words)]
    commit = git_commit(short=True) or "unknown"
    header = [f"# probe_hardening.py, {time.strftime('%Y-%m-%d %H:%M:%S')}, commit {commit} (probe script), code "
              f"{args.code or REPO} ({run_slam}), {cpu_model()}, {os.cpu_count()} cores, python {sys.version.split()[0]}",
              f"# load average at the start: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}"]
    rows = []
    for c in cases:
        with tempfile.TemporaryDirectory(prefix=f"probe_{c.name}_") as d:
            t0 = time.monotonic()
            try:
                ok, detail = c.fn(pr, Path(d))
            except Exception as e:  # noqa: BLE001 - a probe that breaks is a finding, not a crash
                ok, detail = False, f"probe error: {type(e).__name__}: {e}"
            secs = time.monotonic() - t0
        line = f"{'ok  ' if ok else 'FAIL'} | {c.severity:<6} | {c.name:<36} | {secs:6.1f} s | {c.what} -> {detail}"
        print(line, flush=True)
        rows.append((ok, c.severity, line))
    bad = [r for r in rows if not r[0]]
    summary = (f"# {len(rows) - len(bad)} ok, {len(bad)} FAIL (high {sum(r[1] == 'high' for r in bad)}, medium "
               f"{sum(r[1] == 'medium' for r in bad)}, low {sum(r[1] == 'low' for r in bad)}); load average at the end: "
               f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(summary)
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / (
        f"probe_hardening_{time.strftime('%Y%m%d')}_{commit}{'_' + args.label if args.label else ''}.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(header + [r[2] for r in rows] + [summary]) + "\n")
    print(f"raw: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
