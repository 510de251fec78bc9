"""Live 3D viewer (plugin ``viewer``, viser in a browser).

* :mod:`.plugin`: the hooks, the server and the scene nodes;
* :mod:`.point_map`: the viewer's voxel point map, anchored to keyframes so that it follows
  corrections.
"""
