"""Text in, text out: sample from a checkpoint folder with the sampler its objective calls for (`Objective.sample`).

Diffusion and block-diffusion checkpoints use `diffusion_generate` (defaults from the checkpoint's
generation_config.json); autoregressive ones use the stock KV-cached `generate()`.
"""

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
    `show_progress`: a bar over samples and, for diffusion, one over each batch's sampling steps.
    `options` go to `diffusion_generate` (num_steps, step_schedule, remasking, confidence_threshold,
    block_length, temperature, top_k, top_p, stop_at_eos) or, for AR models, to `generate()`
    (temperature, top_k, top_p; do_sample follows temperature > 0).
    """
    objective = objective_for(model.config)
    encoded = [objective.prompt(model.config, tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    if max_new_tokens is None:
        max_new_tokens = fit_new_tokens(model, [len(ids) for ids in encoded])
    texts = []
    with tqdm(total=len(prompts) * num_samples, desc="samples", unit="sample", disable=not show_progress) as bar:
        for ids in encoded:
            out = objective.sample(model, ids, num_samples, max_new_tokens, seed, show_progress, dict(options))
            texts += tokenizer.batch_decode(out, skip_special_tokens=True)
            bar.update(num_samples)
    return texts
