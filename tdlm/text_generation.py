"""Text in, text out: sample from a checkpoint folder with the sampler its objective calls for.

Diffusion checkpoints use `diffusion_generate` (defaults from the checkpoint's generation_config.json);
autoregressive ones use the stock KV-cached `generate()`.
"""

import torch

DEFAULT_NEW_TOKENS = 64


def fit_new_tokens(model, prompt_lengths) -> int:
    """The default number of new tokens: DEFAULT_NEW_TOKENS, or fewer where the longest prompt leaves less room
    before the model's max_position_embeddings (a quick-start model has only 64 positions)."""
    limit, longest = model.config.max_position_embeddings, max(prompt_lengths, default=0)
    if longest >= limit:
        raise ValueError(f"the prompt has {longest} tokens, no room for new ones within the model's "
                         f"max_position_embeddings={limit}; use a shorter prompt")
    return min(DEFAULT_NEW_TOKENS, limit - longest)


def generate_text(model, tokenizer, prompts, max_new_tokens=None, num_samples=1, seed=0, **options) -> list[str]:
    """`num_samples` continuations of every prompt ("" = unconditional), decoded with the prompt;
    `max_new_tokens=None` fits the default to the model (`fit_new_tokens`).

    `options` go to `diffusion_generate` (num_steps, step_schedule, remasking, confidence_threshold,
    block_length, temperature, top_k, top_p, stop_at_eos) or, for AR models, to `generate()`
    (temperature, top_k, top_p; do_sample follows temperature > 0).
    """
    device = model.device
    prompts = [p for p in prompts for _ in range(num_samples)]
    tokenizer.padding_side = "left"
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if not model.config.is_diffusion:
        bos = model.config.bos_token_id if model.config.bos_token_id is not None else model.config.eos_token_id
        encoded = [[bos] + ids for ids in encoded]  # an AR model needs at least one token to condition on
    if max_new_tokens is None:
        max_new_tokens = fit_new_tokens(model, [len(ids) for ids in encoded])
    if model.config.is_diffusion:
        generator = torch.Generator(device=device).manual_seed(seed)
        if all(len(ids) == 0 for ids in encoded):
            out = model.diffusion_generate(batch_size=len(prompts), max_length=max_new_tokens, generator=generator,
                                           **options)
        else:
            batch = tokenizer.pad({"input_ids": encoded}, return_tensors="pt").to(device)
            out = model.diffusion_generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens,
                                           generator=generator, **options)
    else:
        batch = tokenizer.pad({"input_ids": encoded}, return_tensors="pt").to(device)
        temperature = options.pop("temperature", 0.0) or 0.0
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        torch.manual_seed(seed)
        ar_options = {k: v for k, v in options.items() if k in ("top_k", "top_p") and v is not None}
        out = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             **sampling, **ar_options)
    return tokenizer.batch_decode(out, skip_special_tokens=True)
