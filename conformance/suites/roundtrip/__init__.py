"""The roundtrip suite: what is saved loads back unchanged."""

from .suite import RoundTripTests

__all__ = ["RoundTripTests"]
