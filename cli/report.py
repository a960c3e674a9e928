"""``ckptconf report``: a JSON report rendered as markdown."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser", "emit"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``report`` to the ``ckptconf`` command's subparsers."""
    report = sub.add_parser("report", help="render a JSON report as markdown")
    report.add_argument("path", help="JSON report written by ckptconf run or --ckpt-report")
    report.add_argument(
        "-o", "--output", default=None, help="write the markdown here instead of stdout"
    )
    report.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from ckptconf.conformance.report import render_markdown

    try:
        with open(args.path) as file:
            text = render_markdown(json.load(file))
    except (OSError, ValueError) as exc:
        print(f"ckptconf report: cannot read {args.path}: {exc}", file=sys.stderr)
        return 2
    return emit(text, args.output)


def emit(text: str, output: str | None) -> int:
    """Write ``text`` to the file ``output``, or to stdout."""
    if output:
        with open(output, "w") as file:
            file.write(text)
    else:
        sys.stdout.write(text)
    return 0
