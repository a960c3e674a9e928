"""Run printed lifecycle steps again: ``python -m ckptconf.conformance.suites.lifecycle
--backend SPEC [--strict] [--device MODE] '[Save(...), Load(...), ...]'``.

Prints each step as it runs; exits 0 if every step keeps the contract, 1 with the failure
otherwise (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the steps of the command line on the backend it names; the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m ckptconf.conformance.suites.lifecycle",
        description="Run a printed sequence of lifecycle steps on a backend.",
    )
    parser.add_argument("--backend", required=True, help="a built-in name or module:attr")
    parser.add_argument("--strict", action="store_true", help="check what saves leave beside")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda-shared")
    parser.add_argument(
        "--no-expectations",
        action="store_true",
        help="stop at known failures too (by default those the backend's expectations name, "
        "and its parent's, are passed over as in the test)",
    )
    parser.add_argument("steps", help="the printed list of steps, [Save(...), ...]")
    args = parser.parse_args(argv)

    from ckptconf.conformance.kit.failures import ConformanceFailure, HangFailure, render_failure
    from ckptconf.conformance.kit.running import PoolRanks
    from ckptconf.conformance.kit.trial import Checker
    from ckptconf.conformance.kit.verdicts import KnownHang
    from ckptconf.conformance.selection import select_backend
    from ckptconf.harness import shutdown_all

    from .runner import KnownEntries, Runner
    from .steps import numbered, parse_steps

    try:
        steps = parse_steps(args.steps)
    except ValueError as exc:
        parser.error(str(exc))
    backend = select_backend(args.backend)
    root = tempfile.mkdtemp(prefix="ckptconf-lifecycle-")
    count = iter(range(10**9))
    checker = Checker(
        backend,
        ranks=PoolRanks(args.device),
        paths=lambda: f"{root}/run{next(count)}",
        suite="lifecycle",
        test="lifecycle::replay",
    )
    entries = [] if args.no_expectations else _entries(backend, checker.ranks, strict=args.strict)

    def passed_over(fields, entry) -> None:
        print(f"known failure, passed over ({entry.where}): {fields.get('what')}", flush=True)

    print(f"running {len(steps)} step(s) on {backend.name}:\n{numbered(steps)}", flush=True)
    if entries:
        print(f"{len(entries)} known failure(s) of its expectations are passed over", flush=True)
    try:
        Runner(
            checker,
            strict=args.strict,
            verdict=KnownEntries(entries, passed_over),
            title="replayed run",
        ).run(steps)
    except ConformanceFailure as exc:
        print(render_failure(exc.fields()))
        return 1
    except HangFailure as exc:
        print(render_failure(exc.failure.fields()))
        return 1
    except KnownHang:
        print("a step hung, as the backend's expectations say (a known failure)")
        return 0
    finally:
        shutdown_all()
        shutil.rmtree(root, ignore_errors=True)  # the failure printed says what went wrong
    print("every step kept the contract")
    return 0


def _entries(backend, ranks, *, strict: bool) -> list:
    """The entries about the lifecycle test of the backend's expectations, and its parent's of
    the parts it takes (:mod:`~ckptconf.conformance.kit.inheritance`, found on ``ranks``)."""
    from ckptconf.conformance.expectations import Expectations
    from ckptconf.conformance.kit.inheritance import inheritance_of
    from ckptconf.conformance.selection import select_backend

    test = "lifecycle::test_lifecycle" + ("_with_failed_saves" if strict else "")
    entries = []
    if backend.expectations:
        entries += Expectations.load(backend.expectations).for_test(test)
    parent = backend.inherits and select_backend(backend.inherits).expectations
    if parent:
        inherited = Expectations.load(parent).for_test(test)
        entries += inheritance_of(backend, backend.inherits, ranks).entries(inherited)
    return entries


if __name__ == "__main__":
    sys.exit(main())
