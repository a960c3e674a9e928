"""Differences between torch DCP versions, detected by feature, never by version string.

Public: a backend or a test that must run on several torch versions can use these probes
instead of its own (``from ckptconf.reference.compat import accepts_kwargs``).

Versions named are the ones these facts were read from; the code never compares them.

| what                                     | how it varies                                   | detected by |
|------------------------------------------|-------------------------------------------------|-------------|
| ``CURRENT_DCP_VERSION``                  | in ``filesystem.py`` ("1.0.0" in 2.13); absent in 2.6 | import |
| ``Metadata.version``, ``StorageMeta.modules`` | dataclass fields in 2.13; absent in 2.6     | dataclass fields |
| ``distribute_tensor(src_data_rank=)``    | ``None`` slices locally (2.13); 2.6 always scatters from coordinate 0 | signature |
| ``_StridedShard`` placement              | not in every version                            | import (geometry.py) |
| ``set_up_storage_writer``/``reader`` kwargs | ``rank``, ``use_collectives`` passed only if the method takes ``**kwargs`` | signature |
| ``SavePlanner.set_up_planner(storage_meta=)`` | older planners lack the parameter          | signature |
| ``_validate_global_plan`` result         | bool in older torch, list of errors in 2.13     | result type |
| ``async_save`` result                    | ``Future`` or ``AsyncSaveResponse``             | attribute (``upload_completion``) |
| ``_Checkpointer.save``                   | 2.13 passes a removed ``coordinator_rank``: TypeError | not used; ours is reference.Checkpointer |
| uneven ``_StridedShard``                 | 2.13 splits as ``torch.chunk``; 2.6 asserts even sharding | call (``_split_tensor``) |
| checkpointable protocol                  | ``torch.distributed._checkpointable`` in newer torch only | module lookup |
| ``LocalShardsWrapper``                   | absent, or without the checkpointable protocol  | import and attributes |
| ``StorageWriter.set_up_storage_writer``  | ``rank``/``use_collectives`` keywords newer     | signature (``accepts_kwargs``) |
| ``HuggingFaceStorageWriter``/``Reader``  | in ``torch.distributed.checkpoint`` (2.13); absent in 2.6 | attribute |
| ``dcp.save``/``dcp.load(no_dist=)``      | 2.6 has no parameter (it decides by ``is_initialized``) | signature |
| ``torch.serialization.safe_globals``     | newer torch only                                | attribute |
| ``BaseException.add_note``               | Python 3.11+ (not torch; kept here with the rest) | attribute |
| a process group's timeout after creation | ``distributed_c10d._set_pg_timeout`` (private; 2.13 has it) | attribute |
| ``init_process_group(device_id=)``       | newer torch only                                | signature |

The whole distribution detects these here: ``ckptconf.harness`` and
``ckptconf.conformance`` import from this module rather than probing torch themselves.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import weakref
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "DCP_FORMAT_VERSION",
    "add_note",
    "distribute_locally",
    "metadata_version",
    "new_metadata",
    "no_dist",
    "new_storage_meta",
    "storage_meta_modules",
    "with_newer_fields",
    "declares_field",
    "set_group_timeouts",
    "accepts_kwargs",
    "accepts_parameter",
    "async_save_future",
    "checkpointable_protocol",
    "uneven_strided_shard",
    "hf_storage",
    "dcp_validation_errors",
    "local_shards_wrapper",
    "set_up_save_planner",
    "set_up_storage_reader",
    "set_up_storage_writer",
]

try:
    from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION as DCP_FORMAT_VERSION
except ImportError:  # torch 2.6 names no version (and its Metadata has no field for one)
    DCP_FORMAT_VERSION = "1.0.0"


_PARAMETERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Each function's parameters, by the function (a method's by its function and whether it is
bound): every save and load asks about the planner's and storage's methods, and
``inspect.signature`` took about 2% of a small step's time on the ranks."""


def _parameters(fn: Callable) -> Mapping[str, inspect.Parameter]:
    """``inspect.signature(fn).parameters``, kept per function while it lives."""
    function = getattr(fn, "__func__", None)
    key, bound = (function, True) if inspect.ismethod(fn) else (fn, False)
    try:
        kept = _PARAMETERS.get(key)
    except TypeError:  # neither hashable nor weakly referenced: not kept
        return inspect.signature(fn).parameters
    if kept is None or bound not in kept:
        parameters = inspect.signature(fn).parameters
        with contextlib.suppress(TypeError):
            _PARAMETERS.setdefault(key, {})[bound] = parameters
        return parameters
    return kept[bound]


