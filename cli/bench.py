"""``ckptconf bench``: the benchmarks of :mod:`ckptconf.bench` as tables (harness, plan, io,
reshard, suite)."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` to the ``ckptconf`` command's subparsers."""
    bench = sub.add_parser("bench", help="benchmarks")
    bench.add_argument(
        "target",
        choices=["harness", "plan", "io", "reshard", "suite"],
        help="what to measure (suite: where a conformance run's time goes)",
    )
    bench.add_argument(
        "--backend", default="reference", help="suite: the backend to run the suite against"
    )
    bench.add_argument(
        "--profile", default="ci", choices=["ci", "dev", "thorough"], help="suite: the profile"
    )
    bench.add_argument("-k", default=None, help="suite: only tests matching this -k expression")
    bench.add_argument(
        "--mib",
        default=None,
        help="io: MiB saved and loaded, comma-separated for a sweep (default 256); "
        "reshard: MiB of the tensor (default 32)",
    )
    bench.add_argument(
        "--count",
        default=None,
        help="io: tensors in the state, comma-separated for a sweep (default 64)",
    )
    bench.add_argument(
        "--dir",
        default=None,
        help="io, reshard, suite: folder to write in (default /dev/shm; suite: as ckptconf run's)",
    )
    bench.add_argument(
        "--no-rss",
        action="store_true",
        help="io: skip the peak RSS measurement (a process per implementation and step)",
    )
    bench.add_argument(
        "--ranks", default="256,1024", help="plan: simulated world sizes, comma-separated"
    )
    bench.add_argument("--tensors", type=int, default=100, help="plan: row-sharded tensors")
    bench.add_argument(
        "--dcp-max-ranks",
        type=int,
        default=4096,
        help="plan: largest world DCP's planner is timed on (it takes minutes at 10,000 ranks)",
    )
    bench.add_argument(
        "--load",
        action="store_true",
        help="plan: also time load planning (one rank's local plan, the global plan) of that state",
    )
    bench.add_argument(
        "--wire",
        action="store_true",
        help="plan: also time the coordinator's unpickling of the local plans and pickling of "
        "the global plans (what gather_object and scatter_object_list cost it)",
    )
    bench.add_argument(
        "--cached",
        action="store_true",
        help="plan: also time the reference coordinator's planning of a re-save of the same "
        "layout (a hit of its plan cache) beside its fresh plan",
    )
    bench.add_argument("--sizes", default="2,4", help="world sizes, comma-separated")
    bench.add_argument("--calls", type=int, default=50, help="warm calls per size")
    bench.add_argument("--spawn-calls", type=int, default=3, help="spawn-per-call calls per size")
    bench.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    from ckptconf.bench.harness import bench_harness
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # a log or a pipe (COLUMNS may say 80: xdist sets it)
        console = Console(width=max(200, console.width))  # the tables whole, not squeezed
    if args.target == "plan":
        return _bench_plan(args, console)
    if args.target == "suite":
        return _bench_suite(args, console)
    if args.target == "io":
        return _bench_io(args, console)
    if args.target == "reshard":
        return _bench_reshard(args, console)
    sizes = tuple(int(x) for x in args.sizes.split(","))
    console.print(
        f"measuring warm-world calls ({args.calls} per size) and spawn-per-call ({args.spawn_calls} per size)..."
    )
    rows = bench_harness(sizes, warm_calls=args.calls, spawn_calls=args.spawn_calls)
    table = Table(title="ckptconf harness: seconds per call of a no-op on every rank")
    columns = (
        "ranks",
        "warm world (ms)",
        "new world, spawn (ms)",
        "new world, forkserver (ms)",
        "warm vs spawn",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row.size),
            f"{row.warm_seconds * 1e3:.1f}",
            f"{row.spawn_seconds * 1e3:.0f}",
            f"{row.forkserver_seconds * 1e3:.0f}",
            f"{row.ratio:.0f}x",
        )
    console.print(table)
    return 0


def _bench_suite(args: argparse.Namespace, console) -> int:
    from ckptconf.bench.suite import as_table, bench_suite

    console.print(
        f"running the conformance suite against {args.backend} (profile {args.profile}) in this "
        "process, timing its parts..."
    )
    try:
        times = bench_suite(args.backend, profile=args.profile, select=args.k, folder=args.dir)
    except RuntimeError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    console.print(as_table(times))
    outcomes = ", ".join(f"{n} {o}" for o, n in sorted(times.outcomes.items()))
    console.print(f"outcomes: {outcomes}", highlight=False)
    return 0


