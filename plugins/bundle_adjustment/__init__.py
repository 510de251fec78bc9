"""Bundle adjustment (plugin ``bundle_adjustment``): refine the whole tracked trajectory when the stream ends.

* :mod:`.plugin`: the hooks (features kept per frame, the end-of-run refinement handed to the core);
* :mod:`.solver`: tracks of matched ORB features, the rolling-shutter correction, the GTSAM
  adjustment (RGB-D stereo factors, loose odometry ties).
"""
