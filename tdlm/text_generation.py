"""Text in, text out: sample from a checkpoint folder with the sampler its objective calls for (`Objective.sample`).

Diffusion and block-diffusion checkpoints use `diffusion_generate` (defaults from the checkpoint's
generation_config.json); autoregressive ones use the stock KV-cached `generate()`. `infill_text` fills the gaps of a
text (masked diffusion only).
"""

import re

import torch
from tqdm.auto import tqdm

from .objectives import objective_for

DEFAULT_NEW_TOKENS = 64


def fit_new_tokens(model, prompt_lengths) -> int:
    """The default number of new tokens: DEFAULT_NEW_TOKENS, or fewer where the longest prompt leaves less room
    before the model's max_position_embeddings (a quick-start model has only 64 positions)."""
    limit, longest = model.config.max_position_embeddings, max(prompt_lengths, default=0)
    if longest >= limit:
        raise ValueError(f"the prompt has {longest} tokens, no room for new ones within the model's "
                         f"max_position_embeddings={limit}; use a shorter prompt")
    return min(DEFAULT_NEW_TOKENS, limit - longest)


def generate_text(model, tokenizer, prompts, max_new_tokens=None, num_samples=1, seed=0, show_progress=False,
                  **options) -> list[str]:
    """`num_samples` continuations of every prompt ("" = unconditional), decoded with the prompt;
    `max_new_tokens=None` fits the default to the model (`fit_new_tokens`).

    Each prompt's samples are one batch seeded with `seed`, so a prompt's samples do not depend on the other prompts.
    `show_progress`: one bar, over a single prompt's diffusion steps, else over the samples.
    `options` go to `diffusion_generate` (num_steps, step_schedule, remasking, confidence_threshold,
    block_length, temperature, top_k, top_p, stop_at_eos) or, for AR models, to `generate()`
    (temperature, top_k, top_p; do_sample follows temperature > 0).
    """
    objective = objective_for(model.config)
    encoded = [objective.prompt(model.config, tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    if max_new_tokens is None:
        max_new_tokens = fit_new_tokens(model, [len(ids) for ids in encoded])
    texts = []
    # one bar: a single prompt's diffusion steps, else the samples (two nested bars leave escape codes in logs)
    step_bar = show_progress and model.config.uses_mask_token and len(prompts) == 1
    with tqdm(total=len(prompts) * num_samples, desc="samples", unit="sample",
              disable=not show_progress or step_bar) as bar:
        for ids in encoded:
            out = objective.sample(model, ids, num_samples, max_new_tokens, seed, step_bar, dict(options))
            texts += tokenizer.batch_decode(out, skip_special_tokens=True)
            bar.update(num_samples)
    return texts


def infill_ids(tokenizer, text: str, placeholder: str | None = None) -> list[int]:
    """Token ids of `text` with every `placeholder` (default: the tokenizer's mask token) as one mask token and
    `placeholder*N` as N of them."""
    placeholder = placeholder or tokenizer.mask_token
    pieces = re.split(rf"{re.escape(placeholder)}(?:\*(\d+))?", text)
    if len(pieces) == 1:
        raise ValueError(f"--infill text has no gap to fill: write each missing token as {placeholder} "
                         f"(or {placeholder}*N for N tokens)")
    ids = []
    for index, piece in enumerate(pieces):
        if index % 2 == 0:  # text; re.split puts each gap's N (None without *N) between the texts
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
        else:
            ids += [tokenizer.mask_token_id] * int(piece or 1)
    return ids


def infill_text(model, tokenizer, text: str, placeholder: str | None = None, num_samples: int = 1, seed: int = 0,
                show_progress: bool = False, **options) -> list[str]:
    """`num_samples` versions of `text` with its gaps (`infill_ids`) filled by a masked diffusion model; every other
    token is kept. `options` go to `diffusion_generate`."""
    if not model.config.is_diffusion:
        raise ValueError("infilling needs a masked diffusion checkpoint; an autoregressive (or block-diffusion) model "
                         "continues a prompt")
    ids = infill_ids(tokenizer, text, placeholder)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    input_ids = torch.tensor([ids] * num_samples, device=model.device)
    out = model.diffusion_generate(input_ids, max_new_tokens=None, generator=generator, show_progress=show_progress,
                                   **options)
    return tokenizer.batch_decode(out, skip_special_tokens=True)
