"""``benchmarks/stream_bench.py --cpu-smoke``: the GPU benchmark's CPU path, as CI runs it.

Checks what a reader of a committed result relies on: the printed tables in upstream's layout,
and the JSON's provenance (device, torch version, date, git commit) and per-point figures.
"""
from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_cpu_smoke_prints_the_tables_and_writes_provenance(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "stream_bench.py"), "--cpu-smoke",
                           "--modes", "causal", "window", "keyframe", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    assert "*Run Time (s).*" in text and "*VRAM (GB, peak allocated).*" in text
    assert text.count("| Num of Frames | 1 | 12 |") >= 2
    for mode in ("causal", "window", "keyframe"):
        row = re.search(rf"^\| ours {mode} fp32 \| ([0-9.]+) \| ([0-9.]+) \|$", text, re.M)
        assert row and float(row.group(1)) > 0 and float(row.group(2)) > 0, mode
    d = json.loads(out.read_text())
    assert d["device"] == "cpu" and d["torch"] == torch.__version__ and d["cuda"] is None
    datetime.datetime.fromisoformat(d["date"])
    if (REPO / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", d["git_commit"]), d["git_commit"]
    assert d["points"] == [1, 12]
    for mode in ("causal", "window", "keyframe"):
        s = d["summary"][f"ours {mode} fp32"]["s_per_frame"]
        assert set(s) == {"1", "12"} and all(v > 0 for v in s.values())
