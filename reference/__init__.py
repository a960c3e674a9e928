"""ckptconf.reference: a clean reference implementation of the torch.distributed.checkpoint contract.

Entry points: :func:`save`, :func:`load`, :func:`async_save`, :class:`Checkpointer`;
the parts they are made of (planners, storage, validation, geometry) plug into
``torch.distributed.checkpoint.save/load`` as well.
"""

from .checkpointer import Checkpointer
from .driver import async_save, load, save
from .errors import (
    CheckpointError,
    IntegrityError,
    LoadContractError,
    MetadataFormatError,
    PlanValidationError,
    RankFailure,
)
from .filesystem import FileSystemReader, FileSystemWriter
from .geometry import chunk_overlap, chunk_volume, local_pieces, local_runs, local_shape
from .load_planner import ReferenceLoadPlanner
from .memory import InMemoryReader, InMemoryWriter, MemoryStore
from .metadata_format import parse_metadata
from .save_planner import ReferenceSavePlanner
from .staging import StagingPool
from .validation import validate_global_plan

__all__ = [
    "Checkpointer",
    "CheckpointError",
    "FileSystemReader",
    "FileSystemWriter",
    "InMemoryReader",
    "InMemoryWriter",
    "IntegrityError",
    "LoadContractError",
    "MemoryStore",
    "MetadataFormatError",
    "PlanValidationError",
    "RankFailure",
    "ReferenceLoadPlanner",
    "ReferenceSavePlanner",
    "StagingPool",
    "async_save",
    "chunk_overlap",
    "chunk_volume",
    "load",
    "local_pieces",
    "local_runs",
    "local_shape",
    "parse_metadata",
    "save",
    "validate_global_plan",
]