def _bench_numbers(text: str | None, default: str, what: str) -> list[int]:
    """The comma-separated positive integers of ``text`` (``default`` if not given)."""
    try:
        values = [int(x) for x in (text or default).split(",")]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise SystemExit(f"ckptconf bench: {what} takes positive integers, comma-separated")
    return values


def _bench_io(args: argparse.Namespace, console) -> int:
    from ckptconf.bench.io import IMPLEMENTATIONS, bench_io, default_folder
    from rich.table import Table

    sizes = _bench_numbers(args.mib, "256", "--mib")
    counts = _bench_numbers(args.count, "64", "--count")
    folder = args.dir or default_folder(2 * (max(sizes) << 20))
    results = []
    for mib in sizes:
        for count in counts:
            console.print(f"saving and loading {mib} MiB in {count} tensors in {folder}...")
            results.append(bench_io(mib << 20, count, folder=folder, rss=not args.no_rss))
    table = Table(
        title="one process, best of 3 interleaved rounds (GiB/s; ratio to DCP (default), to "
        "DCP's best (default or 4 writer threads), to raw; the reference with its defaults, and "
        "without the replica check they include)"
    )
    for column in (
        "MiB",
        "tensors",
        "",
        "raw",
        "DCP",
        "DCP 4 thr.",
        "reference",
        "ref. / DCP",
        "ref. / best DCP",
        "ref. / raw",
        "ref. unverified",
        "ref. / unverified",
    ):
        table.add_column(column, justify="right")
    for result in results:
        for step, seconds in (("save", result.save), ("load", result.load)):
            speed = {name: result.gib_per_s(s) for name, s in seconds.items()}
            best = max(speed["dcp"], speed["dcp-4"])
            table.add_row(
                f"{result.total / 2**20:.0f}",
                str(result.count),
                step,
                f"{speed['raw']:.2f}",
                f"{speed['dcp']:.2f}",
                f"{speed['dcp-4']:.2f}",
                f"{speed['reference']:.2f}",
                f"{speed['reference'] / speed['dcp']:.2f}x",
                f"{speed['reference'] / best:.2f}x",
                f"{speed['reference'] / speed['raw']:.0%}",
                f"{speed['reference-unverified']:.2f}",
                f"{speed['reference'] / speed['reference-unverified']:.0%}",
            )
    console.print(table)
    if args.no_rss:
        return 0
    names = {"raw": "raw", "dcp": "DCP", "reference": "ref."}
    table = Table(
        title="peak RSS growth (MiB) over the state during the step, and growth x state "
        "(growth / state bytes); each step in a process of its own"
    )
    for column in ("MiB", "tensors", ""):
        table.add_column(column, justify="right")
    for name in IMPLEMENTATIONS:
        table.add_column(f"{names[name]} MiB", justify="right")
    for name in IMPLEMENTATIONS:
        table.add_column(f"{names[name]} x state", justify="right")
    for result in results:
        for step in ("save", "load"):
            table.add_row(
                f"{result.total / 2**20:.0f}",
                str(result.count),
                step,
                *(f"{result.rss[step][n] / 2**20:.1f}" for n in IMPLEMENTATIONS),
                *(f"{result.rss_ratio(step, n):.3f}" for n in IMPLEMENTATIONS),
            )
    console.print(table)
    return 0


