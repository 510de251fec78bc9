"""TSDF fusion (plugin ``fusion``): a mesh of the scene that follows pose corrections.

* :mod:`.plugin`: the hooks (which frames are fused, the mesh file, corrections);
* :mod:`.tsdf`: the Open3D voxel-block grid, the frame buffer a rebuild re-integrates from, and
  the background rebuild;
* :mod:`.scale`: the metric scale of an up-to-scale frontend, fitted against sensor depth.
"""
