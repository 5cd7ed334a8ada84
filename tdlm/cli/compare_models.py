"""Compare a diffusion and an AR experiment side by side (best checkpoints, same eval data and tasks).

  python scripts/compare_models.py --dd quick_test --ar quick_test_ar --tasks hellaswag,arc_easy --limit 50 \
      --max-batches 4 --save-results
"""

import argparse
import sys
from pathlib import Path

from . import entry_point


def main(argv=None):
    from ..evaluation.comparison import compare_experiments, format_table, save_comparison

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dd", required=True,
                        help="diffusion (masked or block) experiment id (under --experiments-dir) or folder")
    parser.add_argument("--ar", required=True, help="autoregressive experiment id or folder")
    parser.add_argument("--experiments-dir", default="experiments")
    parser.add_argument("--eval-file", default=None, help="default: the dd experiment's data.eval_files")
    parser.add_argument("--max-batches", type=int, default=None, help="eval batches (of --batch-size blocks)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tasks", default="hellaswag", help="comma-separated downstream tasks ('' for none)")
    parser.add_argument("--limit", type=int, default=50, help="documents per (sub)task")
    parser.add_argument("--mc-num", type=int, default=32)
    parser.add_argument("--nelbo-samples", type=int, default=16)
    parser.add_argument("--sampling-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--save-results", action="store_true", help="write JSON, Markdown and an eval-loss PNG")
    parser.add_argument("--output-dir", default="research/comparisons")
    parser.add_argument("--output-name", default=None, help="default: <dd>_vs_<ar>")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    comparison = compare_experiments(args.dd, args.ar, args.experiments_dir, args.eval_file, tasks, args.limit,
                                     args.max_batches, args.batch_size, args.mc_num, args.nelbo_samples, args.seed,
                                     args.sampling_tokens, args.device)
    print(format_table(comparison))
    if args.save_results:
        name = args.output_name or f"{Path(args.dd).name}_vs_{Path(args.ar).name}"
        for kind, path in save_comparison(comparison, args.output_dir, name).items():
            print(f"wrote {kind}: {path}")
    return comparison


cli = entry_point(main)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
