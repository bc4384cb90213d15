"""Run every benchmark and print one markdown table.

    python -m bench.run                     # everything (~10 min on 2 cores)
    python -m bench.run --quick             # tiny sizes: proves each one runs (CI)
    python -m bench.run --only polling,memory
    python -m bench.run --only pods         # real pods on the local node (~6 min)
    python -m bench.run --out results.md    # also write environment + table to a file
    python -m bench.run --only scale --scale 3000 --baseline-ref main
                                            # issue 15 (bench/scale.py): cut short, and
                                            #   ratios against main's operator

Exit status 1 when a benchmark failed (an 'error' row); a goal that is missed is a
result, not a failure, and a missing optional package is a 'skipped' row.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import dataplane, memory, pods, polling, reconcile, scale, scaling
from .common import Row, RunFn, environment, guarded, log, table

BENCHMARKS: dict[str, RunFn] = {
    "polling": polling.run,
    "dataplane": dataplane.run,
    "memory": memory.run,
    "reconcile": reconcile.run,
    "scaling": scaling.run,
    # Issue 15: 1,000 queues/groups Ready, at rest with 1,000 and 10,000 (--scale) each.
    "scale": scale.run,
    # Real pods on the local node (`agentqueue dev up`): reuses a running node stack.
    "pods": pods.run,
}


def parse_only(values: Sequence[str] | None) -> list[str]:
    if not values:
        return list(BENCHMARKS)
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(BENCHMARKS)}")
    return names


def report(env: dict[str, str], rows: Sequence[Row], quick: bool, seconds: float) -> str:
    lines = [f"- {k}: {v}" for k, v in env.items()]
    mode = "quick (sizes too small for the numbers to mean anything)" if quick else "full"
    lines.append(f"- mode: {mode}; took {seconds:.0f} s")
    return "\n".join(lines) + "\n\n" + table(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke run)")
    parser.add_argument("--only", action="append", metavar="NAME[,NAME]",
                        help=f"run only these ({', '.join(BENCHMARKS)})")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    # `make bench` grows to 2,000 + 2,000 (~8 min); the 10,000 run is its own command
    # (`python -m bench.scale`, or --scale 10000 here): docs/benchmarks.md.
    parser.add_argument("--scale", type=int, default=2_000, metavar="N",
                        help="scale: queues and groups at scale (default %(default)s; "
                             "python -m bench.scale defaults to 10,000)")
    parser.add_argument("--baseline-ref", metavar="REF",
                        help="scale: also run its 1,000 burst with the operator of this git "
                             "ref (ratios in the table)")
    args = parser.parse_args(argv)
    names = parse_only(args.only)
    benchmarks = dict(BENCHMARKS)
    benchmarks["scale"] = functools.partial(scale.run, scale=args.scale,
                                            baseline_ref=args.baseline_ref)
    env = environment()
    started = time.monotonic()
    rows: list[Row] = []
    for name in names:
        log(f"== {name}")
        t0 = time.monotonic()
        rows.extend(guarded(name, benchmarks[name], args.quick))
        log(f"== {name} done in {time.monotonic() - t0:.0f}s")
    text = report(env, rows, args.quick, time.monotonic() - started)
    print(text, flush=True)
    if args.out:
        args.out.write_text(text)
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
