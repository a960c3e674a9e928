"""Built-in backends: the reference, and torch DCP with its filesystem, fsspec and HF storage."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backend import Backend

__all__ = ["BUILT_IN", "EXPECTATIONS_DIR", "expectations_file"]

EXPECTATIONS_DIR = Path(__file__).parent / "expectations"


def _reference_writer(path: str):
    from ckptconf.reference import FileSystemWriter

    return FileSystemWriter(path)


def _reference_reader(path: str):
    from ckptconf.reference import FileSystemReader

    return FileSystemReader(path)


def _reference_save_planner():
    from ckptconf.reference import ReferenceSavePlanner

    return ReferenceSavePlanner()


def _reference_load_planner():
    from ckptconf.reference import ReferenceLoadPlanner

    return ReferenceLoadPlanner()


def _reference_save(state_dict, path, *, process_group=None, storage_writer=None):
    from ckptconf.reference import save

    if storage_writer is not None:
        return save(state_dict, process_group=process_group, storage_writer=storage_writer)
    return save(state_dict, path, process_group=process_group)


def _reference_load(state_dict, path, *, process_group=None, storage_reader=None):
    from ckptconf.reference import load

    if storage_reader is not None:
        load(state_dict, process_group=process_group, storage_reader=storage_reader)
    else:
        load(state_dict, path, process_group=process_group)


def _reference_async_save(state_dict, path, *, process_group=None, storage_writer=None):
    from ckptconf.reference import async_save

    return async_save(
        state_dict,
        None if storage_writer is not None else path,
        process_group=process_group,
        storage_writer=storage_writer,
    )


def _reference_checkpointer(path: str):
    from ckptconf.reference import Checkpointer, FileSystemReader, FileSystemWriter

    return Checkpointer(FileSystemWriter(path), FileSystemReader(path))


def reference() -> Backend:
    """ckptconf's reference implementation as users call it: ``save``, ``load``,
    ``async_save`` and ``Checkpointer`` with their default arguments (the suite certifies
    exactly what users get; ``tests/reference/test_defaults.py`` checks it)."""
    return Backend(
        name="reference",
        storage_writer=_reference_writer,
        storage_reader=_reference_reader,
        save_planner=_reference_save_planner,
        load_planner=_reference_load_planner,
        save=_reference_save,
        load=_reference_load,
        async_save=_reference_async_save,
        checkpointer=_reference_checkpointer,
        description="ckptconf.reference with its default arguments: FileSystemWriter/Reader, "
        "reference planners (replicas verified), its own drivers",
    )


@dataclass(frozen=True)
class _DcpCheckpointer:
    """A factory of DCP's ``_Checkpointer`` for a path, from a backend's writer, reader and
    planner factories (module-level functions, so it pickles); no planner: DCP's defaults."""

    writer: Callable[[str], Any]
    reader: Callable[[str], Any]
    save_planner: Callable[[], Any] | None = None
    load_planner: Callable[[], Any] | None = None

    def __call__(self, path: str):
        from torch.distributed.checkpoint._checkpointer import _Checkpointer

        return _Checkpointer(
            self.writer(path),
            self.reader(path),
            save_planner=self.save_planner() if self.save_planner else None,
            load_planner=self.load_planner() if self.load_planner else None,
        )


def _dcp_writer(path: str):
    import torch.distributed.checkpoint as dcp

    return dcp.FileSystemWriter(path)


def _dcp_reader(path: str):
    import torch.distributed.checkpoint as dcp

    return dcp.FileSystemReader(path)


def torch_dcp() -> Backend:
    """torch DCP as shipped: FileSystemWriter/Reader, default planners, dcp.save/load."""
    return Backend(
        name="torch-dcp",
        storage_writer=_dcp_writer,
        storage_reader=_dcp_reader,
        checkpointer=_DcpCheckpointer(_dcp_writer, _dcp_reader),
        description="torch.distributed.checkpoint FileSystemWriter/Reader with the default planners",
        expectations=str(EXPECTATIONS_DIR / "torch-dcp.toml"),
    )


def _fsspec_writer(path: str):
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

    return FsspecWriter(path)


def _fsspec_reader(path: str):
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

    return FsspecReader(path)


def torch_dcp_fsspec() -> Backend:
    """torch DCP through fsspec (local filesystem here)."""
    return Backend(
        name="torch-dcp-fsspec",
        storage_writer=_fsspec_writer,
        storage_reader=_fsspec_reader,
        checkpointer=_DcpCheckpointer(_fsspec_writer, _fsspec_reader),
        description="torch.distributed.checkpoint FsspecWriter/Reader with the default planners",
        expectations=str(EXPECTATIONS_DIR / "torch-dcp-fsspec.toml"),
        inherits="torch-dcp",
    )


def _hf_writer(path: str):
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    return HuggingFaceStorageWriter(path, save_distributed=True, enable_consolidation=False)


def _hf_reader(path: str):
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    return HuggingFaceStorageReader(path)


def torch_dcp_hf() -> Backend:
    """torch DCP's HuggingFace safetensors storage (needs the safetensors package)."""
    return Backend(
        name="torch-dcp-hf",
        storage_writer=_hf_writer,
        storage_reader=_hf_reader,
        checkpointer=_DcpCheckpointer(_hf_writer, _hf_reader),
        unsupported=frozenset({"objects", "sharded_tensor", "async_save"}),
        description="torch.distributed.checkpoint HuggingFaceStorageWriter/Reader (safetensors)",
        expectations=str(EXPECTATIONS_DIR / "torch-dcp-hf.toml"),
        inherits="torch-dcp",
    )


def expectations_file(name: str) -> Path | None:
    """The expectations file of built-in backend ``name``, if it has one."""
    path = EXPECTATIONS_DIR / f"{name}.toml"
    return path if path.exists() else None


BUILT_IN: dict[str, Callable[[], Backend]] = {
    "reference": reference,
    "torch-dcp": torch_dcp,
    "torch-dcp-fsspec": torch_dcp_fsspec,
    "torch-dcp-hf": torch_dcp_hf,
}
