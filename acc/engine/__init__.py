"""Training: the engine thread, its commands and checkpoints."""

from acc.engine.trainer import Engine, EngineConfig, TaskState

__all__ = ["Engine", "EngineConfig", "TaskState"]
