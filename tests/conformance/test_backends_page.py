"""docs/backends.md from JSON reports: runs of a backend together, own findings (reviewed or
not), inherited ones entry by entry, credits, what could not run."""

from __future__ import annotations

import json

from ckptconf.cli import main
from ckptconf.conformance.backends_page import render_backends_page


def _test(name: str, outcome: str, message: str = "", **more) -> dict:
    return {
        "id": f"test_x.py::TestX::{name}",
        "suite": "x",
        "level": "core",
        "outcome": outcome,
        "message": message,
        **more,
    }


def _known(where: str, origin: str, reason: str) -> dict:
    return {
        "entry": where,
        "origin": origin,
        "signature": "step load, kind wrong_values",
        "reason": reason,
        "count": 2,
        "examples": [{"case": "save on 2 rank(s)", "what": "1 value differs", "key": "w"}],
    }


def _report(seed, tests) -> dict:
    return {
        "backend": {"name": "objstore", "description": "an object store", "inherits": "torch-dcp"},
        "versions": {"torch": "2.13.0"},
        "profile": "ci" if seed is None else "dev",
        "seed": seed,
        "command": "ckptconf run --backend objstore",
        "date": "2026-12-07",
        "wall_seconds": 125.0,
        "tests": tests,
    }


CI = _report(
    None,
    [
        _test("test_a", "passed", credit="torch-dcp fails this test (x.toml:3: no check) ..."),
        _test("test_b", "failed", failure={"what": "load raised", "reproduction": "pytest b"}),
        _test("test_c", "expected", known=[_known("/p/objstore.toml:1", "own", "writes in place")]),
        _test("test_d", "inherited", known=[_known("/p/torch-dcp.toml:7", "torch-dcp", "no sums")]),
        _test("test_e", "unsupported", "declared unsupported: storage"),
        _test("test_f", "unsupported", "declared unsupported: storage"),
    ],
)
DEV = _report(
    1234,
    [
        _test("test_b", "failed", failure={"what": "load raised"}),
        _test("test_c", "failed", failure={"what": "save raised otherwise"}),
        _test("test_g", "failed", failure={"what": "save hung", "verdict": "torch-dcp passes"}),
    ],
)


def test_the_page_separates_own_reviewed_unreviewed_and_inherited_findings():
    page = render_backends_page([CI, DEV], sources=["ci.json", "dev.json"])
    header = (
        "| backend | run | passed | failed | unsupported | expected | inherited | unexpected pass"
    )
    assert header + " | skipped | out of time | run time |" in page
    assert "| objstore | ci | 1 | 1 | 2 | 1 | 1 | 0 | 0 | 0 | 2 min 05 s |" in page
    assert "| objstore | dev (seed 1234) | 0 | 3 | 0 | 0 | 0 | 0 | 0 | 0 | 2 min 05 s |" in page
    assert page.count("## objstore") == 1
    assert "### Own findings (3)" in page
    reviewed = render_backends_page([CI], sources=["ci.json"])
    assert "Reviewed (/p/objstore.toml:1): writes in place" in reviewed
    b, c, g = (page.index(f"TestX::{n}`") for n in ("test_b", "test_c", "test_g"))
    assert "Found by: ci (failed), dev (seed 1234) (failed)." in page[b:c]
    assert "**Not reviewed**" in page[b:c] and "Reproduce: `pytest b`" in page[b:c]
    # reviewed in one run, failing otherwise in another: the failure is shown, not the review
    assert "Found by: ci (expected), dev (seed 1234) (failed)." in page[c:g]
    assert "**Not reviewed**" in page[c:g] and "save raised otherwise" in page[c:g]
    assert (
        "Found by: dev (seed 1234) (failed)." in page[g:]
        and "Verdict: torch-dcp passes" in page[g:]
    )
    assert (
        "### Inherited from torch-dcp (1)\n\n- `test_x.py::TestX::test_d` (ci): torch-dcp.toml:7 "
        "(2 example(s)): no sums" in page
    )
    assert "### Passes where torch-dcp fails (1)" in page
    assert "- 2 test(s): declared unsupported: storage" in page


def test_the_command_writes_the_page_with_notes(tmp_path):
    source = tmp_path / "objstore.json"
    source.write_text(json.dumps(CI))
    out = tmp_path / "backends.md"
    command = ["backends-page", str(source), "-o", str(out), "--not-run", "x: needs y"]
    assert main([*command, "--note", "objstore: the hang is its own now"]) == 0
    page = out.read_text()
    assert page.startswith("# Backends: ckptconf verdicts")
    assert "What changed: the hang is its own now" in page
    assert main([*command, "--note", "no colon here"]) == 2
