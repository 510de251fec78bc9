"""Built-in backends of slam3r. Each module is one plugin, registered exactly as a
third-party plugin would be (entry-point group ``slam3r.plugins`` in pyproject.toml).

``BUILTIN_PLUGINS`` is the same list, used when slam3r runs from a checkout that
is not installed.
"""
BUILTIN_PLUGINS = {
    "stream3r": "slam3r_plugins.frontend_stream3r",
    "rgbd": "slam3r_plugins.frontend_rgbd",
    "keyframes": "slam3r_plugins.keyframes",
    "fusion": "slam3r_plugins.fusion",
    "pointcloud": "slam3r_plugins.pointcloud_map",
    "trajectory": "slam3r_plugins.trajectory_export",
    "evaluation": "slam3r_plugins.evaluation",
    "viewer": "slam3r_plugins.viewer",
    "controls": "slam3r_plugins.controls",
    "rerun": "slam3r_plugins.rerun_recorder",
    "bench": "slam3r_plugins.bench",
    "loop_closure": "slam3r_plugins.loop_closure",
    "exports": "slam3r_plugins.exports.plugin",
}
