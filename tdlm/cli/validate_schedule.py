"""Compare the cosine and linear sampling step schedules of a diffusion checkpoint on held-out text
(fraction of masked tokens recovered, ground-truth NLL along the sampling path); writes JSON, a Markdown
table and a PNG plot (see tdlm/schedule_validation.py).

    python scripts/validate_schedule.py --list
    python scripts/validate_schedule.py --test <experiment id | experiment folder | checkpoint folder> \
        --steps 8,16,32,64 --num-samples 64 --output-dir results/schedule_validation
"""

import argparse
import sys

from ..evaluation.schedule_validation import MASK_MODES, list_experiments, markdown_table, run_validation
from . import entry_point


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", help="experiment id/folder, its configs/config.yaml, or a checkpoint folder")
    parser.add_argument("--list", action="store_true", help="list experiments with checkpoints and exit")
    parser.add_argument("--experiments-dir", default="experiments")
    parser.add_argument("--steps", default="8,16,32,64", help="comma-separated step counts")
    parser.add_argument("--num-samples", type=int, default=64, help="held-out blocks")
    parser.add_argument("--length", type=int, default=None, help="block length (default: max_position_embeddings)")
    parser.add_argument("--mask", choices=MASK_MODES, default="second_half", help="what to mask in each block")
    parser.add_argument("--eval-file", default=None, help="held-out text (default: the experiment's eval_files, "
                                                           "else ../shared/data/wikitext-2-raw/wiki.test.raw)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output-dir", default=None, help="default: <experiment>/results")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)

    if args.list:
        found = list_experiments(args.experiments_dir)
        if not found:
            print(f"no experiments with checkpoints under {args.experiments_dir}/")
        for entry in found:
            print(f"{entry['experiment_id']}\t{entry['training_mode']}\t{entry['checkpoint']}")
        return
    if not args.test:
        parser.error("pass --test CONFIG_OR_CHECKPOINT (or --list)")
    steps = tuple(int(s) for s in args.steps.split(","))
    result = run_validation(args.test, steps, args.num_samples, args.output_dir, args.mask, args.length,
                            args.eval_file, args.batch_size, args.device, args.experiments_dir)
    print(markdown_table(result["rows"]))
    for kind, path in result["paths"].items():
        print(f"wrote {kind}: {path}")


cli = entry_point(main)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
