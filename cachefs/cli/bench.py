"""`cachefs bench [PATH]`: measure what cachefs does to reads on this machine.

Without PATH, the built-in default: a local HTTP store (nginx, or a small
built-in server when nginx is missing) serving generated data, mounted in a
temporary directory with a fresh cache, measured, and everything removed.
With PATH (a file or directory inside a cachefs mount), those files are
measured through that mount. See cachefs/benchmark/runner.py for the modes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .argtypes import whole_number

if TYPE_CHECKING:  # the benchmark's modules load only when the command runs
    from cachefs.benchmark.model import Results
    from cachefs.benchmark.runner import BenchOptions

DEFAULT_JSON = "cachefs-bench.json"
DEFAULT_CHART = "cachefs-bench.png"



def add_parsers(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="measure cold, warm, passthrough, hot and native reads; "
                                     "print a table, write JSON and a PNG chart")
    b.add_argument("path", nargs="?", type=Path, metavar="PATH",
                   help="files inside a cachefs mount to measure (default: a built-in local store "
                        "with generated data)")
    b.add_argument("--big-size", type=whole_number(1), default=256, metavar="MiB",
                   help="built-in run: size of the large file (default 256)")
    b.add_argument("--small-count", type=whole_number(1), default=500, metavar="N",
                   help="number of small files (default 500; with PATH: at most this many)")
    b.add_argument("--small-size", type=whole_number(1), default=16, metavar="KiB",
                   help="built-in run: size of each small file (default 16)")
    b.add_argument("--runs", type=whole_number(1), default=3, metavar="N",
                   help="repetitions of every mode; figures are medians (default 3)")
    b.add_argument("--rand-count", type=whole_number(1), default=2000, metavar="N",
                   help="4 KiB random reads per measurement (default 2000)")
    b.add_argument("--seed", type=int, default=1, help="seed of the random offsets (default 1)")
    b.add_argument("--evict", action="store_true",
                   help="with PATH: evict the files from the cache to measure cold reads "
                        "(they are fetched again); without it the cold mode is skipped")
    b.add_argument("--server", choices=["auto", "nginx", "builtin"], default="auto",
                   help="built-in run: the local store (default: nginx if installed)")
    b.add_argument("--json", type=Path, default=Path(DEFAULT_JSON), metavar="FILE",
                   help=f"where to write every figure and run (default ./{DEFAULT_JSON})")
    b.add_argument("--chart", type=Path, default=Path(DEFAULT_CHART), metavar="FILE",
                   help=f"where to draw the PNG chart (default ./{DEFAULT_CHART})")
    b.add_argument("--quiet", action="store_true", help="no progress on stderr")
    b.set_defaults(func=cmd_bench)


def _title(options: BenchOptions, results: Results) -> str:
    runs = f"median of {options.runs} run{'s' if options.runs > 1 else ''} (min, max)"
    facts = results.facts
    if options.path is None:
        return (f"cachefs bench: {options.big_mib} MiB file, {facts['small_count']} x "
                f"{options.small_kib} KiB files, {facts['server']} on loopback; {runs}")
    return (f"cachefs bench on {options.path}: {facts['big']} ({facts['big_size'] / 1e6:,.1f} MB), "
            f"{facts['small_count']} small files; {runs}")


def cmd_bench(args: argparse.Namespace) -> int:
    # Here, not at the top: every other command would load the benchmark too.
    from cachefs.benchmark import chart, report
    from cachefs.benchmark.runner import BenchOptions, run_default, run_on_path
    from cachefs.benchmark.system import BenchError, StatusLine, sigterm_as_interrupt

    options = BenchOptions(
        path=args.path, big_mib=args.big_size, small_count=args.small_count,
        small_kib=args.small_size, runs=args.runs, rand_count=args.rand_count, seed=args.seed,
        allow_evict=args.evict, server=args.server,
    )
    progress = StatusLine(quiet=args.quiet)
    sigterm_as_interrupt()
    started = datetime.datetime.now().astimezone()
    load_start = os.getloadavg()[0]
    try:
        results = run_on_path(options, progress) if options.path else run_default(options, progress)
    except KeyboardInterrupt:
        progress.done()
        print("cachefs bench: interrupted; cleaned up", file=sys.stderr)
        return 130
    except BenchError as e:
        progress.done()
        print(f"cachefs bench: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # nginx failing to start, a mount refused, ...
        progress.done()
        print(f"cachefs bench: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    load = (load_start, os.getloadavg()[0])
    progress.step("writing the chart")
    title = _title(options, results)
    config = {"path": str(options.path) if options.path else None, "big_size_mib": options.big_mib,
              "small_count": options.small_count, "small_size_kib": options.small_kib,
              "runs": options.runs, "rand_count": options.rand_count, "seed": options.seed,
              "evict": options.allow_evict, "server": options.server, "mb": 1_000_000}
    report.write_json(report.document(results, config, started, load), args.json)
    chart.draw(results, title, args.chart)
    progress.done()
    print(report.render(results, title))
    print(f"load average (1 min): {load[0]:.2f} at start, {load[1]:.2f} at end, "
          f"{os.cpu_count()} CPUs; other load makes the figures noisy")
    print(f"JSON:  {args.json.resolve()}")
    print(f"chart: {args.chart.resolve()}")
    return 0
