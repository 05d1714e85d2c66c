"""Training: the engine thread, its commands and checkpoints."""

from acc.engine.trainer import DuplicateTaskError, Engine, EngineClosed, EngineConfig, TaskState

__all__ = ["DuplicateTaskError", "Engine", "EngineClosed", "EngineConfig", "TaskState"]
