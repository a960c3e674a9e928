"""The Backend contract: what a checkpoint implementation gives the suite.

A backend is its storage writer and reader for a path, optionally its planners, and
optionally whole-system ``save``/``load`` callables replacing the driver (default:
``torch.distributed.checkpoint.save/load`` with the parts above), and optionally a
``checkpointer`` factory: for a path, an object with ``save(state_dict)``,
``load(state_dict)`` and optionally ``async_save(state_dict)`` (DCP's ``_Checkpointer``
shape). Features it does not support are declared, and tests needing them are reported
as unsupported, not passed; a backend without a ``checkpointer`` factory does not
support ``checkpointer``.

Backends are sent to the ranks that run the tests. One selected by
``--ckpt-backend module:attr`` is rebuilt in each rank from that spec; one given as an
object (the class-based style) must pickle, so use module-level functions or classes,
not lambdas, for its callables. Each rank process builds it once and keeps it for the
steps that follow (``rebuild_per_step=True`` asks for a new one every step). The writer
and reader factories run for every save and load; a client they should share (an object
store's) belongs to the factory object, built on first use and left out of its pickle, as
the s3torchconnector adapter does.

Paths: every test gives each checkpoint a path of its own that does not exist yet (under a
fresh folder of the test; the lifecycle suite uses ``<folder>/ckpt-0`` and ``<folder>/ckpt-1``
and saves to each many times). The backend may make the path a folder or a single file, or
map it to objects elsewhere (then give ``stored_objects``); every rank of a step gets the same
path, and nothing else may be written beside it (strict tests list the folder).

Call order, as the suites use a backend on every rank of a step: ``run_save`` (the
backend's ``save``, or DCP's driver with ``storage_writer(path)`` and ``save_planner()``),
then on the same or other ranks ``run_load`` (``load``, or DCP's driver with
``storage_reader(path)`` and ``load_planner()``); ``run_async_save`` returns a future.
Fault tests wrap the storage writer or reader and pass it in.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when a backend is used, not when this module is
    from torch.distributed.checkpoint.planner import LoadPlanner, SavePlanner
    from torch.distributed.checkpoint.storage import StorageReader, StorageWriter

    from .stored import StoredObjects

__all__ = ["Backend", "FEATURES", "StorageInjectionUnsupported"]

FEATURES: dict[str, str] = {
    "dtensor": "DTensor values (Shard, Replicate) on 1-D and 2-D meshes",
    "strided_shard": "DTensor values with _StridedShard placements",
    "sharded_tensor": "ShardedTensor values with ChunkShardingSpec",
    "objects": "non-tensor values (bytes, ints, strings, containers) stored as objects",
    "resharding": "loading under a layout other than the saved one",
    "world_size_change": "loading on a different number of ranks than saved",
    "uneven_shards": "shards of unequal size and empty shards",
    "scalar_tensors": "0-dim tensors",
    "empty_tensors": "tensors with a size-0 dimension",
    "async_save": "async_save returning before the data is written",
    "atomic_commit": "a failed save leaves the previous checkpoint loadable and the new one invisible",
    "integrity": "corrupt or truncated data is an error, never a wrong value",
    "strict_keys": "unexpected keys in the checkpoint are an error on load",
    "replica_check": "replicas that differ across ranks are an error on save, not one kept silently",
    "dtypes": "every dtype of the strategies, including bfloat16, complex and float8",
    "checkpointable": "tensor subclasses implementing DCP's checkpointable protocol "
    "(__create_chunk_list__, __get_tensor_shard__, __create_write_items__), LocalShardsWrapper",
    "checkpointer": "a Checkpointer object with save, load and optionally async_save "
    "(declared by giving a checkpointer factory)",
    "nested_state_dicts": "state dicts with nested dicts and lists (a backend for flat state "
    "dicts only, as Megatron builds them for its planners, declares it unsupported)",
    "storage": "a storage writer and reader that work on their own, driven through DCP's "
    "protocol outside the backend's own save and load (read_metadata, the protocol by hand, "
    "fault-injecting wrappers); unsupported without a storage_writer and storage_reader, or "
    "declared so by a backend whose writer works only under its own driver",
}
"""Feature tags a backend may declare unsupported, with what each covers."""


@dataclass
class Backend:
    """A checkpoint implementation under test.

    Give ``storage_writer`` and ``storage_reader`` (factories: path -> DCP StorageWriter /
    StorageReader), and the suite drives them with DCP's ``save``/``load`` and your planners
    (``save_planner``/``load_planner`` factories, DCP's defaults if omitted). A whole-system
    backend gives its own ``save(state_dict, path, *, process_group=None)`` and ``load(...)``
    (optionally taking ``storage_writer=``/``storage_reader=`` so faults can be injected, and
    ``async_save``) and may leave the storage out: the tests that need it are unsupported.
    ``checkpointer`` is a factory: for a path, an object with ``save(state_dict)``,
    ``load(state_dict)`` and optionally ``async_save(state_dict)`` (DCP's ``_Checkpointer``
    shape); without it the ``checkpointer`` tests are unsupported.
    """

    name: str
    storage_writer: Callable[[str], StorageWriter] | None = None
    storage_reader: Callable[[str], StorageReader] | None = None
    save_planner: Callable[[], SavePlanner] | None = None
    load_planner: Callable[[], LoadPlanner] | None = None
    save: Callable[..., Any] | None = None
    load: Callable[..., Any] | None = None
    async_save: Callable[..., Any] | None = None
    unsupported: frozenset[str] | dict[str, str] = frozenset()
    description: str = ""
    expectations: str | None = None
    """Path of the backend's expectations file: its known failures, each with a reason."""
    spec: str | None = field(default=None, compare=False)
    checkpointer: Callable[[str], Any] | None = None
    """For a path, an object with ``save``, ``load`` and optionally ``async_save`` of a state dict."""
    stored_objects: Callable[[str], StoredObjects] | None = None
    """For a path, the :class:`~ckptconf.conformance.StoredObjects` the backend stored there
    (list, read, overwrite, delete), for the tests that corrupt a checkpoint; default: the
    files under the path (:class:`~ckptconf.conformance.LocalFiles`). An object-store
    backend gives one, or those tests are unsupported (it stored no files at the path)."""
    inherits: str | None = None
    """A built-in backend this one is built on (``"torch-dcp"`` for a backend using DCP's
    planners or driver): a failure listed in that backend's expectations is reported as
    *inherited*, with its reason, apart from the backend's own failures. A name that is not a
    built-in stops the run that selects the backend, before any test."""

    inherited_parts: frozenset[str] | None = None
    """The parts of the ``inherits`` backend this one is built on, of ``planner``, ``storage``,
    ``staging`` and ``driver`` (:data:`~.expectations.PARTS`): of the parent's entries naming a
    part, only those of these parts are inherited. ``None`` (the default): found out on a rank,
    from the classes of the writer, reader and planners the backend gives
    (:mod:`~.kit.inheritance`); a whole-system backend whose ``save`` is not built on the
    parent's storage says so here (``frozenset({"planner", "driver"})``)."""

    rebuild_per_step: bool = False
    """``True``: the ranks build the backend anew (from its spec, or unpickled) at every step.
    By default each rank process builds it once and keeps it for every later step of the run,
    as a training job keeps its checkpoint machinery, so clients, workers and caches the
    backend object holds live across tests (and their defects show)."""

    unsupported_reasons: dict[str, str] = field(default_factory=dict, compare=False)
    """Why a feature is unsupported, by feature, shown with each test it makes unsupported (give
    ``unsupported`` as a mapping of feature to reason, or both fields)."""

    def __post_init__(self) -> None:
        if isinstance(self.unsupported, dict):
            self.unsupported_reasons = {**self.unsupported, **self.unsupported_reasons}
        unknown = (set(self.unsupported) | set(self.unsupported_reasons)) - set(FEATURES)
        if unknown:
            raise ValueError(
                f"backend {self.name!r} declares unknown features unsupported: {sorted(unknown)}; "
                f"known features: {sorted(FEATURES)}"
            )
        self.unsupported = frozenset(self.unsupported) | frozenset(self.unsupported_reasons)
        if self.inherited_parts is not None:
            from .expectations import PARTS

            self.inherited_parts = frozenset(self.inherited_parts)
            wrong = sorted(self.inherited_parts - set(PARTS))
            if wrong:
                raise ValueError(
                    f"backend {self.name!r}: inherited_parts {wrong} are no parts; parts: "
                    f"{', '.join(PARTS)}"
                )
        for step, own, storage in (
            ("save", self.save, self.storage_writer),
            ("load", self.load, self.storage_reader),
        ):
            if own is None and storage is None:
                raise ValueError(
                    f"backend {self.name!r} has neither its own {step} nor a storage "
                    f"{'writer' if step == 'save' else 'reader'} for DCP's {step} to drive"
                )

    def supports(self, feature: str) -> bool:
        """Whether the backend has not declared ``feature`` unsupported (``checkpointer``: it has
        a factory; ``storage``: it has a storage writer and reader)."""
        if feature not in FEATURES:
            raise KeyError(f"unknown feature {feature!r}; known: {sorted(FEATURES)}")
        if feature == "checkpointer" and self.checkpointer is None:
            return False
        if feature == "storage" and (self.storage_writer is None or self.storage_reader is None):
            return False
        return feature not in self.unsupported

    def objects_at(self, path: str | os.PathLike) -> StoredObjects:
        """What the backend stored for the checkpoint at ``path`` (``stored_objects``, or the
        files under ``path``)."""
        if self.stored_objects is not None:
            return self.stored_objects(str(path))
        from .stored import LocalFiles

        return LocalFiles(path)

    def used_save_planner(self) -> Callable[[], SavePlanner] | None:
        """The save planner factory ``run_save`` plans with: the backend's own, DCP's default
        under DCP's driver, or ``None`` where its own ``save`` exposes no planner."""
        if self.save_planner is not None:
            return self.save_planner
        if self.save is not None:
            return None
        from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

        return DefaultSavePlanner

    def used_load_planner(self) -> Callable[[], LoadPlanner] | None:
        """The load planner factory ``run_load`` plans with (as :meth:`used_save_planner`)."""
        if self.load_planner is not None:
            return self.load_planner
        if self.load is not None:
            return None
        from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

        return DefaultLoadPlanner

    def injection_unsupported(self, storage: str, *, asynchronous: bool = False) -> str | None:
        """Why a wrapped ``storage`` (``"storage_writer"`` or ``"storage_reader"``) cannot be
        passed to this backend's save or load (``asynchronous``: its async_save; faults are
        injected that way), or ``None``."""
        own = self.save if storage == "storage_writer" else self.load
        step = "save" if storage == "storage_writer" else "load"
        if asynchronous:
            own, step = self.async_save, "async_save"
        if own is None or _takes(own, storage):
            return None
        return (
            f"its own {step} takes no {storage!r} argument, so no fault can be injected into "
            "its storage"
        )

    def run_save(
        self,
        state_dict: dict[str, Any],
        path: str | os.PathLike,
        *,
        process_group=None,
        storage_writer=None,
    ) -> Any:
        """Save with the backend's own ``save``, or DCP's driver with the backend's parts.

        ``storage_writer`` replaces the backend's writer (fault injection wraps it); a
        custom ``save`` gets it only if it takes a ``storage_writer`` argument.
        """
        if self.save is not None:
            if storage_writer is None:
                return self.save(state_dict, str(path), process_group=process_group)
            _require_parameter(self.save, "storage_writer", self.name)
            return self.save(
                state_dict, str(path), process_group=process_group, storage_writer=storage_writer
            )
        import torch.distributed.checkpoint as dcp

        return dcp.save(
            state_dict,
            storage_writer=storage_writer or self.storage_writer(str(path)),
            planner=self.save_planner() if self.save_planner else None,
            process_group=process_group,
        )

    def run_load(
        self,
        state_dict: dict[str, Any],
        path: str | os.PathLike,
        *,
        process_group=None,
        storage_reader=None,
    ) -> None:
        """Load in place with the backend's own ``load``, or DCP's driver with its parts."""
        if self.load is not None:
            if storage_reader is None:
                self.load(state_dict, str(path), process_group=process_group)
            else:
                _require_parameter(self.load, "storage_reader", self.name)
                self.load(
                    state_dict,
                    str(path),
                    process_group=process_group,
                    storage_reader=storage_reader,
                )
            return
        import torch.distributed.checkpoint as dcp

        dcp.load(
            state_dict,
            storage_reader=storage_reader or self.storage_reader(str(path)),
            planner=self.load_planner() if self.load_planner else None,
            process_group=process_group,
        )

    def run_async_save(
        self,
        state_dict: dict[str, Any],
        path: str | os.PathLike,
        *,
        process_group=None,
        storage_writer=None,
    ):
        """Start an async save; returns something with ``result()`` (a future).

        ``storage_writer`` replaces the backend's writer, as for :meth:`run_save`.
        """
        if self.async_save is not None:
            if storage_writer is None:
                return self.async_save(state_dict, str(path), process_group=process_group)
            _require_parameter(self.async_save, "storage_writer", self.name)
            return self.async_save(
                state_dict, str(path), process_group=process_group, storage_writer=storage_writer
            )
        import torch.distributed.checkpoint as dcp

        response = dcp.async_save(
            state_dict,
            storage_writer=storage_writer or self.storage_writer(str(path)),
            planner=self.save_planner() if self.save_planner else None,
            process_group=process_group,
        )
        return getattr(response, "upload_completion", response)


class StorageInjectionUnsupported(TypeError):
    """A whole-system backend's save/load does not accept a storage writer/reader to wrap."""


def _takes(fn: Callable, name: str) -> bool:
    parameters = inspect.signature(fn).parameters
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _require_parameter(fn: Callable, name: str, backend: str) -> None:
    if not _takes(fn, name):
        raise StorageInjectionUnsupported(
            f"backend {backend!r}: its own save/load takes no {name!r} argument, so faults "
            "cannot be injected"
        )
