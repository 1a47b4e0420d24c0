"""python -m bench.report.site [RESULTS_DIR]: write the results site (default: $RESULTS_DIR, else results)."""
import argparse
import os
import sys

from . import write_site


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report.site", description=__doc__)
    p.add_argument("results_dir", nargs="?", default=os.environ.get("RESULTS_DIR", "results"))
    args = p.parse_args(argv)
    if not os.path.isdir(args.results_dir):
        print(f"error: results folder {args.results_dir!r} does not exist", file=sys.stderr)
        return 2
    for path in write_site(args.results_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