def _bench_reshard(args: argparse.Namespace, console) -> int:
    from ckptconf.bench.io import default_folder
    from ckptconf.bench.reshard import bench_reshard, case_shape
    from rich.table import Table

    sizes = _bench_numbers(args.mib, "32", "--mib")
    if len(sizes) > 1:
        raise SystemExit("ckptconf bench reshard: --mib takes one size")
    mib = sizes[0]
    folder = args.dir or default_folder(2 * (mib << 20))
    shape = case_shape(mib)
    console.print(
        f"saving a float64 {shape[0]}x{shape[1]} tensor under one layout, loading it under "
        f"another, on a gloo world of the loading mesh's size, in {folder}..."
    )
    table = Table(
        title="resharding load of one tensor, best of 3 interleaved rounds: MiB the destination "
        "needs, MiB read from the data files, amplification (read / needed), seconds, "
        "the reference's speed-up (DCP's seconds / its own); 'unshared': the reference with "
        "share_reads=False (every rank reads what it needs itself)"
    )
    table.add_column("case", no_wrap=True)
    columns = (
        "needed",
        "read DCP",
        "read ref.",
        "ampl. DCP",
        "ampl. ref.",
        "ampl. unshared",
        "DCP (s)",
        "ref. (s)",
        "unshared (s)",
        "speed-up",
    )
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    for row in bench_reshard(mib, folder=folder):
        table.add_row(
            row.case,
            f"{row.needed / 2**20:.2f}",
            f"{row.read['dcp'] / 2**20:.2f}",
            f"{row.read['reference'] / 2**20:.2f}",
            f"{row.amplification('dcp'):.2f}x",
            f"{row.amplification('reference'):.2f}x",
            f"{row.amplification('reference-unshared'):.2f}x",
            f"{row.seconds['dcp']:.3f}",
            f"{row.seconds['reference']:.3f}",
            f"{row.seconds['reference-unshared']:.3f}",
            f"{row.speedup:.2f}x",
        )
    console.print(table)
    return 0


def _bench_plan(args: argparse.Namespace, console) -> int:
    from ckptconf.bench.plan import bench_plan
    from rich.table import Table

    worlds = tuple(int(x) for x in args.ranks.split(","))
    console.print(
        f"planning {args.tensors} row-sharded tensors + 1 replicated on {worlds} ranks..."
    )
    table = Table(title="create_global_plan, best of 2 (the same local plans for both)")
    columns = ["ranks", "chunks", "DCP (s)", "reference (s)", "reference speed-up"]

    def shown(value: float, text: str) -> str:
        return "not run" if value != value else text  # NaN: DCP not run on this world

    if args.wire:
        columns += ["DCP (un)pickling (s)", "reference (de)coding (s)", "speed-up with the wire"]
    if args.cached:
        columns += ["reference re-save, cached (s)", "fresh / cached"]
    for column in columns:
        table.add_column(column, justify="right")
    for row in bench_plan(
        worlds,
        tensors=args.tensors,
        wire=args.wire,
        dcp_max_ranks=args.dcp_max_ranks,
        cached=args.cached,
    ):
        cells = [
            str(row.ranks),
            str(row.chunks),
            shown(row.dcp_seconds, f"{row.dcp_seconds:.3f}"),
            f"{row.reference_seconds:.3f}",
            shown(row.dcp_seconds, f"{row.speedup:.2f}x"),
        ]
        if args.wire:
            cells += [
                shown(row.dcp_wire_seconds, f"{row.dcp_wire_seconds:.3f}"),
                f"{row.reference_wire_seconds:.3f}",
                shown(row.dcp_seconds, f"{row.wire_speedup:.2f}x"),
            ]
        if args.cached:
            cells += [f"{row.reference_cached_seconds:.4f}", f"{row.cached_speedup:.1f}x"]
        table.add_row(*cells)
    console.print(table)
    if args.load:
        _bench_load_plan(worlds, args.tensors, console)
    return 0


def _bench_load_plan(worlds: tuple[int, ...], tensors: int, console) -> None:
    from ckptconf.bench.plan import bench_load_plan
    from rich.table import Table

    console.print(f"planning the load of the same state on the same layout on {worlds} ranks...")
    table = Table(
        title="load planning, best of 2 (same metadata and destinations): the middle rank's "
        "local plan, the coordinator's global plan of R such plans"
    )
    columns = ("ranks", "chunks", "read items", "DCP local (s)", "reference local (s)")
    for column in (
        *columns,
        "local speed-up",
        "DCP global (s)",
        "reference global (s)",
        "shared-reads pass (s)",
    ):
        table.add_column(column, justify="right")
    for row in bench_load_plan(worlds, tensors=tensors):
        table.add_row(
            str(row.ranks),
            str(row.chunks),
            str(row.read_items),
            f"{row.dcp_local:.4f}",
            f"{row.reference_local:.4f}",
            f"{row.speedup:.2f}x",
            f"{row.dcp_global:.4f}",
            f"{row.reference_global:.4f}",
            f"{row.shared_reads:.4f}",
        )
    console.print(table)
