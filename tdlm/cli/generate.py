"""Print samples from a TDLM checkpoint: diffusion (`diffusion_generate`) or AR (`generate()`), as the
checkpoint's config.training_mode says. The tokenizer is loaded from the checkpoint folder.

    python scripts/generate.py --model experiments/<id>/checkpoints/checkpoint-300 --prompt "The game" --num-steps 32
    python scripts/generate.py --model PATH --prompt "" --num-samples 4 --max-new-tokens 64   # unconditional
    python scripts/generate.py --model PATH --infill "The <|mask|>*4 of the city was <|mask|>*8 ."  # fill gaps
"""

import argparse
import sys

from ..generation_tdlm import REMASKING_RULES
from ..objectives import objective_for
from ..runs import load_checkpoint
from ..schedules import STEP_SCHEDULES
from ..text_generation import generate_text, infill_text
from . import entry_point
from .arguments import non_negative_float, positive_int, probability, seed, unit_interval

DIFFUSION_OPTIONS = ("num_steps", "step_schedule", "remasking", "confidence_threshold", "block_length", "cfg_scale")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder (config.json, weights, tokenizer)")
    parser.add_argument("--prompt", action="append", default=None, help="prompt text; repeat for a batch; '' = none")
    parser.add_argument("--infill", metavar="TEXT", default=None,
                        help="diffusion only: fill the gaps of TEXT, keeping every other token; write each missing "
                             "token as <|mask|> (or --mask-placeholder), N of them as <|mask|>*N")
    parser.add_argument("--mask-placeholder", metavar="STR", default=None,
                        help="what marks a gap in --infill TEXT (default: the tokenizer's mask token, <|mask|>)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None,
                        help="default: 64, or what fits the model's max_position_embeddings after the prompt")
    parser.add_argument("--num-samples", type=positive_int, default=1, help="samples per prompt")
    parser.add_argument("--num-steps", type=positive_int, default=None,
                        help="diffusion steps (default: generation_config)")
    parser.add_argument("--step-schedule", choices=tuple(STEP_SCHEDULES), default=None)
    parser.add_argument("--remasking", choices=tuple(REMASKING_RULES), default=None)
    parser.add_argument("--confidence-threshold", type=unit_interval, default=None)
    parser.add_argument("--block-length", type=positive_int, default=None)
    parser.add_argument("--cfg-scale", type=non_negative_float, default=None,
                        help="classifier-free guidance (LLaDA); 0 = off")
    parser.add_argument("--temperature", type=non_negative_float, default=None)
    parser.add_argument("--top-k", type=positive_int, default=None)
    parser.add_argument("--top-p", type=probability, default=None)
    parser.add_argument("--stop-at-eos", action="store_true")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (samples; diffusion steps)")
    args = parser.parse_args(argv)

    if args.infill is not None and (args.prompt is not None or args.max_new_tokens is not None):
        parser.error("--infill fills the gaps of its text: it takes no --prompt or --max-new-tokens")
    if args.mask_placeholder is not None and args.infill is None:
        parser.error("--mask-placeholder marks the gaps of --infill TEXT; pass --infill")
    model, tokenizer = load_checkpoint(args.model, args.device)
    options = {k: v for k, v in vars(args).items()
               if k in DIFFUSION_OPTIONS + ("temperature", "top_k", "top_p") and v is not None}
    objective = objective_for(model.config)
    if objective.corrupts:
        if args.stop_at_eos:
            options["stop_at_eos"] = True
    else:
        ignored = sorted(k for k in options if k in DIFFUSION_OPTIONS)
        if ignored:
            parser.error(f"{args.model} is an autoregressive checkpoint; {ignored} apply to diffusion models only")
    if args.infill is not None:
        if not model.config.is_diffusion:
            parser.error(f"{args.model} is a {model.config.training_mode} checkpoint; --infill needs a (masked) "
                         f"diffusion model")
        texts = infill_text(model, tokenizer, args.infill, args.mask_placeholder, args.num_samples, args.seed,
                            show_progress=not args.quiet, **options)
    else:
        prompts = args.prompt if args.prompt is not None else [""]
        texts = generate_text(model, tokenizer, prompts, args.max_new_tokens, args.num_samples, args.seed,
                              show_progress=not args.quiet, **options)
    for i, text in enumerate(texts):
        print(f"--- sample {i} ({model.config.training_mode}, {objective.sampler}) ---")
        print(text)


cli = entry_point(main)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