def accepts_kwargs(fn: Callable) -> bool:
    """Whether ``fn`` takes ``**kwargs`` (DCP passes extra arguments only then)."""
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in _parameters(fn).values())


def accepts_parameter(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes a parameter called ``name``."""
    return name in _parameters(fn)


def declares_field(cls: type, name: str) -> bool:
    """Whether this torch's dataclass ``cls`` (a DCP ``Metadata``, ``StorageMeta``) has the
    field ``name``."""
    import dataclasses

    return any(f.name == name for f in dataclasses.fields(cls))


def with_newer_fields(cls: type, newer: dict[str, Any], **fields: Any) -> Any:
    """``cls(**fields, **newer)`` for a DCP dataclass whose ``newer`` fields older torch lacks;
    there they are dropped, as that torch's own code records none of them (never kept as
    undeclared attributes: ``dataclasses.replace`` and ``asdict`` would lose them silently)."""
    return cls(**fields, **{k: v for k, v in newer.items() if declares_field(cls, k)})


def new_metadata(*, version: str | None = None, **fields: Any) -> Any:
    """``Metadata(**fields, version=version)``; 2.6's ``Metadata`` has no ``version``."""
    from torch.distributed.checkpoint.metadata import Metadata

    return with_newer_fields(Metadata, {"version": version}, **fields)


def metadata_version(metadata: Any) -> str | None:
    """The DCP format version a ``Metadata`` records, or None (torch without the field, or a
    checkpoint written without one)."""
    return getattr(metadata, "version", None)


def new_storage_meta(*, modules: list[str] | None = None, **fields: Any) -> Any:
    """``StorageMeta(**fields, modules=modules)``; 2.6's ``StorageMeta`` has no ``modules``
    (the storage extensions of newer DCP)."""
    from torch.distributed.checkpoint.metadata import StorageMeta

    return with_newer_fields(StorageMeta, {"modules": modules or []}, **fields)


def storage_meta_modules(meta: Any) -> list[str]:
    """``StorageMeta.modules``, or ``[]`` where this torch's ``StorageMeta`` has none."""
    return list(getattr(meta, "modules", None) or [])


def distribute_locally(full: Any, mesh: Any, placements: Any) -> Any:
    """``distribute_tensor(full, mesh, placements, src_data_rank=None)``: each rank slices its
    local tensor out of its own ``full``, with no collective. Where ``distribute_tensor`` has no
    ``src_data_rank`` (2.6 scatters from coordinate 0 of each mesh dimension), the same slices
    are taken with the placements' own ``_split_tensor`` and wrapped by ``DTensor.from_local``."""
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    if accepts_parameter(distribute_tensor, "src_data_rank"):
        return distribute_tensor(full, mesh, placements, src_data_rank=None)
    if full.device.type != mesh.device_type and not full.is_meta:
        full = full.to(mesh.device_type)  # as distribute_tensor moves it
    placements = [
        Shard(p.dim + full.dim()) if type(p) is Shard and p.dim < 0 else p for p in placements
    ]
    coordinate = mesh.get_coordinate()
    local = full.detach()
    if coordinate is None:  # a rank outside the mesh holds an empty local tensor
        local = local.new_empty(0)
    else:
        for mesh_dim, placement in enumerate(placements):
            if placement.is_shard():
                pieces, _ = placement._split_tensor(
                    local, mesh.size(mesh_dim=mesh_dim), with_padding=False, contiguous=True
                )
                local = pieces[coordinate[mesh_dim]]
            elif not placement.is_replicate():
                raise ValueError(f"distribute_tensor takes Shard or Replicate, not {placement}")
    value = DTensor.from_local(
        local, mesh, placements, run_check=False, shape=full.shape, stride=full.stride()
    )
    return value.requires_grad_(full.requires_grad)


def no_dist(fn: Callable) -> dict[str, bool]:
    """``{"no_dist": True}`` where DCP's ``save``/``load`` (``fn``) take it; 2.6's have no such
    parameter and run without collectives where no process group is initialised."""
    return {"no_dist": True} if accepts_parameter(fn, "no_dist") else {}


def dcp_validation_errors(result: Any) -> list[str]:
    """Normalise DCP's ``_validate_global_plan`` result (bool in old torch, error list in new)."""
    if isinstance(result, bool):
        return [] if result else ["DCP's _validate_global_plan rejected the plan"]
    return list(result)


def async_save_future(response: Any) -> Any:
    """The future of an ``async_save`` result: ``AsyncSaveResponse.upload_completion`` in newer
    torch, the result itself (a ``Future``) in older."""
    return getattr(response, "upload_completion", response)


