"""slam3r application core: config, frame/estimate types, frame loop, hooks, plugin host, CLI."""
from .config import LoadedConfig, ModelConfig, RunConfig, SourceConfig, load_config
from .context import RunContext, RunControl
from .errors import BadFrameError, ConfigError, EvaluationError, FrontendError, Slam3rError, SourceError
from .frontend import Frontend
from .hookspecs import hookimpl, hookspec
from .keyframe_store import KeyframeRecord, KeyframeStore
from .pipeline import Pipeline
from .run_result import RunResult
from .sources import FrameSource
from .trajectory_store import TrajectorySnapshot, TrajectoryStore
from .types import Estimate, Frame, KeyframeDecision, PoseUpdate, TrackingStatus, TrajectoryPose

__all__ = [
    "BadFrameError", "ConfigError", "Estimate", "EvaluationError", "Frame", "FrameSource", "Frontend",
    "FrontendError", "KeyframeDecision", "KeyframeRecord", "KeyframeStore", "LoadedConfig", "ModelConfig", "Pipeline",
    "PoseUpdate", "RunConfig", "RunContext", "RunControl", "RunResult", "Slam3rError", "SourceConfig", "SourceError",
    "TrackingStatus", "TrajectoryPose", "TrajectorySnapshot", "TrajectoryStore", "hookimpl", "hookspec", "load_config",
]
__version__ = "0.1.0"
