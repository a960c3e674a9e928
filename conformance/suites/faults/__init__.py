"""The faults suite: storage failing at every hook on any rank, ranks killed mid-save."""

from .suite import FaultsTests

FaultyStorageTests = FaultsTests
"""The suite's earlier name, kept for existing subclasses."""

__all__ = ["FaultsTests", "FaultyStorageTests"]
