"""Run a paper table's grid of pruning runs, skipping finished cells.

    python experiments/run_table.py table1_resnet56 --out runs/table1 [--only 'TPP__*'] [--data-dir DIR]
    python experiments/run_table.py table1_resnet56 --out runs/table1 --list   # command lines for a scheduler

Configs are the modules of isotpp/studies/table_configs/ (or a path). Each cell is a pruning run in
OUT/cells/<cell>; rerunning continues where it stopped.
"""

import argparse
import sys

import isotpp
from isotpp.errors import UserError
from isotpp.preemption import Preempted
from isotpp.studies.paper_tables import commands, load_spec, run_table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="a config name in isotpp/table_configs (or a path)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default=None, help="glob on cell names, e.g. 'TPP__pr0.9*'")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--list", action="store_true", help="print the unfinished cells' command lines and stop")
    args = ap.parse_args(argv)
    isotpp.configure_cpu()  # before the runs start JAX
    try:
        spec = load_spec(args.config)
        if args.list:
            print("\n".join(commands(spec, args.out, only=args.only, data_dir=args.data_dir)))
            return 0
        status = run_table(spec, args.out, only=args.only, data_dir=args.data_dir, log=print)
    except UserError as e:
        print(f"run_table: error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:
        print(f"run_table: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{len(status['done'])} finished before, {len(status['ran'])} ran, {len(status['failed'])} failed")
    return 1 if status["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
