"""``ckptconf backends`` (the built-in backends and the adapters) and ``ckptconf backends-page``
(docs/backends.md from several JSON reports)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

from .report import emit

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``backends`` and ``backends-page`` to the ``ckptconf`` command's subparsers."""
    backends = sub.add_parser("backends", help="list built-in backends and adapters")
    backends.set_defaults(handler=_backends)
    page = sub.add_parser(
        "backends-page", help="render several JSON reports as one page (docs/backends.md)"
    )
    page.add_argument(
        "paths",
        nargs="+",
        help="JSON reports in page order; several of one backend (other profiles or seeds) "
        "are shown together",
    )
    page.add_argument("-o", "--output", default=None, help="write here instead of stdout")
    page.add_argument(
        "--not-run",
        action="append",
        default=[],
        metavar="'NAME: WHY'",
        help="a backend tried and not run, with why (repeatable)",
    )
    page.add_argument(
        "--note",
        action="append",
        default=[],
        metavar="'NAME: TEXT'",
        help="what changed for backend NAME since the last page (repeatable)",
    )
    page.set_defaults(handler=_backends_page)


def _backends(args: argparse.Namespace) -> int:
    from ckptconf.conformance.builtin import BUILT_IN

    for name, factory in BUILT_IN.items():
        backend = factory()
        unsupported = ", ".join(sorted(backend.unsupported)) or "-"
        print(f"{name:18} {backend.description}\n{'':18} declared unsupported: {unsupported}")
    from ckptconf.conformance.adapters import ADAPTERS

    print("adapters (third-party packages):")
    for name, adapter in ADAPTERS.items():
        missing = [p for p in adapter.needs if importlib.util.find_spec(p.split(".")[0]) is None]
        state = f"needs pip install 'ckptconf[{adapter.extra}]'" if missing else "installed"
        print(f"{name:22} {adapter.summary}\n{'':22} {state}")
    return 0


def _backends_page(args: argparse.Namespace) -> int:
    from ckptconf.conformance.backends_page import render_backends_page

    reports = []
    for path in args.paths:
        try:
            with open(path) as file:
                reports.append(json.load(file))
        except (OSError, ValueError) as exc:
            print(f"ckptconf backends-page: cannot read {path}: {exc}", file=sys.stderr)
            return 2
    notes = {}
    for note in args.note:
        name, sep, text = note.partition(":")
        if not sep or not text.strip():
            print(f"ckptconf backends-page: --note {note!r} is not 'NAME: text'", file=sys.stderr)
            return 2
        notes[name.strip()] = text.strip()
    text = render_backends_page(reports, sources=args.paths, not_run=args.not_run, notes=notes)
    return emit(text, args.output)
