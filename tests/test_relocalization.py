"""Relocalisation: the camera jumps to a place seen a lap earlier (frames cut out of the stream) or the
sensor goes blank for a while; the rgbd frontend loses track, the loop-closure plugin finds the place
among the keyframes, and tracking goes on on the same map (no new segment).

Truth: the synthetic scene's exact poses. ATE is computed after one rigid alignment of the whole run,
then split into the frames before and after the disruption.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest

from slam3r_app.config import load_config
from slam3r_app.frame_loop import run
from slam3r_app.hookspecs import hookimpl
from slam3r_app.pipeline import Pipeline
from slam3r_app.plugin_host import PluginHost
from slam3r_app.sources import FrameSource
from slam3r_app.types import Frame

pytest.importorskip("gtsam")


class EditedSequence(FrameSource):
    """Frames ``order`` of a synthetic loop sequence (a jump = indices cut out); ``blank`` frames have
    a black image and no depth (a covered sensor) but the true pose moves on."""

    has_depth = True
    has_gt = True

    def __init__(self, order: list[int], blank: tuple[int, int] = (0, 0)) -> None:
        super().__init__()
        from slam3r_datasets.synthetic import SyntheticSequence

        self.seq = SyntheticSequence(seed=0, laps=2, width=160, height=120)
        self.order = order
        self.blank = range(*blank)

    def __len__(self) -> int:
        return len(self.order)

    def _iter_raw(self) -> Iterator[Frame]:
        for k, i in enumerate(self.order):
            f = self.seq.frame(i, index=k)
            if i in self.blank:
                f.rgb = np.zeros_like(f.rgb)
                f.depth = np.zeros_like(f.depth)
            yield f


class Scene:
    def __init__(self, source: EditedSequence) -> None:
        self.source = source

    @hookimpl
    def slam3r_make_source(self, source, context):
        return self.source if source.type == "edited" else None


def run_edited(tmp_path, source: EditedSequence, lc: bool = True, loop_closure_options: dict | None = None,
               rgbd_options: dict | None = None):
    import slam3r_plugins.frontend_rgbd as rgbd
    import slam3r_plugins.keyframes as keyframes
    import slam3r_plugins.loop_closure.plugin as loop_closure

    cfg = load_config(data={"source": {"type": "edited"}, "frontend": "rgbd", "progress": False,
                            "rgbd": {"depth_max": 4.0, **(rgbd_options or {})},
                            "loop_closure": loop_closure_options or {}})
    host = PluginHost(builtins=False, entry_points=False)
    for name, mod in (("rgbd", rgbd), ("keyframes", keyframes)) + ((("loop_closure", loop_closure),) if lc else ()):
        host.register(mod, name)
    host.register(Scene(source), "scene")
    pipe = Pipeline(cfg, output=str(tmp_path / "run"), host=host)
    result = run(cfg, pipeline=pipe)
    return pipe, result


def split_ate(result, cut: int) -> tuple[float, float]:
    """RMSE of positions after one rigid (evo Umeyama) alignment of the whole run: frames < cut, >= cut."""
    from evo.core.geometry import umeyama_alignment

    P = result.pose_array()[:, :3, 3]
    G = np.stack([result.gt_poses[i] for i in range(len(P))])[:, :3, 3]
    R, t, _ = umeyama_alignment(P.T, G.T, False)
    err = np.linalg.norm(P @ R.T + t - G, axis=1)
    return float(np.sqrt(np.mean(err[:cut] ** 2))), float(np.sqrt(np.mean(err[cut:] ** 2)))


def test_jump_to_a_place_seen_before_is_relocalised_on_the_same_map(tmp_path):
    # lap 2 (frames 306+) until 390, then the camera is suddenly 110 frames further on (1.6 m, ~130 deg):
    # a view the current reference does not see, but lap 1 did
    cut = 390 - 306 + 306  # position in the stream of the first frame after the jump
    order = list(range(0, 390)) + list(range(500, 560))
    pipe, result = run_edited(tmp_path, EditedSequence(order))
    stats = pipe.context.frontend.stats()
    lc = pipe.context.state["_loop_closure"].closer.stats
    assert lc.relocalizations >= 1, (stats, lc.reasons)
    assert stats["segments"] == 1 and stats["restarts"] == 0  # the same map, no new segment
    statuses = pipe.trajectory.statuses()
    first_back = next(i for i in range(cut, len(statuses)) if statuses[i] != "lost")
    assert statuses[first_back] == "relocalized" and first_back - cut < 5
    before, after = split_ate(result, first_back)
    assert after < 2 * before + 0.01, (before, after)  # 1 cm: both are a few cm on this scene


def test_blank_sensor_then_back_tracks_on_the_same_map(tmp_path):
    # frames 400-429 (second lap) come with no image and no depth while the camera moves on 45 cm and
    # turns 36 deg: the view that comes back is not the one tracking lost, but the first lap saw it
    order = list(range(0, 470))
    pipe, result = run_edited(tmp_path, EditedSequence(order, blank=(400, 430)))
    stats = pipe.context.frontend.stats()
    assert stats["lost"] >= 30 and stats["segments"] == 1 and stats["restarts"] == 0
    statuses = pipe.trajectory.statuses()
    back = next(i for i in range(430, len(statuses)) if statuses[i] != "lost")
    assert back - 430 < 5
    before, after = split_ate(result, back)
    assert after < 2 * before + 0.01, (before, after)


def test_jump_relocalised_by_the_depth_alone(tmp_path):
    """The jump above (1.6 m and ~130 deg, to a place the first lap saw) with appearance taken out of
    relocalisation (no ORB match can ever be enough) and the frontend left to its motion prediction (no
    feature or geometric start): the loop closer's geometric path -- the frame's depth against the
    keyframes nearest its last good pose, further out with every lost frame, FPFH + RANSAC + ICP, then the
    free-space check that refutes a wall matched onto the wrong wall of this room of planes -- puts the
    first frame after the jump back on the map, within 5 cm of the truth (ORB cannot have done it)."""
    cut = 390
    order = list(range(0, cut)) + list(range(500, 530))
    pipe, result = run_edited(tmp_path, EditedSequence(order),
                              loop_closure_options={"reloc_min_inliers": 100000},
                              rgbd_options={"feature_init": False, "geometric_init": False})
    lc = pipe.context.state["_loop_closure"].closer.stats
    statuses = pipe.trajectory.statuses()
    back = next(i for i in range(cut, len(statuses)) if statuses[i] != "lost")
    assert back - cut < 3 and statuses[back] == "relocalized", (back, lc.reasons)
    assert lc.relocs[0]["verified_by"] == "geometry" and pipe.context.frontend.stats()["segments"] == 1
    from evo.core.geometry import umeyama_alignment

    P = result.pose_array()
    G = np.stack([result.gt_poses[i] for i in range(len(P))])
    R, t, _ = umeyama_alignment(P[:cut, :3, 3].T, G[:cut, :3, 3].T, False)  # aligned on the frames before
    assert np.linalg.norm(R @ P[back, :3, 3] + t - G[back, :3, 3]) < 0.05
