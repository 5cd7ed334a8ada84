"""Four gradient heatmaps (corruption level vs time, gradient ratios, health matrix, dashboard) of a run.

  python scripts/gradient_heatmaps.py quick_test            # experiment id under experiments/ (or a folder)
  python scripts/gradient_heatmaps.py entity/project/run_id # W&B run (online only)
"""

import argparse
import sys

from . import entry_point


def main(argv=None):
    from ..evaluation.heatmaps import NoGradientMetricsError, generate_heatmaps

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="experiment id/folder or W&B run path")
    parser.add_argument("--experiments-dir", default="experiments")
    parser.add_argument("--output-root", default="research/heatmaps")
    args = parser.parse_args(argv)
    try:
        paths = generate_heatmaps(args.run, args.experiments_dir, args.output_root)
    except NoGradientMetricsError as error:
        parser.exit(2, f"error: {error}\n")
    for path in paths:
        print(f"wrote {path}")
    return paths


cli = entry_point(main)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
