"""``ckptconf inspect`` and ``ckptconf verify``: what a checkpoint folder holds, and whether it
is whole."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["UNKNOWN_FORMAT", "add_parser"]

UNKNOWN_FORMAT = 3
"""Exit code of ``inspect`` and ``verify`` for a path in a format they do not read (a single-file
checkpoint, another system's layout): not broken, not whole, unknown."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``inspect`` and ``verify`` to the ``ckptconf`` command's subparsers."""
    inspect = sub.add_parser(
        "inspect",
        help="what a checkpoint folder holds (ckptconf, torch DCP or DCP safetensors format; "
        f"exit {UNKNOWN_FORMAT} for a format it does not read)",
    )
    inspect.add_argument("path", help="checkpoint folder")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of the tree")
    inspect.add_argument("--key", default=None, metavar="PATTERN", help="only keys matching")
    inspect.add_argument(
        "--layout",
        default=None,
        metavar="LAYOUT",
        help='e.g. "mesh=(2,4) placements=[Shard(0),Replicate()]": what each rank of that '
        "DTensor layout would read",
    )
    inspect.set_defaults(handler=_inspect)
    verify = sub.add_parser(
        "verify",
        help="check a checkpoint folder is whole: exit 0 whole, 1 not whole (or nothing there), "
        f"{UNKNOWN_FORMAT} a format it does not read",
    )
    verify.add_argument("path", help="checkpoint folder")
    verify.set_defaults(handler=_verify)


def _inspect(args: argparse.Namespace) -> int:
    from ckptconf.reference.errors import MetadataFormatError, UnknownFormatError
    from ckptconf.reference.inspection import open_checkpoint, render_layout, render_tree

    try:
        view = open_checkpoint(args.path)
        text = render_layout(view, args.layout, key=args.key) if args.layout else None
    except UnknownFormatError as exc:
        print(f"ckptconf inspect: {exc}", file=sys.stderr)
        return UNKNOWN_FORMAT
    except (OSError, MetadataFormatError, ValueError) as exc:
        print(f"ckptconf inspect: {exc}", file=sys.stderr)
        return 2
    if text is not None:
        sys.stdout.write(text)
    elif args.json:
        data = view.to_json()
        if args.key is not None:
            from fnmatch import fnmatchcase

            data["entries"] = [e for e in data["entries"] if fnmatchcase(e["key"], args.key)]
        print(json.dumps(data, indent=1))
    else:
        sys.stdout.write(render_tree(view, key=args.key))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ckptconf.reference.errors import UnknownFormatError
    from ckptconf.reference.inspection import verify

    try:
        problems = verify(args.path)
    except UnknownFormatError as exc:
        print(f"ckptconf verify: cannot tell: {exc}", file=sys.stderr)
        return UNKNOWN_FORMAT
    for problem in problems:
        print(problem)
    if problems:
        print(f"{args.path}: NOT whole, {len(problems)} problem(s)")
        return 1
    print(f"{args.path}: whole")
    return 0
