"""Hook specifications: every extension point of slam3r.

Plugins implement these with the :data:`hookimpl` marker::

    from slam3r_app import hookimpl

    @hookimpl
    def slam3r_process_frame(frame, estimate, context):
        ...

Built-in backends (``slam3r_plugins``), frame sources (``slam3r_datasets``) and
third-party plugins all use exactly these hooks.  A plugin's name is the name it
is registered under: the module name of a built-in (``keyframes``), the
entry-point name of an installed distribution, or the module / file stem of a
plugin listed under ``plugins:`` in the config.

Order of a run::

    slam3r_config_sections          (once, while the config is validated)
    slam3r_make_source              (first non-None wins)
    slam3r_make_frontend            (first non-None wins)
    slam3r_run_start
    per frame:
        frontend.track(frame) -> estimate
            (the core settles estimate.status: the one rule of "lost", see
             slam3r_app.types.settle_status; a frontend that does not follow corrections
             has its estimate mapped through the current world correction, see
             slam3r_app.corrections)
        slam3r_keyframe_decision    (first non-None wins; default: a keyframe, kept)
        (the core adds the frame to context.trajectory and a keyframe's payload
         to context.keyframes)
        slam3r_process_frame
        slam3r_propose_corrections(final=False)
            for each PoseUpdate returned: the core applies it to context.trajectory,
            re-anchors the frontend, then
            slam3r_poses_updated(update)
    slam3r_propose_corrections(final=True)  (+ slam3r_poses_updated for each)
    slam3r_refine_trajectory        (not after an error; + slam3r_poses_updated for each)
    (the core writes trajectory.txt and scale.json from context.trajectory, in the
     world's final scale)
    slam3r_run_end                  (also after Ctrl-C / SIGTERM / a source error)
    slam3r_export
    slam3r_evaluate
    (the app writes metrics.json, summary.json and the log)

What the core shares with plugins (every hook gets the :class:`~slam3r_app.context.RunContext`):

* ``context.trajectory`` (:class:`slam3r_app.trajectory_store.TrajectoryStore`, never None): every
  frame's current pose, keyframes in the world and other frames relative to their keyframe, so
  that a correction of a keyframe moves its frames too; each frame's tracking status; the
  ``revision`` (bumped by every applied correction); and the world's metric scale
  (``world_scale``: a :class:`~slam3r_app.types.WorldScale` with its provenance) with
  ``metric_poses()`` / ``metric_pose(i)`` in metres where it is known. Written by the core only:
  plugins propose corrections (``slam3r_propose_corrections``), the world's scale included
  (``PoseUpdate(scale=...)``). Plugins never keep the only copy of a pose: read it from the store
  when you need it and re-pose what you built from it in ``slam3r_poses_updated``.
* ``context.keyframes`` (:class:`slam3r_app.keyframe_store.KeyframeStore`, never None): bounded
  per-keyframe payloads (thumbnail, depth, features a plugin attaches).
* ``context.services`` (:class:`slam3r_app.services.SharedServices`): what plugins offer each
  other, typed, one writer each: the live mesh and its ``map_version`` (fusion), the point map
  (pointcloud), the viewer's address, the frame loop's ``fps`` and ``dropped``,
  ``after_outputs`` calls, and ``exported``: the maps this export pass wrote (mesh, surface
  points, point map), in memory, for the export hooks after their writers.
* ``context.places`` (:class:`slam3r_app.place_hints.PlaceHints`): the newest place retrieval
  (published by loop closure's place recognition, read by the STream3R frontend's KV cache).
* ``estimate.status`` / ``estimate.lost``: one rule of "lost" for every consumer.
* ``context.state``: each plugin's *private* scratch objects (``state["_fusion_state"]``); no plugin
  reads another's.
* The public map API for plugins that build maps: :mod:`slam3r_plugins.maps`.

A plugin that raises is reported by name; it is switched off for the rest of the
run and every other plugin still runs (see :meth:`slam3r_app.plugin_host.PluginHost.call`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import pluggy

PROJECT = "slam3r"
ENTRY_POINT_GROUP = "slam3r.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from pydantic import BaseModel

    from .config import SourceConfig
    from .context import RunContext
    from .frontend import Frontend
    from .run_result import RunResult
    from .sources import FrameSource
    from .types import Estimate, Frame, KeyframeDecision, PoseUpdate


@hookspec
def slam3r_config_sections() -> Optional[dict[str, "type[BaseModel]"]]:
    """Declare the config sections this plugin owns.

    Called once while the config is loaded. Return ``{section_name: OptionsModel}``
    where ``OptionsModel`` is a pydantic model (``extra="forbid"`` recommended).
    The section ``section_name`` of the YAML config is validated with it (errors
    name the key and the file) and is available at run time as
    ``context.options(section_name)``; a missing section gets the model's defaults.
    A top-level config key that no plugin and no core section claims is an error.
    """


@hookspec
def slam3r_register_commands(subparsers: "argparse._SubParsersAction") -> None:
    """Add sub-commands to the ``slam3r`` / ``run_slam.py`` command line.

    Called once when the CLI is built. Use ``subparsers.add_parser(name, ...)`` and
    ``parser.set_defaults(handler=callable)``; the handler gets the parsed
    ``argparse.Namespace`` and returns an exit code.
    """


@hookspec(firstresult=True)
def slam3r_make_source(source: "SourceConfig", context: "RunContext") -> Optional["FrameSource"]:
    """Create the frame source for ``source.type``.

    Return a :class:`slam3r_app.sources.FrameSource`, or None when this plugin does
    not handle ``source.type``. The first non-None result is used. Raise
    :class:`slam3r_app.errors.ConfigError` for bad paths or options (it names the key).
    """


@hookspec(firstresult=True)
def slam3r_make_frontend(name: str, context: "RunContext") -> Optional["Frontend"]:
    """Create the frontend named ``name`` (the config's ``frontend`` key).

    Return a :class:`slam3r_app.frontend.Frontend`, or None for names this plugin
    does not provide. The first non-None result is used.
    """


@hookspec
def slam3r_run_start(context: "RunContext") -> None:
    """Called once after the source and the frontend exist, before the first frame.

    ``context.out`` is the run folder; ``context.source_info`` describes the source.
    """


@hookspec(firstresult=True)
def slam3r_keyframe_decision(
    frame: "Frame", estimate: "Estimate", context: "RunContext"
) -> Optional["KeyframeDecision"]:
    """Decide whether ``frame`` is a keyframe, right after the frontend tracked it.

    The first non-None :class:`~slam3r_app.types.KeyframeDecision` wins. Its
    ``keep`` flag tells the frontend whether the frame stays in its memory (the
    STream3R KV cache): ``keep=False`` drops it, as if it had never been fed.
    With no decision at all, every frame is a keyframe and kept.
    """


@hookspec
def slam3r_process_frame(frame: "Frame", estimate: "Estimate", context: "RunContext") -> None:
    """Called for every tracked frame, after the keyframe decision.

    ``estimate.is_keyframe`` and ``estimate.status`` are set, and the frame is already in
    ``context.trajectory`` (a keyframe's payload in ``context.keyframes``). Dense arrays
    live on the CPU and are not kept by the app after this call: copy what you need.
    ``estimate.pose`` is the pose *now*; a later correction can move it: read
    ``context.trajectory.pose(frame.index)`` (or :meth:`transform`) when you need it later.
    """


@hookspec
def slam3r_propose_corrections(context: "RunContext", final: bool) -> Optional["PoseUpdate | list[PoseUpdate]"]:
    """Hand the core the pose corrections that are ready (loop closure, relocalisation).

    Called on the frame loop's thread after every frame's ``slam3r_process_frame`` (a
    frame boundary), and once more with ``final=True`` when the stream has ended,
    before ``slam3r_run_end``: then finish (or wait for) any optimisation still running
    and return its result. Return a :class:`~slam3r_app.types.PoseUpdate`, a list of
    them, or None. Slow work belongs in a background thread of the plugin; this hook
    only hands over what is finished, so a slow optimisation never holds up the frames.

    The core applies each update to ``context.trajectory`` (keyframes newer than the
    update's newest keyframe follow it; frames follow their keyframe), re-anchors the
    frontend, and calls :func:`slam3r_poses_updated`. An update that does not fit the
    trajectory (unknown keyframe, non-finite or, for ``kind="se3"``, scaled transform) is
    rejected with a warning; the run goes on. Set ``based_on_revision`` to the
    ``context.trajectory.revision`` your computation started from: an update that would undo
    a correction applied since is rejected the same way (recompute from a new snapshot).
    ``PoseUpdate(scale=WorldScale(...))`` sets the world's metric scale (fusion proposes the
    scale it fits from sensor depth); it moves no pose.
    """


@hookspec
def slam3r_refine_trajectory(context: "RunContext") -> Optional["PoseUpdate | list[PoseUpdate]"]:
    """Refine the whole trajectory once the stream has ended (a global bundle adjustment).

    Called once, after the final ``slam3r_propose_corrections`` (so ``context.trajectory``
    already holds loop closure's last optimisation) and before the core writes
    ``trajectory.txt``; not called when the run ended on an error. Return a
    :class:`~slam3r_app.types.PoseUpdate`, a list of them, or None, as from
    :func:`slam3r_propose_corrections`; the core applies them the same way (staleness checks,
    the frontend re-anchored, :func:`slam3r_poses_updated` broadcast). ``update.frames`` may
    move tracked frames too: a frame keeps its status (only a lost one becomes relocalised).
    Runs on the main thread under ``plugin_timeout_s``: bound the work (the built-in
    ``bundle_adjustment`` keeps at most ``max_frames`` frames).
    """


@hookspec
def slam3r_poses_updated(update: "PoseUpdate", context: "RunContext") -> None:
    """A correction was applied: re-pose what you built from past poses.

    ``update.moved`` maps every moved keyframe to ``(old, new)`` transforms
    (``update.delta(k)`` is ``new @ inv(old)``); ``update.frames`` lists relocalised
    frames; ``update.revision`` is the trajectory's new revision. Frames follow their
    reference keyframe (``context.trajectory.reference_keyframe(i)``). Called on the
    frame loop's thread at a frame boundary, in plugin order, for every applied update.

    Writing a consumer that follows corrections: keep what you build from frame ``i``
    in ``i``'s camera frame (``transform_points(sim3_inverse(estimate.pose), world)``,
    :mod:`slam3r_app.sim3`), together with ``i``, and place it with
    ``context.trajectory.transform(i)`` whenever it is needed (a Sim(3) after a
    monocular correction: it scales the geometry too). Then this hook only has to
    re-place what is on display (or mark it stale); files written at export are right by
    construction. Keep this hook cheap: it runs on the frame loop (move slow work to a
    thread, as ``fusion`` does for its TSDF rebuild). The built-in maps are examples:
    ``pointcloud`` (chunks per keyframe), ``viewer`` (scene nodes per keyframe),
    ``rerun`` (a transform per keyframe entity), ``fusion`` (buffered frames, rebuilt).
    """


@hookspec
def slam3r_reset(context: "RunContext") -> None:
    """The map was reset (viewer button or API): drop accumulated state."""


@hookspec
def slam3r_run_end(result: "RunResult", context: "RunContext") -> None:
    """Called once when the stream ends, is stopped or fails.

    ``result.stopped_early`` / ``result.stop_reason`` tell why it ended. Finish
    what you accumulated (for example, bring the map to metric scale); write files
    in :func:`slam3r_export`.
    """


@hookspec
def slam3r_export(result: "RunResult", context: "RunContext") -> Optional[dict[str, str]]:
    """Write output files into ``context.out``; return ``{label: path}`` of what was written.

    Also called mid-run when the user asks to "save now" (``context.saving_now``).
    Write atomically (``context.out.atomic_path`` / ``write_text``). A plugin that writes a map
    also hands it to the export hooks after it in memory, on ``context.services.exported``
    (:class:`slam3r_app.services.ExportedMaps`: ``mesh``, ``surface_points``, ``pointcloud``);
    a consumer of those maps is a ``trylast`` hook and never reads another plugin's files.
    """


@hookspec
def slam3r_evaluate(result: "RunResult", context: "RunContext") -> Optional[dict[str, Any]]:
    """Compute metrics for the run; return a JSON-serialisable dict (merged into metrics.json).

    Called after :func:`slam3r_export`.
    """
