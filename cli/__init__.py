"""The ``ckptconf`` command, one module per command: :mod:`.run`, :mod:`.fuzz`,
:mod:`.backends` (``backends``, ``backends-page``), :mod:`.report`, :mod:`.checkpoints`
(``inspect``, ``verify``) and :mod:`.bench`."""

from __future__ import annotations

import argparse

from . import backends, bench, checkpoints, fuzz, report, run
from .checkpoints import UNKNOWN_FORMAT

__all__ = ["UNKNOWN_FORMAT", "main"]

_COMMANDS = (run, fuzz, backends, report, checkpoints, bench)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ckptconf``: the exit status of the command run."""
    parser = argparse.ArgumentParser(
        prog="ckptconf",
        description="Run the conformance suite against a backend, list backends, render "
        "reports, inspect checkpoints, benchmark.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in _COMMANDS:
        command.add_parser(sub)
    args = parser.parse_args(argv)
    if getattr(args, "pytest_args", None) and args.pytest_args[0] == "--":
        args.pytest_args = args.pytest_args[1:]
    return args.handler(args)
