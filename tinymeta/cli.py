"""The ``tinymeta`` command.

    tinymeta gradcheck [--sizes 3,8,6,4] [--seed 0] [--tol 1e-6]
"""
from __future__ import annotations

import argparse
import sys


def _sizes(text: str) -> tuple:
    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be comma-separated integers like 3,8,6,4, got {text!r}")
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes needs at least two positive widths, got {text!r}")
    return sizes


def _cmd_gradcheck(args) -> int:
    from . import gradcheck

    rows = gradcheck.engine_report(sizes=args.sizes, seed=args.seed, tol=args.tol)
    header = ("quantity", "activation", "loss", "dtype", "backend", "rel. error", "tolerance", "result")
    table = [header] + [(r.quantity, r.activation, r.loss, r.dtype, r.backend, f"{r.rel_error:.2e}",
                         f"{r.tol:.0e}", "pass" if r.passed else "FAIL") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for k, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
    failed = sum(not r.passed for r in rows)
    print(f"\n{len(rows) - failed} of {len(rows)} checks passed (sizes {','.join(map(str, args.sizes))}, seed {args.seed})")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinymeta", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("gradcheck", help="check every derivative of the engine against finite differences",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=_sizes, default=(3, 8, 6, 4), help="layer widths of the test nets")
    p.add_argument("--seed", type=int, default=0, help="seed of the random nets and points")
    p.add_argument("--tol", type=float, default=1e-6, help="relative tolerance against finite differences")
    p.set_defaults(run=_cmd_gradcheck)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
