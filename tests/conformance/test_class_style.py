"""A third party's way in: subclass the abstract suites and give a ``backend`` fixture.

This module is exactly what a backend author writes (fsspec's abstract-test style); here
it runs the round-trip suite against the reference backend built by hand, an object that
is sent to the ranks by pickling rather than by a spec string. The fixture is named
``backend``, the alias of ``ckpt_backend`` existing users have.
"""

from __future__ import annotations

import pytest
from ckptconf.conformance import Backend
from ckptconf.conformance.kit.running import _BackendRef
from ckptconf.conformance.suites import RoundTripTests
from ckptconf.reference import (
    FileSystemReader,
    FileSystemWriter,
    ReferenceLoadPlanner,
    ReferenceSavePlanner,
)


@pytest.fixture(scope="session")
def backend() -> Backend:
    return Backend(
        name="hand-built-reference",
        storage_writer=FileSystemWriter,
        storage_reader=FileSystemReader,
        save_planner=ReferenceSavePlanner,
        load_planner=ReferenceLoadPlanner,
        unsupported=frozenset({"strided_shard"}),
    )


class TestHandBuilt(RoundTripTests):
    pass


def test_a_backend_object_reaches_ranks_by_pickle(backend):
    ref = _BackendRef(backend)
    assert ref.spec is None and ref.payload
    assert ref.resolve() == backend


def test_an_unpicklable_backend_is_a_clear_error():
    closure = Backend(
        name="lambdas",
        storage_writer=lambda p: FileSystemWriter(p),
        storage_reader=FileSystemReader,
    )
    with pytest.raises(TypeError, match="backend 'lambdas' cannot be sent to the ranks"):
        _BackendRef(closure)


def test_unknown_features_are_rejected():
    with pytest.raises(
        ValueError, match="declares unknown features unsupported: \\['telepathy'\\]"
    ):
        Backend(
            name="x",
            storage_writer=FileSystemWriter,
            storage_reader=FileSystemReader,
            unsupported={"telepathy"},
        )
