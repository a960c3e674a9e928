"""Crash states: a save recorded with strace, cut at every point, each state loaded."""

from .suite import CrashStatesTests

__all__ = ["CrashStatesTests"]
