"""Loop closure (plugin ``loop_closure``): recognise a revisited place, verify it, correct the trajectory.

* :mod:`.plugin`: the hooks and the driver (candidate keyframes, verification, pose graph, the
  correction proposed to the core);
* :mod:`.retrieval`: place recognition, a bag of binary ORB words with an inverted index;
* :mod:`.verification`: geometric verification of a candidate (lifted matches, RANSAC);
* :mod:`.pose_graph`: the keyframe pose graph (GTSAM);
* ``data/``: the shipped ORB vocabulary (``data/SOURCE.md`` says how it was trained).
"""
