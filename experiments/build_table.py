"""Build a paper table (markdown) from a run directory of experiments/run_table.py.

    python experiments/build_table.py table1_resnet56 --out runs/table1 [--metric final_acc] [--write table.md]
"""

import argparse
import sys

from isotpp.errors import UserError
from isotpp.studies.paper_tables import build_table, load_spec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metric", choices=("best_acc", "final_acc"), default="best_acc")
    ap.add_argument("--write", default=None, help="also write the table to this file")
    args = ap.parse_args(argv)
    try:
        table = build_table(load_spec(args.config), args.out, metric=args.metric)
        if args.write:
            from isotpp.storage.atomic import write_text

            write_text(args.write, table + "\n")
    except UserError as e:
        print(f"build_table: error: {e}", file=sys.stderr)
        return 2
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
