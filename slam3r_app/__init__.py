"""slam3r application core: config, frame/estimate types, frame loop, hooks, plugin host, CLI."""
from .config import LoadedConfig, ModelConfig, RunConfig, SourceConfig, load_config
from .context import RunContext, RunControl
from .errors import BadFrameError, ConfigError, EvaluationError, FrontendError, Slam3rError, SourceError
from .frontend import Frontend
from .hookspecs import hookimpl, hookspec
from .pipeline import Pipeline
from .sources import FrameSource
from .types import Estimate, Frame, KeyframeDecision, RunResult, TrajectoryPose

__all__ = [
    "BadFrameError", "ConfigError", "Estimate", "EvaluationError", "Frame", "FrameSource", "Frontend",
    "FrontendError", "KeyframeDecision", "LoadedConfig", "ModelConfig", "Pipeline", "RunConfig", "RunContext",
    "RunControl", "RunResult", "Slam3rError", "SourceConfig", "SourceError", "TrajectoryPose", "hookimpl",
    "hookspec", "load_config",
]
__version__ = "0.1.0"
