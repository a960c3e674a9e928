"""The ``ckptconf`` command."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]

BUILT_IN_BACKENDS = ("reference",)


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .demo import run_demo

    console = Console()
    if args.backend not in BUILT_IN_BACKENDS:
        console.print(
            f"[red]unknown backend {args.backend!r}; built-in backends: {', '.join(BUILT_IN_BACKENDS)}[/red]"
        )
        return 2
    console.print(
        f"ckptconf: backend [bold]{args.backend}[/bold], profile {args.profile} "
        "(the conformance suites are not built yet: running the resharding demo)"
    )
    steps = run_demo()
    table = Table(title="save on 2 ranks, reshard-load elsewhere (value-checked)")
    for column in ("step", "ranks", "result", "detail", "seconds"):
        table.add_column(column)
    for step in steps:
        result = "[green]passed[/green]" if step.passed else "[red]failed[/red]"
        table.add_row(step.name, str(step.world_size), result, step.detail, f"{step.seconds:.1f}")
    console.print(table)
    failed = sum(not s.passed for s in steps)
    console.print(f"{len(steps) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _bench(args: argparse.Namespace) -> int:
    from ckptconf.harness.bench import bench_harness
    from rich.console import Console
    from rich.table import Table

    console = Console()
    sizes = tuple(int(x) for x in args.sizes.split(","))
    console.print(
        f"measuring warm-world calls ({args.calls} per size) and spawn-per-call ({args.spawn_calls} per size)..."
    )
    rows = bench_harness(sizes, warm_calls=args.calls, spawn_calls=args.spawn_calls)
    table = Table(title="ckptconf harness: seconds per call of a no-op on every rank")
    for column in ("ranks", "warm world (ms)", "spawn per call (ms)", "speed-up"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row.size),
            f"{row.warm_seconds * 1e3:.1f}",
            f"{row.spawn_seconds * 1e3:.0f}",
            f"{row.ratio:.0f}x",
        )
    console.print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ckptconf``."""
    parser = argparse.ArgumentParser(prog="ckptconf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the conformance checks against a backend")
    run.add_argument("--backend", default="reference", help="built-in backend name")
    run.add_argument(
        "--profile", default="ci", choices=["ci", "dev", "thorough"], help="hypothesis profile"
    )
    run.set_defaults(handler=_run)
    backends = sub.add_parser("backends", help="list built-in backends")
    backends.set_defaults(handler=lambda a: print("\n".join(BUILT_IN_BACKENDS)) or 0)
    bench = sub.add_parser("bench", help="benchmarks")
    bench.add_argument("target", choices=["harness"], help="what to measure")
    bench.add_argument("--sizes", default="2,4", help="world sizes, comma-separated")
    bench.add_argument("--calls", type=int, default=50, help="warm calls per size")
    bench.add_argument("--spawn-calls", type=int, default=3, help="spawn-per-call calls per size")
    bench.set_defaults(handler=_bench)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
