"""Training: the engine thread, its commands and checkpoints."""

from acc.engine.task_commands import DuplicateTaskError, TaskState
from acc.engine.trainer import Engine, EngineClosed, EngineConfig

__all__ = ["DuplicateTaskError", "Engine", "EngineClosed", "EngineConfig", "TaskState"]
