"""The resharding suite: placement change and world-size change."""

from .suite import ReshardingTests

__all__ = ["ReshardingTests"]
