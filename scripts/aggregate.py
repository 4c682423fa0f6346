"""Turn a Hydra sweep folder into one CSV (a row per job) and plots of the swept metrics.

    python scripts/aggregate.py results/sweeps/default/<time>
    python scripts/aggregate.py SWEEP_DIR --out /tmp/sweep.csv --plots /tmp/plots --group-by model.activation
    python scripts/aggregate.py SWEEP_DIR --no-plots
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testbed.tracking.aggregate import SweepError, aggregate  # noqa: E402

DESCRIPTION = """\
Turn a sweep (a Hydra multirun folder: job folders 0/, 1/, ... each with .hydra/overrides.yaml,
config.yaml, metrics.jsonl and, once finished, summary.json) into one tidy CSV and PNG plots.

CSV (default SWEEP_DIR/sweep.csv), one row per job, columns in this order:
  job                 the job folder's name (0, 1, ...)
  <override keys>     one column per override key of the sweep, the value as typed
  status              completed, diverged or failed (from summary.json); incomplete when the job
                      has no summary.json (killed, or still running)
  <summary keys>      summary.json flattened: steps, wall_s, final/*, diverged_at_step,
                      last_finite_loss, diverged_loss, cmp/*_max, then the rest
  last/<key>          the last logged metrics row's scalars (step, train/loss, test/acc, cmp/*, ...;
                      per-layer keys such as grad_norm/s/L1 left out)

Plots (default SWEEP_DIR/plots/):
  <metric>_vs_<key>.png           for each swept key with > 1 value (seed keys excepted: they are
                                  averaged over): the final metric (final/test_acc, or
                                  final/train_loss without accuracy) against the key, one line per
                                  value of one other swept key (the one with fewest values, or
                                  --group-by), mean +- std over the rest; log x for positive values
                                  spanning > 1 decade; diverged jobs as x markers, not averaged
  grad_norm_s_by_layer_step0.png  ||dL/ds^l|| at step 0 against layer l, log y, one line per group
                                  of jobs differing only by seed (keys that change nothing at step 0,
                                  such as optim.lr, merged); diverged jobs dotted with x markers

Exit status: 0 done; 2 the folder is missing or holds no job folders, or a bad option."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aggregate", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", type=Path, help="the sweep's folder")
    parser.add_argument("--out", type=Path, help="where the CSV goes (default: SWEEP_DIR/sweep.csv)")
    parser.add_argument("--plots", type=Path, metavar="DIR",
                        help="where the plots go (default: SWEEP_DIR/plots)")
    parser.add_argument("--no-plots", action="store_true", help="write the CSV only")
    parser.add_argument("--metric", help="the summary key to plot "
                        "(default: final/test_acc, else final/train_loss)")
    parser.add_argument("--group-by", metavar="KEY", help="the swept key drawn as one line per value "
                        "(default: the other non-seed swept key with fewest values)")
    args = parser.parse_args(argv)
    try:
        report = aggregate(args.sweep_dir, out=args.out, plots_dir=args.plots, plots=not args.no_plots,
                           metric=args.metric, group_by=args.group_by)
    except SweepError as error:
        print(f"aggregate: error: {error}", file=sys.stderr)
        return 2
    print(report.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
