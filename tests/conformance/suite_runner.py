"""Running the conformance suite in a subprocess against a (broken) backend, for meta-tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_conformance(
    spec: str,
    selection: str,
    tmp_path: Path,
    *,
    timeout: float = 900,
    extra: list[str] | None = None,
    shrink: bool = False,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess, dict]:
    """``pytest --pyargs ckptconf.conformance -k selection`` against ``spec`` under the ci
    profile, from the repository root (so ``tests.*`` backends import in the ranks); the
    finished process and the JSON report (empty if none was written). Failing examples are
    not shrunk unless ``shrink``: a meta-test checks that a bug is caught and how it is told,
    and shrinking takes most of the time. ``env`` is added to the environment."""
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "ckptconf.conformance"]
        + ["--ckpt-backend", spec, "--ckpt-profile", "ci", "--ckpt-report", str(report)]
        + ["-p", "no:cacheprovider", "-q", "-k", selection, *(extra or [])]
        + ([] if shrink else ["--ckpt-no-shrink"]),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    return result, (json.loads(report.read_text()) if report.exists() else {})


def failure_text(test: dict) -> str:
    """A failed test's failure from the JSON report, as the person reading it sees it."""
    from ckptconf.conformance.kit.failures import render_failure

    return render_failure(test["failure"])
