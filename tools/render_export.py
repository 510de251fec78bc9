"""Render an exported ``scene.glb`` headless (trimesh loads it, matplotlib draws it): README's export figure.

    .venv/bin/python run_slam.py --config demo.yaml --set "exports.formats=[glb]" --output runs/demo-export
    .venv/bin/python tools/render_export.py runs/demo-export/exports/scene.glb docs/export_glb.png

Draws every point node (with its colours) and every ``camera_*`` frustum (lines) in the GLB's own
world (glTF: +Y up), as a browser glTF viewer shows the file. Needs trimesh (``slam3r[export]``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def scene_arrays(path: Path, max_points: int = 60_000, seed: int = 0):
    """``(points [N,3], colours [N,3] in 0..1, segments [M,2,3], camera nodes)`` of a GLB, in its world frame."""
    import trimesh

    scene = trimesh.load(str(path))
    pts, cols, segs = [], [], []
    n_cams = sum(1 for n in scene.graph.nodes_geometry if n.startswith("camera_"))
    for node in scene.graph.nodes_geometry:
        T, name = scene.graph.get(node)
        geom = scene.geometry[name]
        if isinstance(geom, trimesh.PointCloud):
            v = np.asarray(geom.vertices) @ T[:3, :3].T + T[:3, 3]
            c = np.asarray(geom.colors)[:, :3] / 255.0 if len(geom.colors) else np.full((len(v), 3), 0.5)
            pts.append(v)
            cols.append(c)
        elif isinstance(geom, trimesh.Trimesh):
            v = np.asarray(geom.vertices) @ T[:3, :3].T + T[:3, 3]
            c = np.asarray(geom.visual.vertex_colors)[:, :3] / 255.0
            pts.append(v)
            cols.append(c)
        elif isinstance(geom, trimesh.path.Path3D):
            for ent in geom.entities:
                line = np.asarray(geom.vertices)[ent.points] @ T[:3, :3].T + T[:3, 3]
                segs += [line[k:k + 2] for k in range(len(line) - 1)]
    p = np.concatenate(pts) if pts else np.zeros((0, 3))
    c = np.concatenate(cols) if cols else np.zeros((0, 3))
    if len(p) > max_points:
        keep = np.random.default_rng(seed).choice(len(p), max_points, replace=False)
        p, c = p[keep], c[keep]
    return p, c, np.array(segs).reshape(-1, 2, 3), n_cams


def render(glb: Path, out: Path, elev: float = 25.0, azim: float = -60.0, size: tuple[float, float] = (8.0, 5.0)) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    p, c, segs, n_cams = scene_arrays(glb)
    # glTF is +Y up, matplotlib's 3D axes are +Z up: draw (x, -z, y)
    swap = lambda a: np.stack([a[..., 0], -a[..., 2], a[..., 1]], axis=-1)  # noqa: E731
    p, segs = swap(p), swap(segs)
    fig = plt.figure(figsize=size, dpi=120)
    ax = fig.add_subplot(projection="3d")
    ax.scatter(p[:, 0], p[:, 1], p[:, 2], c=c, s=1.5, marker=".", linewidths=0, depthshade=False)
    if len(segs):
        ax.add_collection3d(Line3DCollection(segs, colors="#d62728", linewidths=0.6))
    allp = np.concatenate([p, segs.reshape(-1, 3)]) if len(segs) else p
    lo, hi = np.percentile(allp, 1, axis=0), np.percentile(allp, 99, axis=0)
    mid, half = (lo + hi) / 2, (hi - lo).max() / 2
    ax.set_xlim(mid[0] - half, mid[0] + half)
    ax.set_ylim(mid[1] - half, mid[1] + half)
    ax.set_zlim(mid[2] - half, mid[2] + half)
    ax.set_box_aspect((1, 1, 1), zoom=1.35)
    ax.view_init(elev=elev, azim=azim)
    ax.set_axis_off()
    ax.set_title(f"{glb.name}: {len(p)} points shown, {n_cams} camera frustums", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("glb", type=Path, help="an exported scene.glb")
    ap.add_argument("out", type=Path, help="the picture (.png)")
    ap.add_argument("--elev", type=float, default=25.0, help="view elevation, degrees")
    ap.add_argument("--azim", type=float, default=-60.0, help="view azimuth, degrees")
    a = ap.parse_args(argv)
    print(render(a.glb, a.out, a.elev, a.azim))
    return 0


if __name__ == "__main__":
    sys.exit(main())
