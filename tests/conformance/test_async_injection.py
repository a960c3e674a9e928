"""Injecting a storage writer into an async save: the wrapper keeps DCP's staging path, and a
backend whose async_save cannot take one is told apart."""

from __future__ import annotations

import pytest
import torch
from ckptconf.conformance import Backend
from ckptconf.conformance.backend import StorageInjectionUnsupported
from ckptconf.harness.forwarding import ForwardingStorageWriter, staging_like
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.staging import AsyncStager


def test_a_forwarding_writer_keeps_the_inner_writers_staging(tmp_path):
    inner = FileSystemWriter(str(tmp_path))
    # without it, dcp.async_save would stage through its DefaultStager instead of the writer
    assert not isinstance(ForwardingStorageWriter(inner), AsyncStager)
    wrapper = staging_like(ForwardingStorageWriter, inner)(inner)
    assert isinstance(wrapper, AsyncStager) and isinstance(wrapper, ForwardingStorageWriter)
    assert wrapper.should_synchronize_after_execute == inner.should_synchronize_after_execute
    staged = wrapper.stage({"w": torch.arange(3.0)})
    assert torch.equal(staged["w"], torch.arange(3.0))
    assert staging_like(ForwardingStorageWriter, object()) is ForwardingStorageWriter


def _async_save_without_writer(state_dict, path, *, process_group=None):
    raise AssertionError("not reached: the wrapper cannot be passed")


def test_an_async_save_without_a_storage_writer_parameter_cannot_take_an_injected_writer(tmp_path):
    backend = Backend(
        name="own_async",
        storage_writer=FileSystemWriter,
        storage_reader=FileSystemReader,
        async_save=_async_save_without_writer,
    )
    reason = backend.injection_unsupported("storage_writer", asynchronous=True)
    assert reason.startswith("its own async_save takes no 'storage_writer' argument")
    assert backend.injection_unsupported("storage_writer") is None  # DCP's save takes it
    with pytest.raises(StorageInjectionUnsupported):
        backend.run_async_save({}, tmp_path, storage_writer=FileSystemWriter(str(tmp_path)))
