"""The mesh_change suite: 1-D <-> 2-D meshes, submeshes, kind chains, checkpointable values."""

from .suite import MeshChangeTests

__all__ = ["MeshChangeTests"]
