"""The storage suite: metadata through the storage, the storage protocol, re-saves, corruption."""

from .suite import StorageTests

__all__ = ["StorageTests"]
