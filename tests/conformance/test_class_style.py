"""A third party's way in: subclass the abstract suites and give a ``backend`` fixture.

This module is exactly what a backend author writes (fsspec's abstract-test style); here
it runs the round-trip suite against the reference backend built by hand, an object that
is sent to the ranks by pickling rather than by a spec string. The fixture is named
``backend``, the alias of ``ckpt_backend`` existing users have.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_class_style_failure_reproduces_by_node_id(tmp_path):
    """A backend given by a fixture has no spec: its reproduction runs the user's own test by
    node id, from the folder pytest ran in, and fails the same way from any folder."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_mine.py").write_text(
        "import pytest\n"
        "from ckptconf.conformance.suites import RoundTripTests\n"
        "from tests.planted.storage import last_chunk_skipped\n\n\n"
        "@pytest.fixture(scope='session')\n"
        "def backend():\n"
        "    return last_chunk_skipped()\n\n\n"
        "class TestMine(RoundTripTests):\n"
        "    pass\n"
    )
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    selection = ["-k", "test_round_trip_dtensor_on_two_ranks", "-p", "no:cacheprovider"]
    selection += ["--ckpt-no-shrink"]
    first = subprocess.run(
        [sys.executable, "-m", "pytest", "test_mine.py", *selection, "--ckpt-profile", "ci"]
        + ["--ckpt-report", str(report)],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert first.returncode == 1, first.stdout[-3000:]
    (failed,) = json.loads(report.read_text())["tests"]
    failure = failed["failure"]
    assert failure["backend"] == "last_chunk_skipped"
    command = failure["reproduction"]
    assert command.startswith(f"cd {project} && {sys.executable} -m pytest ")
    assert f"{project}/test_mine.py::TestMine::test_round_trip_dtensor_on_two_ranks" in command
    assert "--ckpt-backend" not in command
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = subprocess.run(
        ["bash", "-c", command + " -p no:cacheprovider --ckpt-no-shrink"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        env={**env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        timeout=600,
    )
    assert again.returncode == 1 and "1 failed" in again.stdout, again.stdout[-3000:]
    assert "[last_chunk_skipped]" in again.stdout


@pytest.mark.multiprocess
def test_a_passed_tests_checkpoints_are_removed_and_a_failed_tests_kept(tmp_path):
    """Each test's checkpoints lie in a folder of its own under pytest's temporary folder:
    removed once the test passed, kept when it failed (to be looked at)."""
    project = tmp_path / "project"
    project.mkdir()
    for name, backend in (("good", "reference()"), ("bad", "last_chunk_skipped()")):
        (project / f"test_{name}.py").write_text(
            "import pytest\n"
            "from ckptconf.conformance.builtin import reference\n"
            "from ckptconf.conformance.suites import RoundTripTests\n"
            "from tests.planted.storage import last_chunk_skipped\n\n\n"
            "@pytest.fixture(scope='session')\n"
            f"def backend():\n    return {backend}\n\n\n"
            "class TestMine(RoundTripTests):\n    pass\n"
        )
    basetemp = tmp_path / "basetemp"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "test_good.py", "test_bad.py", "-p", "no:cacheprovider"]
        + ["-k", "test_round_trip_dtensor_on_two_ranks", "--ckpt-no-shrink"]
        + ["--ckpt-profile", "ci", "--basetemp", str(basetemp)],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )
    assert "1 failed, 1 passed" in result.stdout, result.stdout[-3000:]
    (root,) = [p for p in basetemp.glob("ckpt*") if p.is_dir() and not p.is_symlink()]
    kept = sorted(p.name for p in root.iterdir())
    assert len(kept) == 1, kept  # the failed test's folder; the passed test's is gone
    saved = [p for p in (root / kept[0]).rglob("*") if p.is_file()]
    assert saved, "the failed test's folder holds no checkpoint"
