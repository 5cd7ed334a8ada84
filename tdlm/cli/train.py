"""Train, resume or evaluate a TDLM experiment from a YAML config.

    python scripts/train.py --config configs/quick_test.yaml
    accelerate launch scripts/train.py --config configs/example_config.yaml training.learning_rate=3e-4
    python scripts/train.py --resume experiments/<id>            # continue from the latest checkpoint
    python scripts/train.py --eval-only --resume experiments/<id>/checkpoints/checkpoint-500
"""

import argparse
import sys

from ..config import load_config
from ..runs import resume_point
from . import entry_point, require_launched_processes


def main(argv=None):
    require_launched_processes()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (default with --resume: the experiment's saved config)")
    parser.add_argument("--resume", help="checkpoint folder, or experiment folder (= its latest checkpoint)")
    parser.add_argument("--experiment-id", help="experiment folder name (default tdlm_YYYYMMDD_HHMMSS)")
    parser.add_argument("--output-dir", default="experiments", help="where experiment folders live")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the --resume checkpoint and exit")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run of --experiment-id first")
    parser.add_argument("--allow-inexact-resume", action="store_true",
                        help="resume even from a checkpoint without optimizer / scheduler / RNG state")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    args = parser.parse_args(argv)

    from ..training import run_evaluation, run_training

    config_path = args.config
    if config_path is None and args.resume:
        _, experiment = resume_point(args.resume)
        if experiment is not None and experiment.config_path.is_file():
            config_path = experiment.config_path
    if config_path is None and not args.eval_only:
        parser.error("--config is required (or --resume an experiment folder)")
    if args.eval_only and not args.resume:
        parser.error("--eval-only needs --resume CHECKPOINT")
    config = load_config(config_path, args.overrides) if config_path else None
    if args.eval_only:
        return run_evaluation(config, args.resume, args.output_dir)
    return run_training(config, args.experiment_id, args.output_dir, args.resume, overwrite=args.overwrite,
                        allow_inexact_resume=args.allow_inexact_resume)

cli = entry_point(main)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
