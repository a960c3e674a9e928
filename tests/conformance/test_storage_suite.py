"""The storage suite reports planted storage bugs, each by the test meant for it, readably.

Each planted storage bug (``tests.planted.storage``) runs, in a subprocess, the storage test that
must catch it and one it must still pass (so the failure is the planted bug, not a
backend that cannot work at all).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .suite_runner import failure_text, run_conformance


def run_storage_suite(spec: str, selection: str, tmp_path: Path) -> tuple[str, dict[str, dict]]:
    """Run ``TestStorage`` tests matching ``selection`` against ``spec``; output and outcomes."""
    result, report = run_conformance(spec, f"TestStorage and ({selection})", tmp_path)
    assert report, result.stdout + result.stderr
    tests = {t["id"].split("::")[-1]: t for t in report["tests"]}
    return result.stdout + result.stderr, tests


@pytest.mark.parametrize(
    "name, caught_by, failure, still_passes",
    [
        (
            "checksum_not_verified",
            "test_flipped_bit_is_an_error_or_harmless",
            "a corrupted checkpoint loaded without error",
            "test_short_read_is_an_error",
        ),
        (
            "overwrites_in_place",
            "test_resave_other_keys_and_shapes",
            "over the previous one raised",
            "test_metadata_matches_the_saved_state",
        ),
        (
            "prefix_listing",
            "test_sibling_checkpoints_saved_concurrently",
            "the metadata has key(s) the state does not",
            "test_metadata_matches_the_saved_state",
        ),
        (
            "zero_fill_short_read",
            "test_short_read_is_an_error",
            "without error",
            "test_metadata_matches_the_saved_state",
        ),
    ],
)
def test_a_planted_storage_bug_is_caught(tmp_path, name, caught_by, failure, still_passes):
    spec = f"tests.planted.storage:{name}"
    output, tests = run_storage_suite(spec, f"{caught_by} or {still_passes}", tmp_path)
    assert tests[still_passes]["outcome"] == "passed", output
    caught = tests[caught_by]
    assert caught["outcome"] == "failed", output
    text = failure_text(caught)
    assert text.startswith(f"[{name}]"), text
    assert failure in text, text
    assert f"--ckpt-backend {spec}" in caught["failure"]["reproduction"], caught
