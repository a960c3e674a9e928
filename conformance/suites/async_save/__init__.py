"""The async_save suite: async_save saves the state at the call."""

from .suite import AsyncSaveTests

__all__ = ["AsyncSaveTests"]
