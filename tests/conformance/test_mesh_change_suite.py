"""The mesh-change suite reports backends broken in ways only a mesh change shows, readably."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
from pathlib import Path

import pytest

from .suite_runner import run_conformance


def run_suite(spec: str, tests: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    return run_conformance(spec, f"TestMeshChange and {tests}", tmp_path)


@pytest.mark.parametrize(
    "attr, name, test, symptom",
    [
        (
            "world_rank_coordinates",
            "world_rank_coordinates",
            "test_submesh_tensor",
            "of ranks",  # the case names the submesh's ranks
        ),
        (
            "flattened_mesh",
            "flattened_mesh",
            "test_1d_mesh_to_2d_mesh_and_back",
            "mesh=(2, 2)",
        ),
        (
            "first_chunk_only",
            "first_chunk_only",
            "test_checkpointable_subclass",
            "checkpointable(",
        ),
        (
            "copying_checkpointer",
            "copying_checkpointer",
            "test_checkpointer_save_and_load",
            "loaded after Checkpointer.save differ",
        ),
    ],
)
def test_a_broken_backend_fails_the_mesh_change_suite(tmp_path, attr, name, test, symptom):
    spec = f"tests.planted.dcp_mesh:{attr}"
    result, report = run_suite(spec, test, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"[{name}]" in result.stdout and symptom in result.stdout, output
    outcomes = {t["id"].split("::")[-1]: t["outcome"] for t in report["tests"]}
    assert outcomes == {test: "failed"}, outcomes
    (failed,) = report["tests"]
    assert f"--ckpt-backend {spec}" in failed["failure"]["reproduction"]


def test_checkpointer_is_supported_only_with_a_factory():
    from ckptconf.conformance import Backend
    from ckptconf.reference import FileSystemReader, FileSystemWriter

    bare = Backend(name="bare", storage_writer=FileSystemWriter, storage_reader=FileSystemReader)
    assert not bare.supports("checkpointer")
    declared = dataclasses.replace(bare, checkpointer=_checkpointer_factory)
    assert declared.supports("checkpointer")
    assert not dataclasses.replace(declared, unsupported={"checkpointer"}).supports("checkpointer")


def test_built_in_backends_give_a_checkpointer_and_pickle(tmp_path):
    from ckptconf.conformance.builtin import BUILT_IN
    from ckptconf.reference.compat import hf_storage

    for name, make in BUILT_IN.items():
        if name == "torch-dcp-hf" and not hf_storage():
            continue  # torch 2.6: no HuggingFaceStorageWriter to build a checkpointer of
        backend = make()
        assert backend.supports("checkpointer")
        assert pickle.loads(pickle.dumps(backend)) == backend
        checkpointer = backend.checkpointer(str(tmp_path / backend.name))
        assert callable(checkpointer.save) and callable(checkpointer.load)


def _checkpointer_factory(path: str):
    from ckptconf.reference import Checkpointer, FileSystemReader, FileSystemWriter

    return Checkpointer(FileSystemWriter(path), FileSystemReader(path))
