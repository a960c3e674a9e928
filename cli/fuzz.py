"""``ckptconf fuzz``: a fuzzing campaign (:mod:`ckptconf.conformance.fuzz`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``fuzz`` to the ``ckptconf`` command's subparsers."""
    fuzz = sub.add_parser(
        "fuzz",
        help="a fuzzing campaign: rounds of growing example counts and new seeds for a budget, "
        "hypothesis' database kept in a folder",
    )
    fuzz.add_argument("--backend", default="reference", help="built-in name or module:attr")
    fuzz.add_argument("--budget", required=True, metavar="DURATION", help="e.g. 30m, 8h")
    fuzz.add_argument(
        "--db",
        required=True,
        metavar="FOLDER",
        help="where the example database (FOLDER/examples) and each round's report go; a "
        "later campaign on the same folder replays what this one found first",
    )
    fuzz.add_argument("-k", default=None, help="only tests matching this -k expression")
    fuzz.set_defaults(handler=_fuzz)


def _fuzz(args: argparse.Namespace) -> int:
    from ckptconf.conformance.fuzz import Campaign
    from ckptconf.conformance.kit.budget import parse_duration

    try:
        seconds = parse_duration(args.budget)
    except ValueError as exc:
        print(f"ckptconf fuzz: --budget: {exc}", file=sys.stderr)
        return 2
    campaign = Campaign(args.backend, Path(args.db).resolve(), seconds, select=args.k)
    return campaign.run(lambda line: print(line, flush=True))
