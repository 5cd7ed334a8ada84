"""When does masked diffusion beat AR? Train each objective at several model sizes on nested random budgets of unique
tokens for many epochs, each at its best schedule (warmup-stable-decay with cool-down branches), and compare their
best held-out losses with standard errors clustered by document (see tdlm/research/study.py).

    python scripts/data_constrained_study.py --config configs/study_stdlib_cpu.yaml --unique-tokens 25k,100k \\
        --sizes 32x2,64x3,128x3 --output-dir research/study_stdlib_cpu

An interrupted study continues where it stopped when run again with the same --output-dir (finished arms are read,
an unfinished one resumes from its last cool-down branch). Arms may run in parallel processes on one --output-dir.
"""

import argparse
import sys
from pathlib import Path

from ..config import load_config
from ..research.study import OBJECTIVES, run_study
from ..research.study_report import format_markdown, regenerate
from ..runs import default_experiment_id
from . import entry_point


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="experiment YAML: model, training, data.prepared (train/eval)")
    parser.add_argument("--report", metavar="DIR", help="only regenerate DIR's tables and figures from its study.json")
    parser.add_argument("--unique-tokens", default="25k,100k", help="budgets: token counts (25k, 0.4M, 100000)")
    parser.add_argument("--sizes", default="32x2,64x3,128x3", help="model sizes HIDDENxLAYERS (heads of 16 dims)")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--max-epochs", type=int, default=300)
    parser.add_argument("--cooldown", type=float, default=0.15, help="cool-down length as a fraction of the epochs")
    parser.add_argument("--patience", type=int, default=2,
                        help="stop an arm after this many branches in a row worse than its best by > 2 SE")
    parser.add_argument("--selection-samples", type=int, default=4, help="NELBO draws per block when selecting")
    parser.add_argument("--report-samples", type=int, default=8, help="NELBO draws per block when reporting")
    parser.add_argument("--extra-seeds", type=int, default=1,
                        help="more seeds (init, data order, documents) of each objective's best size at --extra-at")
    parser.add_argument("--extra-at", default=None, help="the budget of the extra seeds and dropout arms (default: "
                                                         "the first of --unique-tokens)")
    parser.add_argument("--dropout", type=float, default=0.1,
                        help="a dropout arm of each objective's best size at --extra-at (0: none)")
    parser.add_argument("--gen-samples", type=int, default=16,
                        help="samples per best arm for gen-PPL / unigram entropy (0: no sample-quality stage)")
    parser.add_argument("--gen-steps", type=int, default=128, help="diffusion sampling steps for those samples")
    parser.add_argument("--scorer-tokens", type=int, default=500_000,
                        help="training tokens of the gen-PPL scorer (documents no arm saw)")
    parser.add_argument("--sample-quality-only", action="store_true",
                        help="train nothing: score the samples of the arms that have finished (and write the report)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the document shuffle that makes budgets")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output-dir", default=None, help="default experiments/study_<timestamp>")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    if args.report:
        study = regenerate(args.report)
        print(format_markdown(study))
        return
    if not args.config:
        parser.error("--config is required (or --report DIR)")

    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: {args.threads} is not allowed; it must be >= 1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = load_config(args.config, args.overrides)
    output = args.output_dir or str(Path("experiments") / f"study_{default_experiment_id()}")
    study = run_study(config, args.unique_tokens, args.sizes, output,
                      objectives=[o.strip() for o in args.objectives.split(",")], max_epochs=args.max_epochs,
                      cooldown=args.cooldown, patience=args.patience, selection_samples=args.selection_samples,
                      report_samples=args.report_samples, extra_seeds=args.extra_seeds, dropout=args.dropout,
                      data_seed=args.data_seed, extra_at=args.extra_at,
                      gen_samples=args.gen_samples, gen_steps=args.gen_steps, scorer_tokens=args.scorer_tokens,
                      train=not args.sample_quality_only,
                      argv=sys.argv if argv is None else argv)
    print(format_markdown(study))
    print(f"written: {output}/study.json, study.md and figures ({len(study['arms'])} arms)")


cli = entry_point(main)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
