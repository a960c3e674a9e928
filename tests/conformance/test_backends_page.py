"""docs/backends.md from JSON reports: totals, own findings (reviewed or not), inherited ones."""

from __future__ import annotations

import json

from ckptconf.conformance.backends_page import render_backends_page
from ckptconf.conformance.cli import main


def _test(name: str, outcome: str, message: str = "", failure: dict | None = None) -> dict:
    return {
        "id": f"test_x.py::TestX::{name}",
        "suite": "x",
        "level": "core",
        "outcome": outcome,
        "message": message,
        "failure": failure,
    }


REPORT = {
    "backend": {"name": "objstore", "description": "an object store", "inherits": "torch-dcp"},
    "versions": {"torch": "2.13.0"},
    "profile": "ci",
    "command": "ckptconf run --backend objstore",
    "date": "2026-11-30",
    "wall_seconds": 125.0,
    "tests": [
        _test("test_a", "passed"),
        _test("test_b", "failed", failure={"what": "load raised", "reproduction": "pytest b"}),
        _test("test_c", "expected failure", "expected failure: writes in place (writer.py:42)"),
        _test("test_d", "inherited failure", "inherited from torch-dcp: no checksums"),
        _test("test_e", "unsupported", "unsupported by backend: no storage"),
        _test("test_f", "unsupported", "unsupported by backend: no storage"),
    ],
}


def test_the_page_separates_own_reviewed_unreviewed_and_inherited_findings():
    page = render_backends_page([REPORT], sources=["r.json"])
    assert "| objstore | 1 | 1 | 1 | 1 | 2 | 0 | 2 min 05 s |" in page
    assert "- command: `ckptconf run --backend objstore`" in page
    assert "### Own findings (2)" in page
    b, c = page.index("TestX::test_b"), page.index("TestX::test_c")
    assert "**Not reviewed**" in page[b:c] and "Reproduce: `pytest b`" in page[b:c]
    assert "Reviewed: writes in place (writer.py:42)" in page[c:]
    assert (
        "### Inherited from torch-dcp (1)\n\n- `test_x.py::TestX::test_d`: torch-dcp: no checksums"
        in page
    )
    assert "- 2 test(s): unsupported by backend: no storage" in page


def test_the_command_writes_the_page(tmp_path):
    source = tmp_path / "objstore.json"
    source.write_text(json.dumps(REPORT))
    out = tmp_path / "backends.md"
    assert main(["backends-page", str(source), "-o", str(out), "--not-run", "x: needs y"]) == 0
    assert out.read_text().startswith("# Backends: ckptconf verdicts")
    assert out.read_text().endswith("## Not run\n\n- x: needs y\n")
    assert main(["backends-page", str(tmp_path / "missing.json")]) == 2


def test_backends_lists_the_adapters_and_what_each_needs(capsys, monkeypatch):
    from ckptconf.conformance import adapters

    missing = adapters.Adapter("x", ("no_such_package_xyz",), "xyz", "a backend not installed")
    monkeypatch.setitem(adapters.ADAPTERS, "not-installed", missing)
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "adapters (third-party packages):" in out and "s3torchconnector" in out
    assert "not-installed          a backend not installed\n" in out
    assert "needs pip install 'ckptconf[xyz]'" in out
