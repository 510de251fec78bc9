"""Map building blocks shared by the built-in maps and open to third-party plugins.

* :mod:`.anchored`: points stored in the frame of the keyframe that saw them, so that a pose
  correction moves them by re-reading the keyframe poses (nothing is re-integrated);
* :mod:`.common`: depth / confidence masks, unprojection, voxel keys and accumulation, .ply writers.
"""
