"""Evaluate a TDLM checkpoint offline: likelihood on an eval file and/or downstream tasks.

  python scripts/evaluate.py --model experiments/quick_test/checkpoints/checkpoint-300 \
      --tasks hellaswag,mmlu,arc_easy --limit 20 --likelihood --eval-file ../shared/data/wikitext-2-raw/wiki.test.raw
"""

import argparse
import json
import sys

from . import entry_point
from .arguments import positive_int, seed


def main(argv=None):
    from ..evaluation.runner import evaluate_checkpoint
    from ..evaluation.tasks import TASKS
    from ..runs import write_json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-lm-eval-tasks", metavar="DIR", default=None,
                        help="only write the local lm-eval task YAMLs for --tasks to DIR (for lm_eval --include_path)")
    parser.add_argument("--model", help="checkpoint folder (config.json with training_mode + tokenizer)")
    parser.add_argument("--tasks", default="", help=f"comma-separated: {', '.join(TASKS)}, mmlu_<subject>, "
                                                    "mmlu_5shot_<subject>")
    parser.add_argument("--limit", type=positive_int, default=None, help="documents per (sub)task")
    parser.add_argument("--mc-num", type=positive_int, default=128, help="Monte-Carlo samples per choice (diffusion)")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--likelihood", action="store_true", help="NLL (AR) / NELBO +- SE (diffusion) on --eval-file")
    parser.add_argument("--eval-file", default=None)
    parser.add_argument("--nelbo-samples", type=positive_int, default=32, help="t samples per block for the NELBO")
    parser.add_argument("--block-size", type=positive_int, default=None, help="default: max_position_embeddings")
    parser.add_argument("--max-blocks", type=positive_int, default=None)
    parser.add_argument("--exact-ordered", action="store_true", help="also the left-to-right exact NLL (diffusion)")
    parser.add_argument("--backend", choices=("native", "lm-eval"), default="native")
    parser.add_argument("--data-dir", default=None, help="benchmark data folder (default ../shared/data)")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--device", default=None)
    parser.add_argument("--output", default=None, help="results JSON path")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.write_lm_eval_tasks:
        from ..evaluation.tasks import lm_eval_task_names, write_lm_eval_tasks

        families, names = lm_eval_task_names(tasks or list(TASKS))
        write_lm_eval_tasks(args.write_lm_eval_tasks, families, args.data_dir)
        print(f"wrote lm-eval tasks to {args.write_lm_eval_tasks}: {', '.join(names)}")
        return names
    if not args.model:
        parser.error("--model is required")
    if args.likelihood and not args.eval_file:
        parser.error("--likelihood needs --eval-file")
    if not tasks and not args.likelihood:
        parser.error("nothing to do: give --tasks and/or --likelihood")
    result = evaluate_checkpoint(args.model, tasks, args.limit, args.mc_num, args.seed, args.likelihood,
                                 args.eval_file, None, args.nelbo_samples, args.block_size, args.max_blocks,
                                 args.exact_ordered, args.backend, args.data_dir, args.batch_size, args.device)
    summary = {k: v for k, v in result.items() if k != "environment"}
    print(json.dumps(summary, indent=2, default=str))
    if args.output:
        print(f"wrote {write_json(result, args.output)}")
    return result


cli = entry_point(main)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
