"""Build the shipped TUM sample (``sample:tum_fr1_rpy``) from a TUM RGB-D sequence folder.

    python -m slam3r_datasets.make_sample --src /path/to/rgbd_dataset_freiburg1_rpy \\
        --out datasets/samples/tum_fr1_rpy --frames 80 --quality 90

Takes the first ``--frames`` colour frames, re-encodes them as JPEG (``--quality``),
copies the depth PNGs associated with them (TUM association, 0.02 s) byte for byte,
and trims ``groundtruth.txt`` to 0.1 s before the first / after the last frame.
The original header lines of the index files are kept. ``SOURCE.md`` is written
by hand (attribution) and left alone.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from slam3r_app.trajectory import associate

from .tum import read_index


def _headers(path: Path) -> list[str]:
    return [ln.rstrip("\n") for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("#")]


def build(src: Path, out: Path, frames: int, quality: int, margin: float = 0.1, max_diff: float = 0.02) -> dict:
    import cv2

    rgb = read_index(src / "rgb.txt")[:frames]
    depth = read_index(src / "depth.txt")
    pairs = associate([e.timestamp for e in rgb], [e.timestamp for e in depth], max_diff)
    if len(pairs) != len(rgb):
        raise SystemExit(f"only {len(pairs)} of {len(rgb)} colour frames have depth within {max_diff} s")
    (out / "rgb").mkdir(parents=True, exist_ok=True)
    (out / "depth").mkdir(parents=True, exist_ok=True)
    rgb_lines = _headers(src / "rgb.txt")
    for e in rgb:
        img = cv2.imread(str(src / e.file), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"cannot read {src / e.file}")
        name = Path(e.file).with_suffix(".jpg").name
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        assert ok
        (out / "rgb" / name).write_bytes(buf.tobytes())
        rgb_lines.append(f"{e.stamp_text} rgb/{name}")
    depth_lines = _headers(src / "depth.txt")
    for _, j in pairs:
        e = depth[j]
        shutil.copyfile(src / e.file, out / e.file)
        depth_lines.append(f"{e.stamp_text} {e.file}")
    t0, t1 = rgb[0].timestamp - margin, rgb[-1].timestamp + margin
    gt_lines = []
    for ln in (src / "groundtruth.txt").read_text(encoding="utf-8").splitlines():
        if ln.startswith("#") or not ln.strip():
            gt_lines.append(ln)
            continue
        ts = float(ln.split()[0])
        if t0 <= ts <= t1:
            gt_lines.append(ln)
    (out / "rgb.txt").write_text("\n".join(rgb_lines) + "\n", encoding="utf-8")
    (out / "depth.txt").write_text("\n".join(depth_lines) + "\n", encoding="utf-8")
    (out / "groundtruth.txt").write_text("\n".join(gt_lines) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"frames": len(rgb), "depth": len(pairs), "gt": sum(1 for ln in gt_lines if not ln.startswith("#")),
            "first": rgb[0].timestamp, "last": rgb[-1].timestamp, "bytes": size}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--frames", type=int, default=80)
    ap.add_argument("--quality", type=int, default=90)
    a = ap.parse_args(argv)
    info = build(a.src, a.out, a.frames, a.quality)
    print(info)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
