"""ckptconf.reference: a clean reference implementation of the torch.distributed.checkpoint contract.

Entry points: :func:`save`, :func:`load`, :func:`async_save`, :class:`Checkpointer`; they take
what ``torch.distributed.checkpoint.save/load`` take, Stateful values included, and their
default arguments are the configuration the conformance suite certifies as the ``reference``
backend. The parts they are made of (planners, storage, validation, geometry) plug into
``torch.distributed.checkpoint.save/load`` as well.

Storage extension points: a :class:`BlobStore` is where one checkpoint lives (data files,
one metadata document committed atomically); :class:`ReferenceStorageWriter` and
:class:`ReferenceStorageReader` put the reference format on any store (the filesystem's
:class:`DirectoryStore`, memory's :class:`MemoryStore`, or your own, e.g. one that
compresses every :class:`BlobSink` it writes).
"""

from .checkpointer import Checkpointer
from .dcp_metadata import UnsafeMetadataError, load_dcp_metadata
from .driver import async_save, load, save
from .errors import (
    CheckpointError,
    IntegrityError,
    LoadContractError,
    MetadataFormatError,
    PlanValidationError,
    RankFailure,
    UnknownFormatError,
)
from .filesystem import DirectoryStore, FileSystemReader, FileSystemWriter
from .geometry import chunk_overlap, chunk_volume, local_pieces, local_runs, local_shape
from .inspection import Problem, open_checkpoint, render_tree, verify
from .load_planner import ReferenceLoadPlanner
from .memory import InMemoryReader, InMemoryWriter, MemoryStore
from .metadata_format import parse_metadata
from .save_planner import ReferenceSavePlanner
from .serialization import UnsafeObjectError, safe_types
from .staging import StagingPool
from .storage import BlobSink, BlobStore, ReferenceStorageReader, ReferenceStorageWriter
from .validation import validate_global_plan

__all__ = [
    "BlobSink",
    "BlobStore",
    "Checkpointer",
    "CheckpointError",
    "DirectoryStore",
    "FileSystemReader",
    "FileSystemWriter",
    "InMemoryReader",
    "InMemoryWriter",
    "IntegrityError",
    "UnknownFormatError",
    "LoadContractError",
    "MemoryStore",
    "MetadataFormatError",
    "PlanValidationError",
    "Problem",
    "RankFailure",
    "ReferenceLoadPlanner",
    "ReferenceSavePlanner",
    "ReferenceStorageReader",
    "ReferenceStorageWriter",
    "StagingPool",
    "UnsafeMetadataError",
    "UnsafeObjectError",
    "async_save",
    "chunk_overlap",
    "chunk_volume",
    "load",
    "load_dcp_metadata",
    "local_pieces",
    "local_runs",
    "local_shape",
    "open_checkpoint",
    "parse_metadata",
    "render_tree",
    "safe_types",
    "save",
    "validate_global_plan",
    "verify",
]
