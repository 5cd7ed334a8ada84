"""Text in, text out: sample from a checkpoint folder with the sampler its objective calls for.

Diffusion checkpoints use `diffusion_generate` (defaults from the checkpoint's generation_config.json);
autoregressive ones use the stock KV-cached `generate()`. `infill_text` fills the gaps of a text (diffusion only).
"""

import re

import torch
from tqdm.auto import tqdm

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
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if not model.config.is_diffusion:
        bos = model.config.bos_token_id if model.config.bos_token_id is not None else model.config.eos_token_id
        encoded = [[bos] + ids for ids in encoded]  # an AR model needs at least one token to condition on
    if max_new_tokens is None:
        max_new_tokens = fit_new_tokens(model, [len(ids) for ids in encoded])
    texts = []
    # one bar: a single prompt's diffusion steps, else the samples (two nested bars leave escape codes in logs)
    step_bar = show_progress and model.config.is_diffusion and len(prompts) == 1
    with tqdm(total=len(prompts) * num_samples, desc="samples", unit="sample",
              disable=not show_progress or step_bar) as bar:
        for ids in encoded:
            sample = _sample_diffusion if model.config.is_diffusion else _sample_autoregressive
            out = sample(model, tokenizer, ids, num_samples, max_new_tokens, seed, step_bar, dict(options))
            texts += tokenizer.batch_decode(out, skip_special_tokens=True)
            bar.update(num_samples)
    return texts


def _sample_diffusion(model, tokenizer, ids, num_samples, max_new_tokens, seed, show_progress, options):
    generator = torch.Generator(device=model.device).manual_seed(seed)
    options.setdefault("show_progress", show_progress)
    if not ids:
        return model.diffusion_generate(batch_size=num_samples, max_length=max_new_tokens, generator=generator,
                                        **options)
    input_ids = torch.tensor([ids] * num_samples, device=model.device)
    return model.diffusion_generate(input_ids, max_new_tokens=max_new_tokens, generator=generator, **options)


def _sample_autoregressive(model, tokenizer, ids, num_samples, max_new_tokens, seed, show_progress, options):
    temperature = options.pop("temperature", 0.0) or 0.0
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    torch.manual_seed(seed)
    ar_options = {k: v for k, v in options.items() if k in ("top_k", "top_p") and v is not None}
    input_ids = torch.tensor([ids] * num_samples, device=model.device)
    return model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                          max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling, **ar_options)


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
    """`num_samples` versions of `text` with its gaps (`infill_ids`) filled by a diffusion model; every other token
    is kept. `options` go to `diffusion_generate`."""
    if not model.config.is_diffusion:
        raise ValueError("infilling needs a diffusion checkpoint; an autoregressive model only continues a prompt")
    ids = infill_ids(tokenizer, text, placeholder)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    input_ids = torch.tensor([ids] * num_samples, device=model.device)
    out = model.diffusion_generate(input_ids, max_new_tokens=None, generator=generator, show_progress=show_progress,
                                   **options)
    return tokenizer.batch_decode(out, skip_special_tokens=True)
