"""Exports into the ecosystem (plugin ``exports``): COLMAP, nerfstudio, GLB and per-frame depth.

Two ways in, one set of writers:

* ``run_slam.py export RUN_FOLDER --format colmap|nerfstudio|glb|depth --out DIR`` (offline) reads
  the run folder's ``trajectory.txt`` (the final, corrected poses), ``cameras.json`` (the
  intrinsics the run used) and ``config.yaml`` (the resolved config), re-reads the source the
  config names and matches its frames to the trajectory by timestamp (:mod:`.offline`);
* ``exports: {formats: [...]}`` in a run's config writes the same files into
  ``<run>/exports/`` at the end of the run (:mod:`.plugin`). Colour images and predicted depth
  (which only exists during the run) are written to disk as the frames go, nothing is kept in
  memory; the poses are taken from the run's result at the END, so corrections made after a
  frame was tracked (loop closure) are in the files.

One export folder holds every format, sharing its images and depth::

    DIR/images/<timestamp>.png        colour (colmap, nerfstudio)
    DIR/depth/<timestamp>.png         16-bit depth in millimetres, 0 = unknown (depth, nerfstudio)
    DIR/depth/<timestamp>.npz         float32 depth (metres), confidence, intrinsics (depth)
    DIR/depth/frames.json             per frame: timestamp, files, intrinsics, camera-to-world pose
    DIR/sparse/0/*.bin                COLMAP model (cameras, images, points3D, rigs, frames)
    DIR/transforms.json               nerfstudio (+ DIR/sparse_pc.ply, its initial points)
    DIR/scene.glb                     points or mesh + camera frustums

Conventions (slam3r's are OpenCV: camera-to-world 4x4, camera x right / y down / z forward,
pixel centres at integer coordinates):

* COLMAP stores world-to-camera (``cam_from_world``; text files: ``QW QX QY QZ TX TY TZ``,
  quaternion scalar FIRST) with the same camera axes, and puts the centre of the top-left pixel
  at (0.5, 0.5): ``cx``, ``cy`` and keypoints are written +0.5.
* nerfstudio's ``transform_matrix`` is camera-to-world in OpenGL camera axes (x right, y up,
  z backwards): ``c2w @ diag(1, -1, -1, 1)``; pixel centres at +0.5 as COLMAP's.
* The GLB's world is turned 180 degrees about x (glTF's +Y is up: the first camera's up), as
  upstream's demo does; ``scene.metadata["slam3r"]["world_from_slam3r"]`` holds that matrix.
"""