def hf_storage() -> bool:
    """Whether this torch's DCP has ``HuggingFaceStorageWriter``/``Reader`` (2.6 has not)."""
    import torch.distributed.checkpoint as dcp

    return hasattr(dcp, "HuggingFaceStorageWriter") and hasattr(dcp, "HuggingFaceStorageReader")


@functools.cache
def uneven_strided_shard() -> bool:
    """Whether this torch's ``_StridedShard`` splits a dim that ``mesh size x split_factor``
    does not divide (2.13 does, as ``torch.chunk`` would; 2.6 asserts even sharding, so no
    DTensor of 2.6 has such a placement)."""
    import torch
    from torch.distributed.tensor.placement_types import _StridedShard

    try:
        _StridedShard(0, split_factor=2)._split_tensor(torch.empty(1), 1, with_padding=False)
    except AssertionError:
        return False
    return True


def checkpointable_protocol() -> bool:
    """Whether this torch defines DCP's checkpointable protocol for tensor subclasses."""
    import importlib.util

    return importlib.util.find_spec("torch.distributed._checkpointable") is not None


def local_shards_wrapper() -> type | None:
    """torch's ``LocalShardsWrapper`` if this torch has it with the checkpointable protocol."""
    try:
        from torch.distributed.tensor._shards_wrapper import LocalShardsWrapper
    except ImportError:
        return None
    needed = ("__create_chunk_list__", "__get_tensor_shard__", "__create_write_items__")
    return LocalShardsWrapper if all(hasattr(LocalShardsWrapper, n) for n in needed) else None


def set_up_save_planner(
    planner: Any, state_dict: Any, is_coordinator: bool, storage_meta: Any = None
) -> None:
    """``planner.set_up_planner`` with ``storage_meta`` where the planner takes it (older
    planners have the two-argument form, which DCP still accepts)."""
    if accepts_parameter(planner.set_up_planner, "storage_meta"):
        planner.set_up_planner(state_dict, storage_meta=storage_meta, is_coordinator=is_coordinator)
    else:
        planner.set_up_planner(state_dict, is_coordinator)


def set_up_storage_writer(writer: Any, is_coordinator: bool, rank: int) -> None:
    """``writer.set_up_storage_writer``, with ``rank`` and ``use_collectives`` where it takes
    keyword arguments (as DCP's driver passes them)."""
    if accepts_kwargs(writer.set_up_storage_writer):
        writer.set_up_storage_writer(is_coordinator, rank=rank, use_collectives=True)
    else:
        writer.set_up_storage_writer(is_coordinator)


def set_up_storage_reader(reader: Any, metadata: Any, is_coordinator: bool, rank: int) -> None:
    """``reader.set_up_storage_reader``, with ``rank`` and ``use_collectives`` where it takes
    keyword arguments (as DCP's driver passes them)."""
    if accepts_kwargs(reader.set_up_storage_reader):
        reader.set_up_storage_reader(metadata, is_coordinator, rank=rank, use_collectives=True)
    else:
        reader.set_up_storage_reader(metadata, is_coordinator)


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)`` (Python 3.11+), or the same ``__notes__`` list on Python 3.10."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # 3.10: the attribute 3.11 reads; never replaces the exception being reported
        notes = getattr(exc, "__notes__", None)
        if not isinstance(notes, list):
            notes = []
            exc.__notes__ = notes  # type: ignore[attr-defined]
        notes.append(note)


def set_group_timeouts(seconds: float) -> bool:
    """Give every live process group of this process a collective timeout of ``seconds``;
    whether this torch can (``_set_pg_timeout``, private, feature-detected)."""
    from datetime import timedelta

    import torch.distributed.distributed_c10d as c10d

    setter = getattr(c10d, "_set_pg_timeout", None)
    world = getattr(c10d, "_world", None)
    if setter is None or world is None:
        return False
    for group in list(getattr(world, "pg_map", {})):
        # a group of a backend that cannot change it keeps its timeout
        with contextlib.suppress(Exception):
            setter(timedelta(seconds=seconds), group)
    return True


def object_collective_device(group: Any) -> Any:
    """The device DCP's object collectives use for ``group`` (``torch.distributed``'s private
    ``_get_object_coll_device``: cuda for an NCCL group, else cpu), as a ``torch.device``."""
    import torch
    import torch.distributed.distributed_c10d as c10d

    probe = getattr(c10d, "_get_object_coll_device", None)
    kind = probe(group) if probe is not None else "cpu"
    if kind == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(kind)
