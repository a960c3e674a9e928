"""The s3torchconnector adapter against a local S3 server: selected by name, stored objects
reached through boto3, DCP's known failures reported as inherited, exit code from its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("s3torchconnector.dcp", reason="needs ckptconf[s3]")
pytest.importorskip("moto.server", reason="needs moto[server] (the dev extra)")

from ckptconf.conformance import BackendSpecError, select_backend  # noqa: E402

from .s3_server import local_s3  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3_env():
    with local_s3() as env:
        yield env


def test_the_adapter_needs_a_bucket(monkeypatch):
    monkeypatch.delenv("CKPTCONF_S3_BUCKET", raising=False)
    with pytest.raises(BackendSpecError, match="set CKPTCONF_S3_BUCKET"):
        select_backend("s3torchconnector")


def test_a_missing_package_names_the_extra(monkeypatch):
    from ckptconf.conformance import adapters

    fake = adapters.Adapter("s3torchconnector", ("no_such_package_xyz",), "s3", "")
    monkeypatch.setitem(adapters.ADAPTERS, "s3torchconnector", fake)
    with pytest.raises(BackendSpecError, match=r"pip install 'ckptconf\[s3\]'"):
        select_backend("s3torchconnector")


def test_stored_objects_see_what_the_connector_saved(s3_env, monkeypatch):
    import torch
    import torch.distributed.checkpoint as dcp

    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    backend = select_backend("s3torchconnector")
    assert backend.inherits == "torch-dcp"
    path = "/suite/ckpt-objects"
    state = {"w": torch.arange(6, dtype=torch.float64)}
    dcp.save(state, storage_writer=backend.storage_writer(path), no_dist=True)
    store = backend.objects_at(path)
    assert store.where() == "s3://ckptconf-test/suite/ckpt-objects/"
    assert store.names() == [".metadata", "__0_0.distcp"]
    data = store.read("__0_0.distcp")
    assert torch.arange(6, dtype=torch.float64).numpy().tobytes() in data
    store.change_byte("__0_0.distcp", 0, lambda b: b ^ 1)
    assert store.read("__0_0.distcp")[0] == data[0] ^ 1
    store.delete(".metadata")
    assert store.names() == ["__0_0.distcp"]


@pytest.mark.multiprocess
def test_the_suite_runs_on_s3_and_its_verdict_is_its_own(s3_env, tmp_path):
    """``ckptconf run --backend s3torchconnector --inherit torch-dcp`` on a subset: the
    corruption tests run on the bucket's objects (not unsupported), DCP's known failures are
    inherited, and the run exits 0 (the connector has no failure of its own here)."""
    report = tmp_path / "report.json"
    selection = (
        "test_round_trip_sharded_tensor_on_two_ranks or test_short_read or test_deleted_file"
    )
    result = subprocess.run(
        [sys.executable, "-m", "ckptconf.cli", "run"]
        + ["--backend", "s3torchconnector", "--inherit", "torch-dcp", "--profile", "ci"]
        + ["--report", str(report), "--", "-k", selection, "--ckpt-no-shrink"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **s3_env, "COLUMNS": "200"},
    )
    tests = {t["id"].split("::")[-1]: t for t in json.loads(report.read_text())["tests"]}
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert {"test_short_read_is_an_error", "test_deleted_file_is_an_error_or_harmless"} <= set(
        tests
    ), sorted(tests)
    assert tests["test_short_read_is_an_error"]["outcome"] == "passed", tests
    outcomes = {t["outcome"] for t in tests.values()}
    assert outcomes <= {"passed", "inherited"}, tests
