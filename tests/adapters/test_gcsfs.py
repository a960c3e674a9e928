"""The gcsfs adapter (DCP's FsspecWriter/Reader on gs://) against a local GCS emulator: selected
by name, stored objects reached through google-cloud-storage, DCP's known failures reported as
inherited, exit code from its own (its full verdict: docs/backends.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gcsfs", reason="needs ckptconf[gcs]")
pytest.importorskip("gcp_storage_emulator", reason="needs gcp-storage-emulator (the gcs extra)")

from ckptconf.conformance import BackendSpecError, select_backend  # noqa: E402

from .gcs_server import local_gcs  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gcs_env():
    with local_gcs() as env:
        yield env


def test_the_adapter_needs_a_bucket(monkeypatch):
    monkeypatch.delenv("CKPTCONF_GCS_BUCKET", raising=False)
    with pytest.raises(BackendSpecError, match="set CKPTCONF_GCS_BUCKET"):
        select_backend("gcsfs")


def test_a_missing_package_names_the_extra(monkeypatch):
    from ckptconf.conformance import adapters

    fake = adapters.Adapter("gcsfs", ("no_such_package_xyz",), "gcs", "")
    monkeypatch.setitem(adapters.ADAPTERS, "gcsfs", fake)
    with pytest.raises(BackendSpecError, match=r"pip install 'ckptconf\[gcs\]'"):
        select_backend("gcsfs")


def test_stored_objects_see_what_gcsfs_saved(gcs_env, monkeypatch):
    import torch
    import torch.distributed.checkpoint as dcp

    for name, value in gcs_env.items():
        monkeypatch.setenv(name, value)
    backend = select_backend("gcsfs")
    assert backend.inherits == "torch-dcp" and backend.supports("async_save")
    path = "/suite/ckpt-objects"
    state = {"w": torch.arange(6, dtype=torch.float64)}
    dcp.save(state, storage_writer=backend.storage_writer(path), no_dist=True)
    store = backend.objects_at(path)
    assert store.where() == "gs://ckptconf-test/suite/ckpt-objects/"
    assert store.names() == [".metadata", "__0_0.distcp"]
    data = store.read("__0_0.distcp")
    assert torch.arange(6, dtype=torch.float64).numpy().tobytes() in data
    assert store.size("__0_0.distcp") == len(data)
    store.change_byte("__0_0.distcp", 0, lambda b: b ^ 1)
    assert store.read("__0_0.distcp")[0] == data[0] ^ 1
    store.delete(".metadata")
    assert store.names() == ["__0_0.distcp"]
    with pytest.raises(FileNotFoundError, match="gs://ckptconf-test/suite/ckpt-objects/.metadata"):
        store.read(".metadata")


@pytest.mark.multiprocess
def test_the_suite_runs_on_gcs_and_its_verdict_is_its_own(gcs_env, tmp_path):
    """``ckptconf run --backend gcsfs`` on a subset: the corruption tests run on the bucket's
    objects (not unsupported), DCP's known failures are inherited, and the run exits 0."""
    report = tmp_path / "report.json"
    selection = (
        "test_round_trip_sharded_tensor_on_two_ranks or test_short_read or test_deleted_file"
    )
    result = subprocess.run(
        [sys.executable, "-m", "ckptconf.cli", "run"]
        + ["--backend", "gcsfs", "--profile", "ci", "--report", str(report)]
        + ["--", "-k", selection, "--ckpt-no-shrink"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **gcs_env, "COLUMNS": "200"},
    )
    tests = {t["id"].split("::")[-1]: t for t in json.loads(report.read_text())["tests"]}
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert {"test_short_read_is_an_error", "test_deleted_file_is_an_error_or_harmless"} <= set(
        tests
    ), sorted(tests)
    assert tests["test_short_read_is_an_error"]["outcome"] == "passed", tests
    assert {t["outcome"] for t in tests.values()} <= {"passed", "inherited"}, tests
