"""The lifecycle suite: runs of saves, async saves, loads and failed saves at two paths, drawn
by a hypothesis state machine, checked against a model of the committed checkpoints."""

from .suite import LifecycleTests

__all__ = ["LifecycleTests"]
