"""``python -m bench all`` regenerates every table of BENCHMARKS.md from real runs on this machine.

    python -m bench all            # everything, about 45 minutes on 2 cores
    python -m bench all --quick    # the same tables from short runs (about 12 minutes): a smoke, not a result
    python -m bench pipeline | variants | latency | recovery | locust | paths | fulfilment | ledger | lookups | goals

Each part starts the local servers if needed, ends its runs with the invariants checked, and rewrites only its
own section. The exit code is 1 if any part failed (a broken invariant is a failure, never a number).
"""

from __future__ import annotations

import sys
import time

PARTS = ("pipeline", "variants", "latency", "recovery", "locust", "paths", "fulfilment", "ledger", "lookups", "goals")


def _args(part: str, quick: bool) -> list[str]:
    if part == "pipeline":
        return ["--orders", "5000", "--reps", "1", "--profile"] if quick else ["--profile"]
    if part == "variants":
        return ["--orders", "3000", "--reps", "1"] if quick else []
    if part == "latency":
        return ["--quick"] if quick else []
    if part == "recovery":
        return ["--orders", "3000"] if quick else []
    if part == "locust":
        return ["--rate", "100k,10x,100x", "--duration", "20s" if quick else "60s", "--markdown"]
    if part == "goals":
        return ["--orders", "20000"] if quick else []
    if part == "paths":
        return ["--lists", "50"] if quick else []
    if part == "fulfilment":
        return ["--orders", "2000", "--reps", "1"] if quick else []
    if part == "ledger":
        return ["--orders", "5000", "--reps", "1", "--stage-reps", "1"] if quick else []
    if part == "lookups":
        return ["--orders", "2000", "--reps", "1"] if quick else []
    raise ValueError(part)


def _main(part: str) -> object:
    if part == "pipeline":
        from bench.pipeline import main
    elif part == "variants":
        from bench.variants import main
    elif part == "latency":
        from bench.latency import main
    elif part == "recovery":
        from bench.recovery import main
    elif part == "goals":
        from bench.goals import main
    elif part == "paths":
        from bench.paths import main
    elif part == "fulfilment":
        from bench.fulfilment import main
    elif part == "ledger":
        from bench.ledger import main
    elif part == "lookups":
        from bench.lookups import main
    else:
        from bench.locust.run import main
    return main


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    part, rest = argv[0], argv[1:]
    if part in PARTS:
        return int(_main(part)(rest) or 0)  # type: ignore[operator]
    if part != "all":
        print(f"unknown part {part!r}: one of all, {', '.join(PARTS)}", file=sys.stderr)
        return 2
    quick = "--quick" in rest
    failed = []
    for name in PARTS:
        started = time.monotonic()
        print(f"== bench {name}", file=sys.stderr, flush=True)
        try:
            code = int(_main(name)(_args(name, quick)) or 0)  # type: ignore[operator]
        except SystemExit as exc:  # argparse errors and the like
            code = int(exc.code or 0)
        except Exception as exc:
            print(f"bench {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            code = 1
        print(f"== bench {name}: exit {code} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
