"""Keyframe culling: a map that grows with the place, not with the time.

Three laps of the same closed path through the synthetic room (every lap passes exactly the same
poses), a frontend that returns the true geometry seen through a growing drift (so loops are
needed and their truth is known). Truth: the scene's exact poses.
"""
from __future__ import annotations

import numpy as np
import pytest

from slam3r_app.frame_loop import run
from tests.loop_fakes import DriftingFrontend, LoopScenePlugin, loop_pipeline

pytest.importorskip("gtsam")


def test_three_laps_keep_the_keyframes_of_one(tmp_path):
    """Laps 2 and 3 revisit lap 1's viewpoints: once their loops are closed, each of their keyframes is
    covered by a lap-1 keyframe and gives its payload back, so the keyframe store holds about one lap
    (the room), not three (the time); every frame, the culled keyframes' ones included, still follows
    the corrections: the whole trajectory is within 1 cm of the truth (the drift reaches 5 deg / 8 cm)."""
    laps = 3
    plugin = LoopScenePlugin(DriftingFrontend(rot_deg=0.03, trans=5e-4), seed=0, laps=laps, speed=0.08,
                             width=160, height=120)
    # geometric verification is not what is tested here (and costs time on these small frames)
    pipe = loop_pipeline(tmp_path / "cull", plugin, data={"loop_closure": {"geometric": False}})
    result = run(pipe.config, pipeline=pipe)
    closer = pipe.context.state["_loop_closure"].closer
    n = len(result.poses)
    lap = n // laps
    first = [k for k in result.keyframe_indices if k < lap]
    later = [k for k in result.keyframe_indices if k >= lap]
    held = pipe.context.keyframes.indices()
    assert len(later) >= 1.5 * len(first)  # the keyframe policy alone keeps adding keyframes every lap
    assert len(held) <= 1.2 * len(first), (len(held), len(first))
    assert closer.stats.culled >= 0.8 * len(later) and pipe.context.keyframes.stats()["culled"] == closer.stats.culled
    assert all(closer.kfs[k].culled for k in result.keyframe_indices if k not in held)  # out of retrieval too
    summary = closer.summary()  # loops.json: rejections under names a person can look up
    assert summary["keyframes_culled"] == closer.stats.culled and summary["rejections"]
    assert all(summary["rejection_meanings"][k] for k in summary["rejections"])
    from evo.core.geometry import umeyama_alignment

    P = result.pose_array()[:, :3, 3]
    G = np.stack([result.gt_poses[i] for i in range(n)])[:, :3, 3]
    R, t, _ = umeyama_alignment(P.T, G.T, False)
    ate = float(np.sqrt(np.mean(np.sum((P @ R.T + t - G) ** 2, axis=1))))
    assert ate < 0.01, ate
