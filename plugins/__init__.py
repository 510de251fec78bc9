"""Built-in backends of slam3r.

Each plugin is a module, or a package whose ``plugin`` module holds the hooks (a plugin with
helpers of its own: ``fusion/``, ``loop_closure/``, ``viewer/``, ``exports/``). They are
registered exactly as a third-party plugin is: the entry-point group ``slam3r.plugins`` in
pyproject.toml is the one list of them.

Four are libraries, not plugins, and are public (a third-party plugin may import them):
:mod:`.maps` (keyframe-anchored points, unprojection, the frame buffer, voxels), :mod:`.features`
(ORB features and their rigid alignment), :mod:`.global_registration` (two depth views aligned
without a guess: FPFH + RANSAC + ICP, gated on overlap, constraint and free space; used by the rgbd
frontend's recovery and by loop closure) and :mod:`.cluster` (runs tasks on Ray; used by ``bench``).
"""
