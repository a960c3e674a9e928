"""The kinds suite: what a state dict may hold, and loads into a state that does not match."""

from .suite import KindsTests

StateDictKindsTests = KindsTests
"""The suite's earlier name, kept for existing subclasses."""

__all__ = ["KindsTests", "StateDictKindsTests"]
