"""Persistence: the SQLite store of runs, metrics, events, evals and checkpoints."""

from acc.store.sqlite import Store

__all__ = ["Store"]
