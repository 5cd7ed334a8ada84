"""Sample quality of a checkpoint: generative perplexity under a fixed AR scorer, with the samples' unigram entropy.

Unconditional samples (temperature 1: plain ancestral sampling for AR; for diffusion Gumbel-max with float64 noise
and a random unmasking order, at each of several step counts) are decoded to text, re-encoded and scored by the
scorer's exact NLL, every token predicted given a context token (`prefix_token_id`) as in the study's held-out
scoring. Gen-PPL alone rewards repetitive, low-entropy text, so the mean unigram entropy of the samples (nats, of
each sample's token frequencies) stands beside it (MDLM / Zheng et al. 2024 report both).
"""

import math
from collections import Counter

import torch

from ..evaluation.likelihood import ar_nll, prefix_token_id
from ..text_generation import generate_text


def unigram_entropy(ids: list[int]) -> float:
    """Entropy (nats) of the token frequency distribution of one sample; 0 for an empty one."""
    counts, total = Counter(ids), len(ids)
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0


def score_texts(scorer, tokenizer, texts: list[str]) -> dict:
    """Gen-PPL of `texts` under the AR `scorer` (exact NLL per token over all samples) and their mean unigram
    entropy. Each text is re-encoded without special tokens and cut to the scorer's context."""
    context, limit = prefix_token_id(tokenizer), scorer.config.max_position_embeddings - 1
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"][:limit] for text in texts]
    encoded = [ids for ids in encoded if ids]
    total, count = 0.0, 0
    for ids in encoded:  # one sample at a time: lengths differ and there are few samples
        result = ar_nll(scorer, torch.tensor([ids]), context_token_id=context)
        total += result["nll"] * result["num_tokens"]
        count += result["num_tokens"]
    nll = total / count if count else math.nan
    return {"gen_nll": nll, "gen_ppl": math.exp(nll) if count else math.nan, "num_tokens": count,
            "num_samples": len(encoded),
            "unigram_entropy": sum(map(unigram_entropy, encoded)) / len(encoded) if encoded else math.nan}


def sample_quality(model, scorer, tokenizer, num_samples: int, length: int, steps: list[int],
                   seed: int = 0) -> list[dict]:
    """One row per sampler setting of `model` (AR: one; diffusion: one per step count in `steps`)."""
    limit = model.config.max_position_embeddings - (0 if model.config.is_diffusion else 1)
    if length > limit:
        raise ValueError(f"--gen-length {length} exceeds the model's {limit} positions for generated tokens")
    # random remasking at temperature 1 is ancestral sampling (MDLM); confidence-based orders lower the entropy
    settings = [{"num_steps": s, "remasking": "random"} for s in steps] if model.config.is_diffusion else [{}]
    rows = []
    for options in settings:
        texts = generate_text(model, tokenizer, [""], max_new_tokens=length, num_samples=num_samples, seed=seed,
                              temperature=1.0, **options)
        rows.append({"steps": options.get("num_steps"), **score_texts(scorer, tokenizer, texts)})
    return rows
