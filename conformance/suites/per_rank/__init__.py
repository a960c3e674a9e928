"""The per_rank suite: ranks holding different keys (pipeline stages, experts, loader state)."""

from .suite import PerRankTests

__all__ = ["PerRankTests"]
